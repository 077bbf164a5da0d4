"""Atomic writes survive kill -9; the shared datastore loses no update among threads and processes, and
its readers never meet a change half made."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import APP
from lib.datastore.atomic import SharedLock, copy_atomically, write_json_atomically
from lib.datastore.shared import SharedLocalDatastore

IMAGES = [f"img{i}" for i in range(10)]
SHAPE = (8, 8, 8)


def write(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


@pytest.fixture
def studies(tmp_path) -> Path:
    root = tmp_path / "studies"
    root.mkdir()
    for name in IMAGES:
        write(root / f"{name}.nii.gz", np.zeros(SHAPE, np.int16))
    SharedLocalDatastore(str(root))  # the datastore file, as a server's start writes it
    return root


def test_json_and_copies_replace_their_target_whole(tmp_path):
    target = tmp_path / "a" / "state.json"
    write_json_atomically(str(target), {"n": 1})
    write_json_atomically(str(target), {"n": 2})
    assert json.loads(target.read_text()) == {"n": 2}
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024))
    copy_atomically(str(source), str(tmp_path / "copy.bin"))
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "copy.bin", "source.bin", "state.json"], "temporary files left"
    assert (target.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


WRITER = """
import sys
sys.path.insert(0, {app!r})
from lib.datastore.atomic import write_json_atomically
n = 0
while True:
    n += 1
    write_json_atomically({path!r}, {{"n": n, "payload": "x" * 4_000_000}})
    print(n, flush=True)
"""


def test_kill_9_while_writing_leaves_the_old_or_the_new_content(tmp_path):
    path = tmp_path / "state.json"
    for kill_after in (1, 3, 6):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER.format(app=str(APP), path=str(path))], stdout=subprocess.PIPE, text=True
        )
        for _ in range(kill_after):
            written = int(writer.stdout.readline())
        writer.kill()  # SIGKILL, most likely in the middle of the next 4 MB write
        writer.wait()
        state = json.loads(path.read_text())
        assert state["n"] >= written and len(state["payload"]) == 4_000_000
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")] == ["state.json"]


def _hold_lock(path: str, held, release) -> None:
    with SharedLock(path):
        held.set()
        release.wait(30)


def test_the_lock_excludes_other_processes_and_other_threads(tmp_path):
    path = str(tmp_path / "x.lock")
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(path, held, release))
    child.start()
    assert held.wait(30)
    lock = SharedLock(path)
    assert not lock.acquire(blocking=False), "another process holds it"
    release.set()
    child.join(30)
    assert lock.acquire(blocking=False) and lock.acquire(blocking=False), "free, and re-entrant in its thread"
    other = []
    thread = threading.Thread(target=lambda: other.append(lock.acquire(blocking=False)))
    thread.start()
    thread.join()
    assert other == [False], "another thread of this process got it"
    lock.release()
    lock.release()


def _score(root: str, worker: int, count: int) -> None:
    store = SharedLocalDatastore(root)
    for i in range(count):
        store.update_image_info(IMAGES[(worker + i) % len(IMAGES)], {f"w{worker}_{i}": i})


def test_writers_in_several_processes_and_threads_lose_no_update(studies, tmp_path):
    ctx = multiprocessing.get_context("fork")
    scorers = [ctx.Process(target=_score, args=(str(studies), w, 20)) for w in range(3)]
    server = SharedLocalDatastore(str(studies))
    label = tmp_path / "label.nii.gz"
    write(label, np.ones(SHAPE, np.uint8))

    def save(i: int) -> None:
        server.save_label(IMAGES[i % len(IMAGES)], str(label), f"tag{i % 3}", {"saved": i})

    savers = [threading.Thread(target=save, args=(i,)) for i in range(15)]
    for worker in [*scorers, *savers]:
        worker.start()
    for worker in [*scorers, *savers]:
        worker.join(120)
    assert all(p.exitcode == 0 for p in scorers)

    on_disk = json.loads((studies / "datastore_v2.json").read_text())["objects"]
    keys = {k for obj in on_disk.values() for k in obj["image"]["info"]}
    assert {f"w{w}_{i}" for w in range(3) for i in range(20)} <= keys, "a score was lost"
    labels = {(image, tag) for image, obj in on_disk.items() for tag in obj["labels"]}
    assert labels == {(IMAGES[i % len(IMAGES)], f"tag{i % 3}") for i in range(15)}, "a label was lost"
    server._init_from_datastore_file()  # what the scoring processes wrote reaches the server's readers
    assert {k for image in IMAGES for k in server.get_image_info(image)} >= keys


def test_readers_see_a_change_once_it_is_on_disk_never_half_made(studies):
    store = SharedLocalDatastore(str(studies))
    seen = []

    def read_in_another_thread() -> None:
        thread = threading.Thread(target=lambda: seen.append(dict(store.get_image_info("img0"))))
        thread.start()
        thread.join()

    with store.transaction():
        store._datastore.objects["img0"].image.info["first"] = 1
        read_in_another_thread()  # made, not written: not visible, and the reader did not wait
        store._update_datastore_file()
        store._datastore.objects["img0"].image.info["second"] = 2  # after the write, in the same transaction
        read_in_another_thread()
    read_in_another_thread()
    assert ["first" in s for s in seen] == [False, False, True]
    assert not any("second" in s for s in seen), "a change that was never written was published"

    with pytest.raises(RuntimeError):
        with store.transaction():
            store._datastore.objects["img1"].image.info["failed"] = 1
            raise RuntimeError("the change fails before it is written")
    assert "failed" not in store.get_image_info("img1")
    assert "failed" not in json.loads((studies / "datastore_v2.json").read_text())["objects"]["img1"]["image"]["info"]
