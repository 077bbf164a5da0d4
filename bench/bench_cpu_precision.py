"""bfloat16 and air windows on the CPU (issue 22): our wholebody (or, with ``--model spleen``, spleen) inference in
fp32, bf16, and with air windows skipped, on one checkpoint, in one process, with same-run ratios against our own
fp32 and the agreement figures.

Agreement only means something on a confident checkpoint (a trained network; random weights make near-tied
logits everywhere): give it with ``--checkpoint``. Without one the bench runs seeded random weights and says
so. Figures, in the preprocessed (resampled) grid, against fp32 with every window run:
  * Dice per structure of at least ``--min-ml`` ml in the fp32 labels, and the lowest;
  * the share of body voxels (> -500 HU) with the same label;
  * for skipping, the windows run and skipped.

    $V/bin/python bench/bench_cpu_precision.py --checkpoint CKPT --res highres          # a whole CT
    $V/bin/python bench/bench_cpu_precision.py --res lowres --crop 0:64,0:64,0:30       # a small smoke run
    $V/bin/python bench/bench_cpu_precision.py --checkpoint CKPT --window 96            # one window, per layout
    $V/bin/python bench/bench_cpu_precision.py --model spleen --checkpoint SPLEEN_PT    # the spleen UNet

``--window`` also times OpenVINO (f32 and bf16) when the Python running the bench can import it: it is not a
dependency, so install it beside the project's packages to compare (docs/performance.md says how).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, CopyItemsd

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "apps" / "wholebody")]
CT = Path(os.environ.get("WHOLEBODY_BENCH_CT", ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"))
BODY_HU = -500.0
MODES = ("fp32", "fp32+skip", "bf16", "bf16+skip")

from bench_inference import checkpoint_file  # noqa: E402

from lib.acceleration import channels_last, cpu_precision  # noqa: E402  (needs apps/wholebody on sys.path)
from lib.acceleration.cpu_memory import keep_freed_memory  # noqa: E402
from lib.networks import spleen_unet, wholebody_segresnet  # noqa: E402
from lib.pipelines import spleen as spleen_pipeline  # noqa: E402
from lib.pipelines import wholebody as pipeline  # noqa: E402
from lib.transforms.body_mask import BODY_MASK_KEY, BodyMaskd  # noqa: E402
from lib.weights.checkpoints import load_state_dict  # noqa: E402


def load_network(model: str, checkpoint: str | None, highres: bool) -> torch.nn.Module:
    """``checkpoint``: for wholebody a state dict or the confident folder, for spleen a state dict."""
    torch.manual_seed(0)
    network = spleen_unet() if model == "spleen" else wholebody_segresnet()
    if checkpoint:
        path = checkpoint if model == "spleen" else checkpoint_file(checkpoint, highres)
        network.load_state_dict(load_state_dict(path, map_location="cpu"), strict=True)
    else:
        print("no --checkpoint: seeded random weights, agreement figures say nothing about a trained model")
    return network.eval()


def cropped(path: Path, crop: str | None, tmp: Path) -> str:
    if not crop:
        return str(path)
    ranges = [tuple(int(v) for v in r.split(":")) for r in crop.split(",")]
    out = tmp / "crop.nii.gz"
    nib.save(nib.load(str(path)).slicer[tuple(slice(a, b) for a, b in ranges)], str(out))
    return str(out)


def preprocess(model: str, image: str, highres: bool) -> dict:
    """The served preprocessing, with the body mask and a copy of the resampled HU before normalisation."""
    body = Compose([BodyMaskd(), CopyItemsd(keys="image", names="hu")])
    if model == "spleen":
        return Compose(spleen_pipeline.preprocessing(body=body))({"image": image})
    return Compose(pipeline.preprocessing(pipeline.PIXDIM[highres], "cpu", body=body))({"image": image})


def run(model: str, network: torch.nn.Module, data: dict, mode: str) -> tuple[torch.Tensor, float, dict]:
    precision, skip = mode.split("+")[0], mode.endswith("+skip")
    net = cpu_precision.for_device(channels_last.for_device(network, "cpu", True), "cpu", precision)
    mask = data[BODY_MASK_KEY][None] if skip else None
    if model == "spleen":
        inferer = spleen_pipeline.inferer(window_mask=mask)
    else:
        inferer = pipeline.inferer(pipeline.ROI_SIZE, pipeline.OVERLAP, window_mask=mask)
    start = time.perf_counter()
    with torch.inference_mode():
        out = inferer(torch.as_tensor(data["image"])[None], net)
        # wholebody's inferer gives labels already (streaming argmax); spleen's the bundle's averaged logits.
        labels = out if out.shape[1] == 1 else out.argmax(1, keepdim=True)
    return labels[0, 0].clone(), time.perf_counter() - start, dict(inferer.windows)


def agreement(reference: torch.Tensor, labels: torch.Tensor, body: torch.Tensor, voxel_ml: float, min_ml: float) -> dict:
    dice = {}
    for value in torch.unique(reference).tolist():
        ref = reference == value
        if value == 0 or ref.sum().item() * voxel_ml < min_ml:
            continue
        got = labels == value
        dice[int(value)] = round(2 * (ref & got).sum().item() / (ref.sum().item() + got.sum().item()), 5)
    return {
        "body_voxels_equal": round((reference[body] == labels[body]).float().mean().item(), 6),
        "all_voxels_equal": round((reference == labels).float().mean().item(), 6),
        "structures": len(dice),
        "lowest_dice": min(dice.values()) if dice else None,
        "dice": dice,
    }


def centre_window(data: dict, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The middle ``size``^3 window of the preprocessed CT (zero-padded as MONAI pads), and its body voxels."""
    image, hu = torch.as_tensor(data["image"]), torch.as_tensor(data["hu"])
    pad = [p for n in reversed(image.shape[1:]) for p in (max(size - n, 0) // 2, max(size - n, 0) - max(size - n, 0) // 2)]
    image, hu = torch.nn.functional.pad(image, pad), torch.nn.functional.pad(hu, pad, value=-1024.0)
    window = tuple(slice((n - size) // 2, (n - size) // 2 + size) for n in image.shape[1:])
    return image[(slice(None), *window)][None].contiguous(), hu[(0, *window)] > BODY_HU


def openvino_variants(network: torch.nn.Module, x: torch.Tensor) -> dict:
    """OpenVINO's CPU plugin on the same network, in f32 and bf16 (its own AMX kernels), if it is installed."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    model = ov.convert_model(network, example_input=x)
    core = ov.Core()
    variants = {}
    for hint in ("f32", "bf16"):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        variants[f"openvino {hint}"] = lambda c=compiled: (lambda t: torch.from_numpy(c(t.numpy())[0]))
    return variants


def window_timing(network: torch.nn.Module, x: torch.Tensor, body: torch.Tensor, repeats: int) -> dict:
    """Median seconds of one forward of the window ``x`` per layout, precision and engine (after a warm-up
    round), and the share of the window's body voxels whose label equals PyTorch fp32's."""
    # Built one at a time: channels-last converts the shared weights in place, and back after.
    variants = {
        "fp32": lambda: network,
        "fp32 channels-last": lambda: channels_last.for_device(network, "cpu", True),
        "bf16 channels-last": lambda: cpu_precision.for_device(channels_last.for_device(network, "cpu", True), "cpu", "bf16"),
        **openvino_variants(network, x),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    labels: dict[str, torch.Tensor] = {}
    # Round-robin, so that a change of load on a shared machine slows every variant alike.
    for round_ in range(repeats + 1):
        for name, make in variants.items():
            net = make()
            with torch.inference_mode():
                start = time.perf_counter()
                out = net(x)
                if round_:  # the first round is the warm-up
                    times[name].append(time.perf_counter() - start)
            labels[name] = out[0].argmax(0)
            network.to(memory_format=torch.contiguous_format)
    seconds = {name: round(statistics.median(t), 3) for name, t in times.items()}
    equal = {name: round((labels[name][body] == labels["fp32"][body]).float().mean().item(), 6) for name in variants}
    return {"seconds": seconds, "body_voxels_equal_to_fp32": equal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("wholebody", "spleen"), default="wholebody")
    parser.add_argument("--checkpoint", help="a state_dict, or wholebody's confident checkpoint folder (one per resolution)")
    parser.add_argument("--image", default=str(CT))
    parser.add_argument("--res", choices=("lowres", "highres"), default="highres")
    parser.add_argument("--crop", help="x0:x1,y0:y1,z0:z1 of the image (voxels) for a small run")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--min-ml", type=float, default=1.0, help="structures smaller in the fp32 labels are not scored")
    parser.add_argument("--window", type=int, help="instead: time one forward of a window of this size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    keep_freed_memory()  # as the infer tasks run

    print(f"bfloat16 units: {cpu_precision.bf16_units()}, torch threads: {torch.get_num_threads()}")
    network = load_network(args.model, args.checkpoint, args.res == "highres")
    if args.window:
        x, body = centre_window(preprocess(args.model, str(CT), args.res == "highres"), args.window)
        result = {"window": args.window, "res": args.res, "checkpoint": args.checkpoint, **window_timing(network, x, body, args.repeats)}
        fp32 = result["seconds"]["fp32"]
        result["speed-up vs fp32"] = {k: round(fp32 / v, 2) for k, v in result["seconds"].items()}
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            data = preprocess(args.model, cropped(Path(args.image), args.crop, Path(tmp)), args.res == "highres")
            pre_s = time.perf_counter() - start
        hu = torch.as_tensor(data["hu"])[0]
        body = hu > BODY_HU
        voxel_ml = float(np.prod([float(s) for s in data["image"].pixdim])) / 1000.0
        modes = args.modes.split(",")
        if "fp32" not in modes:
            modes.insert(0, "fp32")
        with torch.inference_mode():  # warm-up: the first forward of each precision pays oneDNN's set-up
            for precision in {m.split("+")[0] for m in modes}:
                cpu_precision.for_device(channels_last.for_device(network, "cpu", True), "cpu", precision)(torch.zeros(1, 1, *pipeline.ROI_SIZE))
        runs = {mode: run(args.model, network, data, mode) for mode in modes}
        reference, fp32_s, _ = runs["fp32"]
        result = {
            "model": args.model,
            "image": args.image,
            "crop": args.crop,
            "res": args.res,
            "shape": list(hu.shape),
            "checkpoint": args.checkpoint,
            "preprocessing_s (body mask included)": round(pre_s, 2),
            "modes": {
                mode: {
                    "infer_s": round(seconds, 2),
                    "speed-up vs fp32": round(fp32_s / seconds, 2),
                    "windows": windows,
                    **({} if mode == "fp32" else agreement(reference, labels, body, voxel_ml, args.min_ml)),
                }
                for mode, (labels, seconds, windows) in runs.items()
            },
        }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
