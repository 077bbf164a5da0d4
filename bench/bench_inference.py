"""Benchmark for "Lean and fast inference": our wholebody infer task against the official bundle pipeline.

Both run on the same inputs and the same checkpoint (seeded random weights, or ``--checkpoint``), each run in
a fresh subprocess so that peak RSS and peak GPU memory belong to that run alone. It prints ratios from this
one run rather than seconds to compare with some fixed number, because absolute times depend on the machine.

``--modes`` runs ours once per CPU mode (``fp32``, ``bf16``, ``+skip`` for ``skip_air``: the request params),
each against the bundle pipeline in fp32 and against our own fp32: Dice per structure of at least 1 ml and
the share of body voxels (> -500 HU) with the same label. Agreement means something only on a confident
checkpoint (bench/confident_checkpoint.py), not on random weights.

    $V/bin/python bench/bench_inference.py --res lowres --z-lengths 30                # small CPU smoke run
    $V/bin/python bench/bench_inference.py --device cuda --res lowres,highres --full-size
    $V/bin/python bench/bench_inference.py --checkpoint CKPT --modes fp32,bf16,bf16+skip --res lowres,highres --full-size
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "apps" / "wholebody")]
# A lent GPU machine has no ../shared: it is given the CT's path in WHOLEBODY_BENCH_CT.
CT = Path(os.environ.get("WHOLEBODY_BENCH_CT", ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"))
CHANNELS = 105
PIXDIM = {True: 1.5, False: 3.0}  # the bundle's highres / lowres spacing in mm
BODY_HU = -500.0  # body voxels, for agreement (the issue's definition; the body mask's default threshold too)
MIN_ML = 1.0  # structures smaller than this in the reference labels are not scored

from lib.labels import wholebody_labels  # noqa: E402  (needs apps/wholebody on sys.path)
from lib.networks import wholebody_segresnet  # noqa: E402


def rss_mb() -> float:
    """Current RSS (ru_maxrss only gives the peak); Linux only, like ru_maxrss in kB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    """User + system CPU time of this process: less swayed than wall time by other load on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- inputs


def mirror_z(arr, n: int):
    """Tile the volume along z as v, flip(v), v, ...: no seams, so the anatomy stays plausible at any length."""
    tiles = [arr if k % 2 == 0 else arr[..., ::-1] for k in range(math.ceil(n / arr.shape[-1]))]
    return np.concatenate(tiles, axis=-1)[..., :n]


def save_volume(arr, affine, path: Path, label: bool = False) -> str:
    # int16 HU, as scanners store CT; a label map as uint8
    img = nib.Nifti1Image(np.rint(arr).astype(np.uint8 if label else np.int16), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return str(path)


def build_inputs(tmp: Path, z_lengths: list[int], full_size: bool, source: Path = CT, label: bool = False) -> list[dict]:
    """The bench's cases made from ``source``: itself, z-mirrored to each length, and a full-size CT.
    ``label``: ``source`` is a label map of the CT, and its cases are made alike (nearest, 0 outside)."""
    src = nib.load(source)
    arr, affine = np.asarray(src.get_fdata(dtype=np.float32)), src.affine
    stem = "label" if label else "ct"
    cases = [{"case": f"ct_sm_z{arr.shape[2]}", "image": str(source)}]
    for n in z_lengths:
        if n != arr.shape[2]:  # the original is case (a) already
            # Voxel 0 and the z axis are unchanged, so the affine still holds: the volume just extends further.
            cases.append({"case": f"ct_sm_z{n}", "image": save_volume(mirror_z(arr, n), affine, tmp / f"{stem}_z{n}.nii.gz", label)})
    if full_size:
        from monai.transforms import LoadImage, Spacing

        # MONAI's Spacing resamples to a clinical 0.8 x 0.8 x 1.5 mm grid and updates the affine itself.
        img = LoadImage(image_only=True, ensure_channel_first=True)(str(source))
        img = Spacing(pixdim=(0.8, 0.8, 1.5), mode="nearest" if label else "bilinear", dtype=torch.float32)(img)
        hi, aff = img[0].numpy(), img.affine.numpy().copy()
        # Pad in-plane with air to 512 x 512, centred; voxel (0, 0, 0) moves by -pad, so shift the origin.
        px, py = ((512 - s) // 2 for s in hi.shape[:2])
        assert px >= 0 and py >= 0, hi.shape
        hi = np.pad(hi, ((px, 512 - hi.shape[0] - px), (py, 512 - hi.shape[1] - py), (0, 0)), constant_values=0 if label else -1024)
        aff[:3, 3] -= aff[:3, :3] @ np.array([px, py, 0.0])
        full = save_volume(mirror_z(hi, 397), aff, tmp / f"{stem}_full.nii.gz", label)
        cases.append({"case": "full_512x512x397", "image": full})
    for c in cases:
        h = nib.load(c["image"])
        c["shape"], c["spacing"] = list(h.shape), [round(float(z), 3) for z in h.header.get_zooms()]
    return cases


# The bundle's file per resolution (highres?): 1.5 mm model.pt, 3 mm model_lowres.pt.
BUNDLE_FILES = {True: "model.pt", False: "model_lowres.pt"}


def to_channels(label: np.ndarray) -> np.ndarray:
    """TotalSegmentator v2 values -> the bundle's channels by name (a v2-only structure is background)."""
    classes = json.loads((ROOT.parent / "shared" / "data" / "labels" / "totalsegmentator_classes.json").read_text())["total_v2"]
    channels = wholebody_labels()
    lut = np.zeros(256, dtype=np.int64)
    for index, name in classes.items():
        lut[int(index)] = channels.get(name, 0)
    return lut[label]


def checkpoint_file(checkpoint: str, highres: bool) -> str:
    """``checkpoint``: one state dict for both resolutions, or a folder in the bundle's layout (``models/model.pt``
    at 1.5 mm, ``models/model_lowres.pt`` at 3 mm), as bench/confident_checkpoint.py makes it."""
    if Path(checkpoint).is_dir():
        return str(Path(checkpoint, "models", BUNDLE_FILES[highres]))
    return checkpoint


def write_checkpoints(model_dir: Path, checkpoint: str | None = None) -> None:
    """``checkpoint`` (see checkpoint_file) for each resolution, else seeded random weights: the same in every run."""
    torch.manual_seed(0)
    folder = model_dir / "wholeBody_ct_segmentation" / "models"  # the official bundle layout the app looks in
    folder.mkdir(parents=True, exist_ok=True)
    random = None if checkpoint else wholebody_segresnet().state_dict()
    for highres, name in BUNDLE_FILES.items():
        source = checkpoint_file(checkpoint, highres) if checkpoint else None
        if source and not Path(source).exists():
            continue  # a folder with one resolution so far: the runs of the other fail, naming the file
        torch.save(torch.load(source, map_location="cpu") if source else random, folder / name)


# --- one run (child)


def reference_too_big(spec: dict) -> str | None:
    """The bundle keeps C float32 logits over the resampled volume, a count map, then softmax's copy: ~3 copies."""
    h = nib.load(spec["image"])
    pix = PIXDIM[spec["highres"]]
    voxels = math.prod(max(96, round(n * z / pix)) for n, z in zip(h.shape, h.header.get_zooms()))
    need = CHANNELS * voxels * 4 * 3
    if spec["device"] == "cuda":
        free, where = torch.cuda.mem_get_info()[0], "free GPU memory"
    else:
        with open("/proc/meminfo") as f:
            free, where = next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:")) * 1024, "available RAM"
    if need > 0.8 * free:
        return f"reference skipped: needs ~{need / 2**30:.1f} GiB, over 80 % of {free / 2**30:.1f} GiB {where}"
    return None


def load_network(spec: dict) -> torch.nn.Module:
    """The checkpoint written by write_checkpoints, for the spec's resolution and device."""
    name = BUNDLE_FILES[spec["highres"]]
    network = wholebody_segresnet()
    network.load_state_dict(torch.load(Path(spec["model_dir"], "wholeBody_ct_segmentation", "models", name)))
    return network.to(spec["device"]).eval()


def child(spec: dict) -> dict:
    logging.basicConfig(level=logging.WARNING)
    cuda = spec["device"] == "cuda"
    if spec["who"] == "reference":
        if reason := reference_too_big(spec):
            return {"skipped": reason}
        import reference_pipelines as ref

        if cuda:  # the bundle's evaluator blends on the GPU; Invertd's result comes back to the CPU to save it
            ref.SlidingWindowInferer = functools.partial(ref.SlidingWindowInferer, sw_device="cuda", device="cuda")
            ref.Invertd = functools.partial(ref.Invertd, device="cpu")
        network = load_network(spec)
        affine = nib.load(spec["image"]).affine
        with torch.inference_mode():  # one window before the baseline, as ours
            network(torch.zeros(1, 1, 96, 96, 96, device=spec["device"]))

        def run_once() -> dict:
            with torch.autocast("cuda", enabled=cuda):  # the bundle runs with AMP on GPU
                labels = ref.wholebody(spec["image"], network, PIXDIM[spec["highres"]])
            # The bundle ends with SaveImaged, so saving the label map belongs to its latency, as our writer to ours.
            nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), spec["result"])
            return {}

    elif spec["ours"] == "pipeline":
        # The same pipeline without the MONAI Label server stack (monailabel, ITK), for machines
        # that lack it, such as a lent GPU: what is left out is MONAI Label's writer.
        from lib.pipelines import wholebody as pipeline
        from lib.pipelines.wholebody import OVERLAP, ROI_SIZE

        network = load_network(spec)
        affine = nib.load(spec["image"]).affine

        from lib.measurements.on_image import measure_on_image

        names = {value: name for name, value in wholebody_labels().items()}

        def run_once() -> dict:
            start = time.perf_counter()
            labels = pipeline.segment(spec["image"], network, PIXDIM[spec["highres"]], ROI_SIZE, OVERLAP, spec["device"])
            inferred = time.perf_counter()
            measure_on_image(labels, spec["image"], names)  # what /infer adds to its answer by default
            measured = time.perf_counter()
            nib.save(nib.Nifti1Image(np.asarray(labels.cpu()), affine), spec["result"])
            return {"segment": inferred - start, "measurements": measured - inferred}

    else:
        import itk
        from monailabel.utils.others.generic import name_to_device

        from lib.configs.wholebody import WholeBodySegmentation

        config = WholeBodySegmentation()
        config.init("wholebody", spec["model_dir"], {"download_weights": "false"}, None)
        task = config.infer()
        request = {"image": spec["image"], "highres": spec["highres"], "result_extension": ".nii.gz",
                   "device": spec["device"], "logging": "WARNING", "precision": spec["precision"], "skip_air": spec["skip_air"]}
        network = task._get_network(name_to_device(spec["device"]), request)  # load the model before the baseline, as above
        if spec["device"] == "cpu":
            # A server pays oneDNN's set-up of its first (bfloat16) kernels once, not per request: one window on
            # zeros before the baseline, as the reference gets.
            from lib.acceleration import cpu_precision

            with torch.inference_mode():
                cpu_precision.for_device(network, "cpu", spec["precision"])(torch.zeros(1, 1, 96, 96, 96))
        # MONAI Label writes NIfTI with ITK, whose lazy modules take ~5 s to load on first use: an import, paid
        # once per server process, not per request, so it goes before the baseline too.
        itk.imwrite(itk.image_from_array(np.zeros((2, 2, 2), np.uint8)), str(Path(spec["result"]).with_suffix(".warm.nii")))

        def run_once() -> dict:
            result_file, result = task(request)
            shutil.move(result_file, spec["result"])  # the writer's temp file may sit on another filesystem
            assert spec["device"] != "cpu" or result["precision"] == spec["precision"], result["precision"]
            return {**{k: v for k, v in result["latencies"].items() if k != "transform"}, "windows": result["windows"]}

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mb()  # after imports and model load: growth is what one request costs
    latencies, stages, cpu0 = [], [], cpu_s()
    for _ in range(spec["repeat"]):
        start = time.perf_counter()
        stages.append(run_once())
        if cuda:
            torch.cuda.synchronize()
        latencies.append(time.perf_counter() - start)
    mid = sorted(range(len(latencies)), key=latencies.__getitem__)[len(latencies) // 2]  # the median run
    return {
        "latency_s": latencies[mid],
        "latencies_s": [round(t, 3) for t in latencies],
        "cpu_s": (cpu_s() - cpu0) / len(latencies),  # mean per run
        "stages_s": stages[mid] or None,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "rss_growth_mb": peak_rss_mb() - baseline,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report


def agreement(a: str, b: str) -> dict:
    x, y = np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj)
    if x.shape != y.shape:
        return {"agreement": None, "note": f"shapes differ {x.shape} vs {y.shape}"}
    return {"agreement": float((x == y).mean()), "labels_ours": int(len(np.unique(x))), "labels_ref": int(len(np.unique(y)))}


def structure_agreement(labels: str, reference: str, image: str) -> dict:
    """``labels`` against ``reference`` on the input's grid: Dice of each structure of at least MIN_ML ml in
    the reference, the lowest, and the share of body voxels (> BODY_HU in ``image``) with the same label."""
    x, y = np.asarray(nib.load(labels).dataobj), np.asarray(nib.load(reference).dataobj)
    ct = nib.load(image)
    body = np.asarray(ct.dataobj) > BODY_HU
    voxel_ml = float(np.prod(ct.header.get_zooms()[:3])) / 1000.0
    # One pass: a joint histogram of (reference, labels) values, as the measurements do.
    joint = np.bincount(y.astype(np.int64).ravel() * 256 + x.astype(np.int64).ravel(), minlength=256 * 256).reshape(256, 256)
    dice = {}
    for value in np.nonzero(joint.sum(1))[0]:
        ref = joint[value].sum()
        if value == 0 or ref * voxel_ml < MIN_ML:
            continue
        dice[int(value)] = round(2 * joint[value, value] / (ref + joint[:, value].sum()), 5)
    return {
        "body_voxels_equal": round(float((x[body] == y[body]).mean()), 6),
        "structures": len(dice),
        "lowest_dice": min(dice.values()) if dice else None,
        "below_0.99": {k: v for k, v in dice.items() if v < 0.99},
        "dice": dice,
    }


def fmt(v, spec="{:.2f}") -> str:
    return "-" if v is None else spec.format(v)


def ratio(a, b) -> str:
    return "-" if a is None or b is None or b <= 0 else f"{a / b:.2f}x"


def print_case(r: dict) -> None:
    o, f = r["ours"], r.get("reference") or {}
    print(f"\n== {r['case']} {'x'.join(map(str, r['shape']))} @ {r['spacing']} mm, {r['res']}, {r['device']}")
    if "error" in o:
        print(f"   ours FAILED: {o['error']}")
        return
    if "skipped" in f or "error" in f or not f:
        print(f"   {f.get('skipped') or ('reference FAILED: ' + f['error'] if 'error' in f else 'reference not run')}")
        f = {}
    rows = [
        ("latency s", "latency_s", ratio(f.get("latency_s"), o["latency_s"]) + " speed-up"),
        ("CPU time s", "cpu_s", ratio(f.get("cpu_s"), o["cpu_s"])),
        ("peak RAM MB", "peak_rss_mb", ratio(f.get("peak_rss_mb"), o["peak_rss_mb"])),
        ("RAM growth MB", "rss_growth_mb", ratio(f.get("rss_growth_mb"), o["rss_growth_mb"]) + " (ref/ours)"),
        ("GPU peak MB", "gpu_peak_mb", ratio(f.get("gpu_peak_mb"), o["gpu_peak_mb"])),
    ]
    print(f"   {'':16}{'ours':>12}{'reference':>12}   ratio ref/ours")
    for label, key, rat in rows:
        print(f"   {label:16}{fmt(o.get(key)):>12}{fmt(f.get(key)):>12}   {rat}")
    if r.get("agreement") is not None:
        print(f"   agreement       {r['agreement']:.6f}  ({r['labels_ref']} labels in reference, {r['labels_ours']} in ours)")
    if r.get("ours_fp32_vs_reference"):
        a = r["ours_fp32_vs_reference"]
        print(f"   ours fp32 vs reference: body voxels equal {a['body_voxels_equal']:.6f}, lowest Dice {fmt(a['lowest_dice'], '{:.4f}')} "
              f"over {a['structures']} structures >= {MIN_ML:g} ml")
    for mode, m in r.get("modes", {}).items():
        if "error" in m:
            print(f"   {mode} FAILED: {m['error']}")
            continue
        windows = (m.get("stages_s") or {}).get("windows") or {}
        print(f"   {mode:10} latency {m['latency_s']:.2f} s ({ratio(f.get('latency_s'), m['latency_s'])} vs reference, "
              f"{ratio(o['latency_s'], m['latency_s'])} vs ours fp32), CPU {m['cpu_s']:.1f} s, RAM growth {m['rss_growth_mb']:.0f} MB, "
              f"windows run {windows.get('run')} skipped {windows.get('skipped')}")
        if "body_voxels_equal" in m:
            print(f"   {'':10} vs ours fp32: body voxels equal {m['body_voxels_equal']:.6f}, lowest Dice {fmt(m['lowest_dice'], '{:.4f}')} "
                  f"over {m['structures']} structures >= {MIN_ML:g} ml; below 0.99: {m['below_0.99'] or 'none'}")
    if o.get("stages_s"):
        print("   ours stages s:  " + ", ".join(f"{k} {v:.2f}" for k, v in o["stages_s"].items() if k != "windows"))
        if "measurements" in o["stages_s"]:
            # Same run, same process: the measurements' share of the request (on by default in /infer).
            stages = o["stages_s"]
            inference = stages.get("infer", stages.get("segment"))
            print(f"   measurements    {stages['measurements']:.3f} s = {100 * stages['measurements'] / inference:.2f} % of the inference "
                  f"stage, {100 * stages['measurements'] / o['latency_s']:.2f} % of the request")


def print_growth(results: list[dict]) -> None:
    """RAM (and GPU) growth of ours from the shortest to the longest mirrored case: flat means z-independent."""
    for res in sorted({r["res"] for r in results}):
        zs = [r for r in results if r["res"] == res and r["case"].startswith("ct_sm_z") and "error" not in r["ours"]]
        if len(zs) < 2:
            continue
        a, b = min(zs, key=lambda r: r["shape"][2]), max(zs, key=lambda r: r["shape"][2])
        line = f"\n{res}: z {a['shape'][2]} -> {b['shape'][2]} slices (x{b['shape'][2] / a['shape'][2]:.1f} voxels): "
        line += f"ours RAM growth {a['ours']['rss_growth_mb']:.0f} -> {b['ours']['rss_growth_mb']:.0f} MB "
        line += f"({ratio(b['ours']['rss_growth_mb'], a['ours']['rss_growth_mb'])})"
        if a["ours"]["gpu_peak_mb"] is not None:
            line += f", GPU peak {a['ours']['gpu_peak_mb']:.0f} -> {b['ours']['gpu_peak_mb']:.0f} MB"
        fa, fb = a.get("reference") or {}, b.get("reference") or {}
        if "rss_growth_mb" in fa and "rss_growth_mb" in fb:
            line += f"; reference {fa['rss_growth_mb']:.0f} -> {fb['rss_growth_mb']:.0f} MB ({ratio(fb['rss_growth_mb'], fa['rss_growth_mb'])})"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--res", default="lowres", help="comma list of lowres,highres")
    p.add_argument("--z-lengths", default="60,120", help="slices (3 mm) of the z-mirrored inputs; 60,120 = 120,240 at 1.5 mm")
    p.add_argument("--full-size", action="store_true", help="also a 512x512x397 CT at 0.8x0.8x1.5 mm")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--ours", choices=["task", "pipeline"], default="task",
                   help="task: the MONAI Label infer task end to end; pipeline: lib.pipelines.wholebody without the server stack")
    p.add_argument("--checkpoint", help="a wholebody state dict for both pipelines, or a folder with one per resolution (bench/confident_checkpoint.py); default seeded random weights")
    p.add_argument("--modes", default="fp32", help="comma list of ours' CPU modes: fp32, bf16, fp32+skip, bf16+skip (skip_air)")
    p.add_argument("--repeat", type=int, default=1, help="runs per subprocess (later ones warm); the median is reported")
    p.add_argument("--out", default=None, help="JSON results (default bench/results/inference-<host>-<device>.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # one measured run, result as the last stdout line
        print(json.dumps(child(json.loads(args.child))))
        return

    sys.stdout.reconfigure(line_buffering=True)  # show each case as it finishes, even through a pipe
    res = [r.strip() for r in args.res.split(",") if r.strip()]
    assert set(res) <= {"lowres", "highres"}, res
    modes = ["fp32", *[m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "fp32"]]
    if not set(modes) <= {"fp32", "bf16", "fp32+skip", "bf16+skip"}:
        p.error(f"--modes: fp32, bf16, fp32+skip or bf16+skip, got {args.modes}")
    if len(modes) > 1 and args.ours != "task":
        p.error("--modes other than fp32 run through the infer task (--ours task)")
    out = Path(args.out or ROOT / "bench" / "results" / f"inference-{socket.gethostname()}-{args.device}.json")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp_name:
        tmp = Path(tmp_name)
        cases = build_inputs(tmp, [int(z) for z in args.z_lengths.split(",") if z.strip()], args.full_size)
        write_checkpoints(tmp / "model", args.checkpoint)
        for case in cases:
            for r in res:
                spec = {"image": case["image"], "highres": r == "highres", "device": args.device,
                        "model_dir": str(tmp / "model"), "repeat": args.repeat, "ours": args.ours}
                row = {**{k: case[k] for k in ("case", "shape", "spacing")}, "res": r, "device": args.device, "modes": {}}
                for mode in modes:  # fp32 first: the others are compared with it
                    precision, skip = mode.split("+")[0], mode.endswith("+skip")
                    result = str(tmp / f"ours_{mode}.nii.gz")
                    measured = run_child({**spec, "who": "ours", "precision": precision, "skip_air": skip, "result": result})
                    if mode == "fp32":
                        row["ours"] = measured
                    else:
                        if "latency_s" in measured and "latency_s" in row["ours"]:
                            measured.update(structure_agreement(result, str(tmp / "ours_fp32.nii.gz"), case["image"]))
                        row["modes"][mode] = measured
                if not args.skip_reference:
                    row["reference"] = run_child({**spec, "who": "reference", "result": str(tmp / "ref.nii.gz")})
                    if "latency_s" in row["reference"] and "latency_s" in row["ours"]:
                        row.update(agreement(str(tmp / "ours_fp32.nii.gz"), str(tmp / "ref.nii.gz")))
                        if args.checkpoint:
                            row["ours_fp32_vs_reference"] = structure_agreement(str(tmp / "ours_fp32.nii.gz"), str(tmp / "ref.nii.gz"), case["image"])
                print_case(row)
                results.append(row)
    print_growth(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"host": socket.gethostname(), "device": args.device, "torch": torch.__version__, "repeat": args.repeat,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "argv": sys.argv[1:]}
    out.write_text(json.dumps({**meta, "cases": results}, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
