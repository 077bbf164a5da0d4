"""Benchmark for batch segmentation: studies per hour of ``python -m lib.batch`` (Ray Data: stages in
parallel, the checkpoint loaded once per actor) against a sequential loop over the same ``/infer`` task,
case by case as TotalSegmentator runs, on the same studies, side by side on this machine.

Both runs start from a fresh process (imports, Ray start-up and model loading are in their wall time), use
the same seeded random checkpoint in the official layout and the same torch thread count for the network,
so their labels must agree voxel for voxel (checked). Printed: studies per hour of each and their ratio,
the time per stage, and on a GPU the GPU's busy fraction during each run (nvidia-smi sampled every 200 ms).

    nice $V/bin/python bench/bench_batch.py                                 # 8 studies, lowres, CPU
    $V/bin/python bench/bench_batch.py --device cuda --full-size --highres  # a lent GPU: full-size CTs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import ROOT, build_inputs, write_checkpoints  # noqa: E402  (puts apps/wholebody on sys.path)

APP = ROOT / "apps" / "wholebody"
# /infer's latencies under the names of the batch stages (the batch's write stage inverts too).
AS_BATCH_STAGE = {"pre": "preprocess", "infer": "network", "invert": "write", "post": "write", "write": "write"}


# --- the sequential baseline (child process)


def sequential(spec: dict) -> dict:
    """The wholebody infer task, one study after another, in this process (network loaded once, as the
    server keeps it); the seconds per stage come from the task's own latencies."""
    import torch

    from lib.configs.wholebody import WholeBodySegmentation

    torch.set_num_threads(spec["threads"])
    config = WholeBodySegmentation()
    config.init("wholebody", spec["model_dir"], {"download_weights": "false"}, None)
    task = config.infer()
    stages: dict[str, float] = {}
    for study in spec["studies"]:
        request = {"image": study["image"], "highres": spec["highres"], "device": spec["device"], "result_extension": ".nii.gz"}
        result_file, result = task(request)
        shutil.move(result_file, os.path.join(spec["out"], f"{study['id']}.nii.gz"))
        for stage, seconds in result["latencies"].items():
            if stage in AS_BATCH_STAGE:
                stages[AS_BATCH_STAGE[stage]] = stages.get(AS_BATCH_STAGE[stage], 0.0) + seconds
    return {"stage_seconds": {k: round(v, 2) for k, v in stages.items()}}


# --- measuring a run


class GpuBusy:
    """Samples nvidia-smi's utilization.gpu (percent of time a kernel ran) while a run lasts."""

    def __init__(self, enabled: bool):
        self.samples: list[float] = []
        self._proc = None
        if enabled:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, text=True,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            values = [float(v) for v in line.split(",") if v.strip()]
            if values:
                self.samples.append(statistics.mean(values))

    def stop(self) -> float | None:
        if self._proc is None:
            return None
        self._proc.terminate()
        self._proc.wait(10)
        return round(statistics.mean(self.samples) / 100.0, 3) if self.samples else None


def timed(cmd: list[str], cwd: Path, gpu: bool) -> tuple[float, float | None, subprocess.CompletedProcess]:
    busy = GpuBusy(gpu)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    fraction = busy.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, fraction, proc


def agreement(a: Path, b: Path) -> float:
    x, y = np.asarray(nib.load(str(a)).dataobj), np.asarray(nib.load(str(b)).dataobj)
    return float((x == y).mean()) if x.shape == y.shape else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--highres", action="store_true", help="1.5 mm (default 3 mm, lowres)")
    p.add_argument("--z-lengths", default="40,50,60,70,80,90,100",
                   help="slices (3 mm) of the z-mirrored shared CT; with the CT itself: the studies (default 8)")
    p.add_argument("--full-size", action="store_true", help="8 copies of a 512x512x397 CT at 0.8x0.8x1.5 mm instead")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="local Ray CPUs (default all)")
    p.add_argument("--actors", type=int, help="network actors (default: one per GPU, else 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the network in both runs (default: all cores)")
    p.add_argument("--out", help="JSON results (default bench/results/batch-<host>-<device>-<res>.json)")
    p.add_argument("--sequential", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sequential:
        print(json.dumps(sequential(json.loads(args.sequential))))
        return

    threads = args.threads or os.cpu_count()
    res = "highres" if args.highres else "lowres"
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        studies_dir, model_dir = tmp / "studies", tmp / "model"
        studies_dir.mkdir()
        write_checkpoints(model_dir)
        if args.full_size:
            full = next(c for c in build_inputs(tmp, [], True) if c["case"].startswith("full"))
            cases = [{**full, "case": f"full_{i}"} for i in range(8)]
        else:
            cases = build_inputs(tmp, [int(z) for z in args.z_lengths.split(",") if z], False)
        studies = []
        for i, case in enumerate(cases):
            path = studies_dir / f"study_{i:02d}_{case['case']}.nii.gz"
            shutil.copy(case["image"], path)
            studies.append({"id": path.name[: -len(".nii.gz")], "image": str(path), "shape": case["shape"]})
        print(f"{len(studies)} studies ({res}, {args.device}): " + ", ".join("x".join(map(str, s["shape"])) for s in studies), flush=True)

        gpu = args.device == "cuda"
        load_before = os.getloadavg()
        seq_out = tmp / "sequential"
        seq_out.mkdir()
        spec = {"studies": studies, "model_dir": str(model_dir), "highres": args.highres, "device": args.device,
                "out": str(seq_out), "threads": threads}
        seq_wall, seq_busy, proc = timed([sys.executable, __file__, "--sequential", json.dumps(spec)], ROOT, gpu)
        seq = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"sequential /infer loop: {seq_wall:.1f} s", flush=True)

        ray_out = tmp / "ray"
        cmd = [sys.executable, "-m", "lib.batch", "--studies", str(studies_dir), "--out", str(ray_out),
               "--highres" if args.highres else "--lowres", "--model-dir", str(model_dir), "--device", args.device,
               "--cpus", str(args.cpus), "--actor-threads", str(threads)]
        if args.actors:
            cmd += ["--actors", str(args.actors)]
        ray_wall, ray_busy, proc = timed(cmd, APP, gpu)
        summary = json.loads(next(l for l in proc.stderr.splitlines() if l.startswith("finished: "))[len("finished: "):])
        print(f"Ray batch: {ray_wall:.1f} s", flush=True)

        agree = [agreement(seq_out / f"{s['id']}.nii.gz", ray_out / "labels" / f"{s['id']}.nii.gz") for s in studies]
        n = len(studies)
        result = {
            "host": socket.gethostname(), "device": args.device, "res": res, "studies": n, "cpus": args.cpus, "threads": threads,
            "shapes": ["x".join(map(str, s["shape"])) for s in studies],
            "sequential": {"wall_s": round(seq_wall, 1), "studies_per_hour": round(3600 * n / seq_wall, 1),
                           "stage_seconds": seq["stage_seconds"], "gpu_busy": seq_busy},
            "ray": {"wall_s": round(ray_wall, 1), "studies_per_hour": round(3600 * n / ray_wall, 1),
                    "stage_seconds": summary["stage_seconds"], "done": summary["done"], "failed": summary["failed"], "gpu_busy": ray_busy},
            "speedup": round(seq_wall / ray_wall, 3),
            "agreement_min": min(agree),
            "agreement": {s["id"]: a for s, a in zip(studies, agree)},
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        }
        print(f"\n{'':24}{'sequential /infer':>20}{'Ray batch':>14}")
        print(f"{'wall s':24}{result['sequential']['wall_s']:>20}{result['ray']['wall_s']:>14}")
        print(f"{'studies per hour':24}{result['sequential']['studies_per_hour']:>20}{result['ray']['studies_per_hour']:>14}")
        if gpu:
            print(f"{'GPU busy fraction':24}{seq_busy!s:>20}{ray_busy!s:>14}")
        for stage in sorted(set(seq["stage_seconds"]) | set(summary["stage_seconds"])):
            print(f"{'  ' + stage + ' s (sum)':24}{seq['stage_seconds'].get(stage, '-')!s:>20}{summary['stage_seconds'].get(stage, '-')!s:>14}")
        print(f"Ray / sequential studies per hour: {result['speedup']:.2f}x; labels agree on {100 * min(agree):.4f} % of voxels (worst study)")

        out = Path(args.out or ROOT / "bench" / "results" / f"batch-{socket.gethostname()}-{args.device}-{res}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"results: {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
