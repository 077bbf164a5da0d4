"""Benchmark for VISTA3D repeat clicks: first click vs repeat click on the shared CT, through the server,
driven by 3D Slicer's own MONAI Label client in a session, as an annotator's clicks arrive.

A server starts with a seeded random-initialised ``vista3d132`` in the official layout (or the real
weights with ``--model-dir``), the shared CT as its study. A warm-up click on another image loads the
network (paid once per server). Then, on the shared CT:

1. first click: one positive point (reads and preprocesses the image, image encoder, point head);
2. repeat click: the same plus a negative point ~2 cm away (the encoder output of the window is cached);
3. far click: the same plus a negative point in another grid window (a new window: encoder again).

It prints each latency, the counters the server returns, and the ratio repeat / first (aim: <= 0.2).
With ``--precisions fp32,bf16`` the three clicks run once per CPU precision (request param ``precision``),
each on a new session of the same CT in the same server, and it prints the first click's ratio bf16 / fp32.
With ``--window-grid 0`` the windows are centred on each click as in the bundle: a repeat click then
rarely finds its window in the cache.

    $V/bin/python bench/bench_vista3d_clicks.py
    $V/bin/python bench/bench_vista3d_clicks.py --label liver        # class + points (both heads)
    $V/bin/python bench/bench_vista3d_clicks.py --window-grid 0      # the bundle's window placement
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "apps" / "wholebody")]
CT = Path(os.environ.get("WHOLEBODY_BENCH_CT", ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"))

from conftest import Server, free_port, slicer_client_class  # noqa: E402

# voxels of the shared CT (122 x 101 x 30 at 3 mm): inside the liver, ~2 cm from it, and on the other side
POSITIVE = [75, 55, 15]
NEAR = [80, 50, 16]
FAR = [25, 35, 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a model dir holding vista3d/models/model.pt (default: random weights)")
    parser.add_argument("--window-grid", type=int, default=None, help="--conf vista3d_window_grid (default: the app's)")
    parser.add_argument("--label", default="my structure", help="segment name Slicer sends (a class name adds the class prompt)")
    parser.add_argument("--precisions", default="fp32", help="comma list of fp32,bf16: the clicks once per CPU precision")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_vista3d_"))
    try:
        studies = tmp / "studies"
        studies.mkdir()
        shutil.copy(CT, studies / "ct.nii.gz")
        warm = tmp / "warm.nii.gz"
        nib.save(nib.load(str(CT)).slicer[40:80, 20:60, :], str(warm))
        model_dir = Path(args.model_dir) if args.model_dir else tmp / "model"
        if not args.model_dir:
            from monai.networks.nets import vista3d132

            torch.manual_seed(0)
            (model_dir / "vista3d" / "models").mkdir(parents=True)
            torch.save(vista3d132(in_channels=1).state_dict(), model_dir / "vista3d" / "models" / "model.pt")
        conf = {"models": "vista3d", "weights_url": f"http://127.0.0.1:{free_port()}/", "skip_trainers": "true"}
        if args.window_grid is not None:
            conf["vista3d_window_grid"] = str(args.window_grid)
        server = Server(studies, model_dir, conf, tmp / "server.log")
        try:
            runs = {precision: run(server, tmp, args.label, precision) for precision in args.precisions.split(",")}
        finally:
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    results = runs[next(iter(runs))]
    for precision, result in runs.items():
        first, repeat = result["clicks"][0]["seconds"], result["clicks"][1]["seconds"]
        result["ratio_repeat_to_first"] = round(repeat / first, 3)
        print(f"\n{precision}: first click {first:.1f} s, repeat click {repeat:.1f} s: ratio {repeat / first:.3f} (aim <= 0.2)")
        print(f"{precision}: far click (new window) {result['clicks'][2]['seconds']:.1f} s")
    if "fp32" in runs and "bf16" in runs:
        ratio = runs["bf16"]["clicks"][0]["seconds"] / runs["fp32"]["clicks"][0]["seconds"]
        print(f"\nfirst click bf16 / fp32: {ratio:.3f} (aim <= 0.5)")
        results = {"by_precision": runs, "ratio_first_click_bf16_to_fp32": round(ratio, 3)}
    results.update(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpus=os.cpu_count(),
        host=platform.node(),
        load_average=os.getloadavg(),
        argv=sys.argv[1:],
    )
    print(f"load average {os.getloadavg()}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def run(server: Server, tmp: Path, label: str, precision: str) -> dict:
    client = slicer_client_class()(server.url, tmpdir=str(tmp))
    params = {"result_extension": ".nrrd", "result_dtype": "uint8", "label": label, "precision": precision}

    start = time.perf_counter()
    warm_session = client.create_session(str(tmp / "warm.nii.gz"))["session_id"]
    client.infer("vista3d_point", "", {**params, "foreground": [[20, 20, 15]], "background": []}, session_id=warm_session)
    warm_up = time.perf_counter() - start
    print(f"warm-up (network load + a click on another image): {warm_up:.1f} s")

    session = client.create_session(str(CT))["session_id"]
    clicks = []
    for name, background in [("first", []), ("repeat", [NEAR]), ("far", [NEAR, FAR])]:
        start = time.perf_counter()
        _, answer = client.infer("vista3d_point", "", {**params, "foreground": [POSITIVE], "background": background}, session_id=session)
        seconds = time.perf_counter() - start
        request = answer["vista3d_cache"]["request"]
        latencies = {k: v for k, v in answer["latencies"].items() if k != "transform"}
        assert answer["precision"] == precision, answer["precision"]
        clicks.append({"click": name, "seconds": round(seconds, 2), "server": latencies, "counters": request})
        print(f"{precision} {name:7s} click {seconds:6.1f} s  server {latencies}  counters {request}")
    return {"warm_up_seconds": round(warm_up, 2), "clicks": clicks, "label": label, "precision": precision, "ct": str(CT)}


if __name__ == "__main__":
    main()
