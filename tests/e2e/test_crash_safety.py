"""Nothing acknowledged is lost when the server is killed (kill -9) in the middle of label saves and of a
training run; one training at a time; a training process that dies is reported with its reason.

One scenario, one datastore: a server trains ``spleen`` on phantoms (a small UNet), refuses a second
training, reports the training process it loses to ``kill -9``, trains again, and is killed while it
trains and while 24 label saves are in flight. A second server on the same folders then holds every save
that was answered 200, voxel for voxel, a datastore file that parses, and only whole checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch

from conftest import Server, free_port, slicer_client_class

pytestmark = pytest.mark.e2e

SHAPE = (32, 28, 20)
TRAINING_IMAGES = [f"train{i}" for i in range(4)]
SAVED_IN_FLIGHT = [f"p{i}" for i in range(12)]


def write_studies(studies: Path, labels: Path) -> None:
    from lib.phantom import write_phantom

    for i, name in enumerate(TRAINING_IMAGES + SAVED_IN_FLIGHT):
        write_phantom(studies / f"{name}.nii.gz", labels / f"{name}.nii.gz", shape=SHAPE, seed=i, variation=0.2)


def spleen_label(labels: Path, name: str, out: Path) -> Path:
    phantom = nib.load(str(labels / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image((np.asarray(phantom.dataobj) == 1).astype(np.uint8), phantom.affine), str(out))
    return out


def numbered_label(image: Path, value: int, out: Path) -> Path:
    """A label whose content tells which save it was."""
    header = nib.load(str(image))
    data = np.zeros(header.shape, np.uint8)
    data[value % header.shape[0], :, :] = value
    data[:, :, value % header.shape[2]] = value
    nib.save(nib.Nifti1Image(data, header.affine), str(out))
    return out


def task_processes(server: Server, method: str) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            cmdline = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "monailabel.interfaces.utils.app" in cmdline and method in cmdline:
            found.append(child)
    return found


def wait_for(condition, what: str, timeout: float = 900):
    start = time.time()
    while time.time() - start < timeout:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"{what} did not happen in {timeout} s")


def kill_9(server: Server) -> None:
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(60)


def test_kill_9_during_label_saves_and_training_loses_nothing_acknowledged(tmp_path):
    studies, labels, model_dir = tmp_path / "studies", tmp_path / "phantom_labels", tmp_path / "model"
    write_studies(studies, labels)
    conf = {"models": "spleen", "weights_url": f"http://127.0.0.1:{free_port()}/"}
    server = Server(studies, model_dir, conf, tmp_path / "server0.log")
    try:
        client = slicer_client_class()(server.url, tmpdir=str(tmp_path), client_id="radiologist")
        for name in TRAINING_IMAGES:
            client.save_label(name, str(spleen_label(labels, name, tmp_path / f"{name}_spleen.nii.gz")),
                              params={"label_info": [{"name": "spleen", "idx": 1}]})

        # One training at a time: the second is refused with 429 and what runs, never a 500.
        train = {"max_epochs": 200, "val_split": 0.25}
        client.train_start("spleen", train)
        with pytest.raises(Exception) as refused:
            client.train_start("spleen", train)
        assert "Status: 429" in refused.value.msg and "training run is" in refused.value.msg

        # Its process dies: ERROR with the reason, and the server serves on.
        victim = wait_for(lambda: task_processes(server, "train"), "the training process")
        victim[0].kill()
        def ended():
            status = client.train_status()
            return status if status["status"] not in ("SUBMITTED", "RUNNING") else None

        status = wait_for(ended, "the end of the killed training")
        assert status["status"] == "ERROR" and "SIGKILL" in status["reason"], status
        assert "spleen" in client.info()["models"]

        # Trained again, and killed with the server once a checkpoint is published, while 24 saves are under way.
        client.train_start("spleen", train)
        published = model_dir / "spleen.pt"
        wait_for(published.exists, "a published checkpoint")
        answered, lock = {}, threading.Lock()
        saves = [(SAVED_IN_FLIGHT[i % 12], ("final", "second")[i // 12], i + 1) for i in range(24)]

        def save(image: str, tag: str, value: int) -> None:
            label = numbered_label(studies / f"{image}.nii.gz", value, tmp_path / f"save{value}.nii.gz")
            try:
                slicer_client_class()(server.url, tmpdir=str(tmp_path)).save_label(image, str(label), tag=tag, params={})
            except Exception:  # the server was killed under it: not acknowledged
                return
            with lock:
                answered[(image, tag)] = label

        threads = [threading.Thread(target=save, args=s) for s in saves]
        for t in threads:
            t.start()
        wait_for(lambda: len(answered) >= 6, "six answered saves", timeout=300)
        kill_9(server)
        for t in threads:
            t.join()
    finally:
        server.stop()
    assert len(answered) >= 6

    again = Server(studies, model_dir, conf, tmp_path / "server1.log")
    try:
        datastore = json.loads((studies / "datastore_v2.json").read_text())["objects"]
        client = slicer_client_class()(again.url, tmpdir=str(tmp_path), client_id="radiologist")
        for (image, tag), sent in answered.items():
            assert tag in datastore[image]["labels"], f"the acknowledged save {image}/{tag} is gone"
            kept = client.download_label(image, tag)
            assert np.array_equal(np.asarray(nib.load(kept).dataobj), np.asarray(nib.load(str(sent)).dataobj)), (image, tag)
        for image, obj in datastore.items():  # saves that were not answered: whole, or not there
            for tag, label in obj["labels"].items():
                assert np.asarray(nib.load(str(studies / "labels" / tag / label["info"]["name"])).dataobj).shape == SHAPE

        checkpoints = [p for p in model_dir.rglob("*.pt") if not p.name.startswith(".")]
        assert published in checkpoints
        for path in checkpoints:
            torch.load(path, map_location="cpu", weights_only=False)  # raises on a half-written file
        for path in [*model_dir.rglob("*.json"), studies / "datastore_v2.json"]:
            json.loads(path.read_text())
        assert client.info()["models"]["spleen"]["untrained"] is False
        result, _ = client.infer("spleen", "train0", {"result_extension": ".nii.gz"})
        assert nib.load(result).shape == SHAPE
    finally:
        again.stop()
