"""Load benchmark: N simulated annotators on one server, this app's request layer against MONAI Label's
stock inline handling (``--conf inline_requests true``), side by side in the same run.

Each annotator drives the 3D Slicer module's own client (``MONAILabelClient``, its own client id) in a
loop of what an annotator does: next sample (``random``), a ``wholebody`` lowres inference, a VISTA3D
click (``vista3d_point``, one positive point), a label save, with think time between; and polls
``/info/`` every ``--poll`` seconds meanwhile. Studies are crops of the shared CT (64x64x30 at 3 mm: one
VISTA3D window); VISTA3D runs a seeded random-initialised ``vista3d132`` written in the official layout.
Labels are saved under the tag ``bench``, so studies stay unlabelled and are handed out again; every
saved label carries its save's number in two voxels, so that at the end every save answered 200 is looked
up on disk (current label or ``labels/bench/history/``).

It reports per mode and number of annotators: p50 / p95 latency per request type; p95 of the light
requests (``info``, ``next_sample``, ``save_label``) sent while an inference was in flight; the count
of 503s and of other errors; lost saves; the peak RSS of the server (process and children). Targets on a
2-core machine: light p95 <= 0.5 s while inferences run, no 5xx but the queue's 503s, no lost save, peak
RSS with 8 annotators <= 1.2x that with one.

    $V/bin/python bench/bench_load.py                                  # 1 and 8 annotators, both modes
    $V/bin/python bench/bench_load.py --annotators 8 --duration 120 --modes queued
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "apps" / "wholebody")]
CT = Path(os.environ.get("WHOLEBODY_BENCH_CT", ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"))

from conftest import Server, free_port, slicer_client_class  # noqa: E402

CROP = (64, 64)  # x, y voxels of each study; all 30 slices
CLICK = [32, 32, 15]  # a voxel of each crop (inside the body)
LIGHT = ("info", "next_sample", "save_label")
HEAVY = ("wholebody", "vista3d_click")
TAG = "bench"


def write_studies(studies: Path, count: int) -> None:
    image = nib.load(str(CT))
    nx, ny, _ = image.shape
    for i in range(count):
        x, y = (i * 17) % (nx - CROP[0]), (i * 11) % (ny - CROP[1])
        nib.save(image.slicer[x : x + CROP[0], y : y + CROP[1], :], str(studies / f"crop{i}.nii.gz"))


def write_vista3d_weights(model_dir: Path) -> None:
    from monai.networks.nets import vista3d132

    torch.manual_seed(0)
    (model_dir / "vista3d" / "models").mkdir(parents=True, exist_ok=True)
    torch.save(vista3d132(in_channels=1).state_dict(), model_dir / "vista3d" / "models" / "model.pt")


class Recorder:
    """Every request: type, start, end, outcome (status code, 0 for a connection error)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.saves: list[tuple[str, int]] = []  # (image, save number) answered 200

    def timed(self, kind: str, call):
        start = time.monotonic()
        try:
            result = call()
            status = 200
        except Exception as e:  # noqa: BLE001 - every failure is counted by its status
            result, status = None, _status(e)
        with self.lock:
            self.requests.append({"type": kind, "start": start, "end": time.monotonic(), "status": status})
        return result, status


def _status(error: Exception) -> int:
    message = getattr(error, "msg", "") or str(error)
    if message.startswith("Status: "):
        return int(message.split(";")[0].split()[1])
    return 0


class PeakRss:
    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.2):
            total = 0
            for p in [self.root, *self.root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def annotator(server: Server, tmp: Path, number: int, until: float, rec: Recorder, saves: itertools.count, think: float, vista3d: bool):
    rng = random.Random(number)
    client = slicer_client_class()(server.url, tmpdir=str(tmp / f"client{number}"), client_id=f"annotator{number}")
    (tmp / f"client{number}").mkdir(exist_ok=True)

    def pause():
        time.sleep(rng.uniform(0.5, 1.5) * think)

    while time.monotonic() < until:
        sample, status = rec.timed("next_sample", lambda: client.next_sample("random", {}))
        if status != 200 or not sample or not sample.get("id"):
            pause()
            continue
        image = sample["id"]
        pause()
        answer, status = rec.timed("wholebody", lambda: client.infer("wholebody", image, {"highres": False, "result_extension": ".nii.gz"}))
        if status != 200:
            pause()
            continue
        if vista3d:
            pause()
            params = {"foreground": [CLICK], "background": [], "label": "my structure", "result_extension": ".nii.gz"}
            rec.timed("vista3d_click", lambda: client.infer("vista3d_point", image, params))
        pause()
        save = next(saves)
        label = nib.load(answer[0])
        data = np.asarray(label.dataobj).astype(np.uint8)
        data[0, 0, 0], data[0, 0, 1] = save % 256, save // 256 + 1  # which save this is
        path = tmp / f"client{number}" / f"save{save}.nii.gz"
        nib.save(nib.Nifti1Image(data, label.affine), str(path))
        _, status = rec.timed("save_label", lambda: client.save_label(image, str(path), tag=TAG, params={}))
        if status == 200:
            with rec.lock:
                rec.saves.append((image, save))
        pause()


def poller(server: Server, tmp: Path, number: int, until: float, rec: Recorder, every: float):
    client = slicer_client_class()(server.url, tmpdir=str(tmp), client_id=f"annotator{number}")
    while time.monotonic() < until:
        rec.timed("info", client.info)
        time.sleep(every)


def lost_saves(studies: Path, saves: list[tuple[str, int]]) -> list[tuple[str, int]]:
    kept = set()
    for path in [*(studies / "labels" / TAG).glob("*.nii.gz"), *(studies / "labels" / TAG / "history").glob("*.nii.gz")]:
        data = np.asarray(nib.load(str(path)).dataobj)
        kept.add((path.name.split(".")[0], int(data[0, 0, 0]) + 256 * (int(data[0, 0, 1]) - 1)))
    return [s for s in saves if s not in kept]


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarise(rec: Recorder) -> dict:
    done = [r for r in rec.requests if r["status"] == 200]
    heavy = [r for r in rec.requests if r["type"] in HEAVY]

    def during_inference(r) -> bool:
        return any(h["start"] < r["end"] and r["start"] < h["end"] for h in heavy)

    summary = {
        kind: {
            "count": len([r for r in rec.requests if r["type"] == kind]),
            "p50_s": percentile([r["end"] - r["start"] for r in done if r["type"] == kind], 50),
            "p95_s": percentile([r["end"] - r["start"] for r in done if r["type"] == kind], 95),
        }
        for kind in (*LIGHT, *HEAVY)
    }
    light_busy = [r["end"] - r["start"] for r in done if r["type"] in LIGHT and during_inference(r)]
    summary["light_while_inferring"] = {"count": len(light_busy), "p50_s": percentile(light_busy, 50), "p95_s": percentile(light_busy, 95)}
    summary["status_503"] = sum(r["status"] == 503 for r in rec.requests)
    summary["errors"] = sum(r["status"] not in (200, 503) for r in rec.requests)
    summary["status_5xx_other"] = sum(r["status"] >= 500 and r["status"] != 503 for r in rec.requests)
    return summary


def run(mode: str, annotators: int, args, tmp: Path) -> dict:
    root = tmp / f"{mode}-{annotators}"
    studies, model_dir = root / "studies", root / "model"
    studies.mkdir(parents=True)
    write_studies(studies, args.studies)
    write_vista3d_weights(model_dir)
    conf = {
        "models": "wholebody,vista3d",
        "highres": "false",
        "skip_trainers": "true",
        "weights_url": f"http://127.0.0.1:{free_port()}/",
        "inline_requests": "true" if mode == "inline" else "false",
    }
    os.environ["MONAI_LABEL_AUTO_UPDATE_SCORING"] = "false"  # no scoring processes: the same work in both modes
    server = Server(studies, model_dir, conf, root / "server.log")
    try:
        warm = slicer_client_class()(server.url, tmpdir=str(root))  # networks loaded before the clock starts
        warm.infer("wholebody", "crop0", {"highres": False, "result_extension": ".nii.gz"})
        if not args.no_vista3d:
            warm.infer("vista3d_point", "crop0", {"foreground": [CLICK], "background": [], "label": "warm", "result_extension": ".nii.gz"})
        rss = PeakRss(server.process.pid)
        rec, saves = Recorder(), itertools.count(1)
        until = time.monotonic() + args.duration
        threads = [threading.Thread(target=annotator, args=(server, root, n, until, rec, saves, args.think, not args.no_vista3d)) for n in range(annotators)]
        threads += [threading.Thread(target=poller, args=(server, root, n, until, rec, args.poll)) for n in range(annotators)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - started
        peak = rss.stop()
        lost = lost_saves(studies, rec.saves)
    finally:
        server.stop()
    result = {
        "mode": mode,
        "annotators": annotators,
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(peak / 1e9, 3),
        "saves_answered": len(rec.saves),
        "saves_lost": len(lost),
        **summarise(rec),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", default="1,8", help="numbers of annotators, comma-separated")
    parser.add_argument("--modes", default="queued,inline", help="queued (this app) and/or inline (MONAI Label's stock handling)")
    parser.add_argument("--duration", type=float, default=180, help="seconds of work per run")
    parser.add_argument("--think", type=float, default=2.0, help="mean think time between an annotator's actions (s)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between an annotator's /info/ polls")
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--no-vista3d", action="store_true", help="leave the VISTA3D click out")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_load_"))
    try:
        runs = [run(mode, int(n), args, tmp) for n in args.annotators.split(",") for mode in args.modes.split(",")]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'mode':7s} {'N':>2s} {'light p95 busy':>14s} {'info p95':>8s} {'save p95':>8s} {'wholebody p50':>13s} {'503':>4s} {'err':>4s} {'lost':>4s} {'RSS GB':>7s}")
    for r in runs:
        print(
            f"{r['mode']:7s} {r['annotators']:2d} {r['light_while_inferring']['p95_s'] or 0:14.3f} {r['info']['p95_s'] or 0:8.3f} "
            f"{r['save_label']['p95_s'] or 0:8.3f} {r['wholebody']['p50_s'] or 0:13.2f} {r['status_503']:4d} {r['errors']:4d} "
            f"{r['saves_lost']:4d} {r['peak_rss_gb']:7.2f}"
        )
    for mode in args.modes.split(","):
        by_n = {r["annotators"]: r for r in runs if r["mode"] == mode}
        if len(by_n) > 1:
            low, high = min(by_n), max(by_n)
            print(f"{mode}: peak RSS {high} / {low} annotators = {by_n[high]['peak_rss_gb'] / by_n[low]['peak_rss_gb']:.2f}")
    if args.out:
        environment = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "host": platform.node(), "load_average_end": os.getloadavg()}
        Path(args.out).write_text(json.dumps({"runs": runs, "environment": environment, "argv": sys.argv[1:]}, indent=2))


if __name__ == "__main__":
    main()
