"""The confident checkpoint that issue 22's agreement figures are stated on: the served wholebody network trained
until its logits are confident on the bench's own inputs, cached outside the repo, never shipped.

Random weights make near-tied logits everywhere, so "bf16 labels agree with fp32 labels" means nothing on them.
A trained model's logits are far apart inside its structures and close only at their borders, which is what a
precision change meets in practice. This trains the served architecture, one checkpoint per resolution as the
bundle has, on the shared CT's TotalSegmentator v2 labels (mapped by name to the bundle's 104 channels, others
background), on the full-size case made from it (the same anatomy in air) and on a phantom, preprocessed by the
served pipeline. A step takes the whole volume where it fits in 128x128x64 (the shared CT at 3 mm does), else
such a crop, mostly around labelled voxels: on two cores whole volumes learn fastest per second (96^3 windows
around labels, recipe 1, reached no structure in 450 steps). It prints the training Dice per structure at the
end: the labels are a model's prediction, so these say "the network is confident here", not accuracy.

    $V/bin/python bench/confident_checkpoint.py --res lowres          # trains once (~40 min on 2 cores), prints the path
    $V/bin/python bench/bench_inference.py --checkpoint "$($V/bin/python bench/confident_checkpoint.py --res lowres --path)" ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "apps" / "wholebody")]
SHARED = ROOT.parent / "shared" / "data"
SEG = SHARED / "ct" / "example_ct_sm_totalseg_v2.nii.gz"
CACHE = Path(os.environ.get("WHOLEBODY_CACHE", Path.home() / ".cache" / "wholebody")) / "confident"
CROP = (128, 128, 64)  # multiples of 8; the shared CT (128x104x32 padded, 3 mm) and the phantoms fit whole
RECIPE = 2  # bump when the training data or loop changes: the cache then trains a new checkpoint

import bench_inference  # noqa: E402  (needs bench/ on sys.path)

from lib.acceleration import channels_last, cpu_precision  # noqa: E402
from lib.labels import wholebody_labels  # noqa: E402
from lib.networks import wholebody_segresnet  # noqa: E402
from lib.phantom import make_phantom, ras_affine  # noqa: E402
from lib.pipelines import wholebody as pipeline  # noqa: E402


def cache_path(args) -> Path:
    """Keyed by the recipe and its settings."""
    key = hashlib.sha256(json.dumps([RECIPE, args.res, args.steps, args.seed, args.lr]).encode()).hexdigest()[:12]
    return CACHE / f"wholebody-{args.res}-{key}.pt"


def to_channels(label: np.ndarray) -> np.ndarray:
    """TotalSegmentator v2 values -> the bundle's channels by name (a v2-only structure is background)."""
    classes = json.loads((SHARED / "labels" / "totalsegmentator_classes.json").read_text())["total_v2"]
    channels = wholebody_labels()
    lut = np.zeros(256, dtype=np.int64)
    for index, name in classes.items():
        lut[int(index)] = channels.get(name, 0)
    return lut[label]


def training_volumes(tmp: Path, highres: bool) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, network input (1, X, Y, Z), label (X, Y, Z)) at one resolution: the shared CT, the full-size case
    made from it (the same anatomy in air, normalised differently) and phantoms. The z-mirrored cases hold the
    same anatomy and statistics as the CT itself, so they add nothing to learn."""
    images = bench_inference.build_inputs(tmp, [], full_size=True)
    labels = bench_inference.build_inputs(tmp, [], full_size=True, source=SEG, label=True)
    pairs = [(i["case"], i["image"], l["image"]) for i, l in zip(images, labels)]
    for seed in (1,):  # the phantom's labels are bundle channels already
        phantom = make_phantom((160, 130, 110), (2.0,) * 3, seed=seed, variation=0.5, contrast=True)
        affine = ras_affine(phantom.image.shape, (2.0,) * 3)
        image = bench_inference.save_volume(phantom.image, affine, tmp / f"phantom{seed}.nii.gz")
        label = tmp / f"phantom{seed}_label.nii.gz"
        nib.save(nib.Nifti1Image(phantom.label.astype(np.uint8), affine), str(label))
        pairs.append((f"phantom{seed}", image, str(label)))
    volumes = []
    for case, image, label in pairs:
        data = Compose(pipeline.preprocessing(pipeline.PIXDIM[highres], "cpu", label_key="label"))({"image": image, "label": label})
        values = np.asarray(data["label"][0]).round().astype(np.int64)
        target = values if case.startswith("phantom") else to_channels(values)
        volumes.append((case, torch.as_tensor(data["image"]).float(), torch.as_tensor(target)))
        print(f"  {case}: {tuple(target.shape)}, {len(np.unique(target)) - 1} structures", flush=True)
    return volumes


def padded_to_eight(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (as MONAI's sliding window pads) to sizes the network's three down-samplings divide."""
    pad = []
    for size in reversed(label.shape):
        extra = -size % 8
        pad += [extra // 2, extra - extra // 2]
    return torch.nn.functional.pad(image, pad), torch.nn.functional.pad(label, pad)


def random_crop(image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole volume where it fits in CROP, else a CROP around a labelled voxel (4 in 5 draws) or anywhere.
    Whole volumes make the most of a step on two cores: every labelled voxel, no padding."""
    size = [min(c, s) for c, s in zip(CROP, label.shape)]
    labelled = torch.nonzero(label) if rng.random() < 0.8 else None
    if labelled is not None and len(labelled):
        centre = labelled[rng.integers(len(labelled))].tolist()
    else:
        centre = [int(rng.integers(s)) for s in label.shape]
    start = [min(max(c - r // 2, 0), s - r) for c, r, s in zip(centre, size, label.shape)]
    window = tuple(slice(a, a + r) for a, r in zip(start, size))
    return image[(slice(None), *window)], label[window]


def train(volumes, steps: int, seed: int, lr: float) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = wholebody_segresnet().to(memory_format=torch.channels_last_3d).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    volumes = [(name, *padded_to_eight(image, label)) for name, image, label in volumes]
    # bf16 autocast where the CPU has the units: about 3x faster steps; the weights stay float32.
    autocast = cpu_precision.bf16_units()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        _, image, label = volumes[rng.integers(len(volumes))]
        x, y = random_crop(image, label, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = network(x[None].contiguous(memory_format=torch.channels_last_3d))
        # The loss on channels-last logits is ~3x slower than on contiguous ones (softmax over the channels).
        loss = loss_fn(logits.float().contiguous(), y[None, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == steps:
            with torch.no_grad():
                hit = logits.argmax(1)[0] == y
                fg = (y > 0).sum().item()
            print(f"  step {step}/{steps}: loss {loss.item():.3f}, labelled voxels right {((hit & (y > 0)).sum().item() / max(fg, 1)):.3f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    return network.to(memory_format=torch.contiguous_format).eval()


def training_dice(network: torch.nn.Module, volumes, min_voxels: int = 100) -> dict:
    """Dice per structure of the fp32 labels (sliding windows, as served) against the training labels, per volume."""
    names = {v: k for k, v in wholebody_labels().items()}
    net = channels_last.for_device(network, "cpu", True)
    out = {}
    for name, image, label in volumes:
        with torch.inference_mode():
            got = pipeline.inferer(pipeline.ROI_SIZE, pipeline.OVERLAP)(image[None], net)[0, 0]
        dice = {}
        for value in torch.unique(label).tolist():
            ref = label == value
            if value == 0 or ref.sum() < min_voxels:
                continue
            hit = got == value
            dice[names.get(value, str(value))] = round(2 * (ref & hit).sum().item() / (ref.sum() + hit.sum()).item(), 3)
        out[name] = dice
        print(f"  {name}: median Dice {np.median(list(dice.values())):.3f}, lowest {min(dice.values()):.3f} over {len(dice)} structures")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", choices=("lowres", "highres"), default="lowres", help="one checkpoint per resolution, as the bundle's")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--path", action="store_true", help="print the cached checkpoint's path (fails if not made)")
    args = parser.parse_args()
    path = cache_path(args)
    if args.path:
        if not path.exists():
            sys.exit(f"not made yet: run {Path(__file__).name} with the same settings first")
        print(path)
        return
    if path.exists():
        print(f"cached: {path}")
        return
    print(f"bfloat16 units: {cpu_precision.bf16_units()}, torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory(prefix="confident-") as tmp:
        volumes = training_volumes(Path(tmp), args.res == "highres")
    network = train(volumes, args.steps, args.seed, args.lr)
    dice = training_dice(network, volumes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    settings = {"res": args.res, "steps": args.steps, "seed": args.seed, "lr": args.lr, "recipe": RECIPE}
    path.with_suffix(".json").write_text(json.dumps({**settings, "training_dice": dice}, indent=1))
    print(path)


if __name__ == "__main__":
    main()
