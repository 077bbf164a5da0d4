"""The confident checkpoint that issue 22's agreement figures are stated on: the served wholebody network trained
until its logits are confident on the bench's own inputs, cached outside the repo, never shipped.

Random weights make near-tied logits everywhere, so "bf16 labels agree with fp32 labels" means nothing on them.
A trained model's logits are far apart inside its structures and close only at their borders, which is what a
precision change meets in practice. This trains the served architecture on the shared CT's TotalSegmentator v2
labels (mapped by name to the bundle's 104 channels, others background) and on the full-size case made from it
(the same anatomy in air, normalised differently), each preprocessed by the served pipeline at 3 mm and at
1.5 mm: one checkpoint that the bench serves for both resolutions. A step takes the whole volume where it fits
in 96x96x48, else such a crop, mostly around labelled voxels.

What was tried on two cores: DiceCE over all 105 channels from random weights collapsed to background
(recipes 1 and 2: no structure after 450 steps); cross-entropy weighted by inverse square-root frequency plus
Dice over the structures present, no dropout, AdamW 3e-3 is recipe 3 (not yet run to the end: untested whether it gets there). It prints the training Dice per structure
at the end: the labels are a model's prediction, so these say "the network is confident here", not accuracy.

    $V/bin/python bench/confident_checkpoint.py            # trains once (about an hour on 2 cores), prints the path
    $V/bin/python bench/bench_inference.py --checkpoint "$($V/bin/python bench/confident_checkpoint.py --path)" ...
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

import numpy as np
import torch
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "apps" / "wholebody")]
SHARED = ROOT.parent / "shared" / "data"
SEG = SHARED / "ct" / "example_ct_sm_totalseg_v2.nii.gz"
CACHE = Path(os.environ.get("WHOLEBODY_CACHE", Path.home() / ".cache" / "wholebody")) / "confident"
CROP = (96, 96, 48)  # multiples of 8: ~3 s a step on 2 cores (128x128x64: ~7 s), more steps learn more
RECIPE = 3  # bump when the training data or loop changes: the cache then trains a new checkpoint

import bench_inference  # noqa: E402  (needs bench/ on sys.path)

from lib.acceleration import channels_last, cpu_precision  # noqa: E402
from lib.labels import wholebody_labels  # noqa: E402
from lib.networks import wholebody_segresnet  # noqa: E402
from lib.pipelines import wholebody as pipeline  # noqa: E402


def cache_path(args) -> Path:
    """Keyed by the recipe and its settings."""
    key = hashlib.sha256(json.dumps([RECIPE, args.steps, args.seed, args.lr]).encode()).hexdigest()[:12]
    return CACHE / f"wholebody-{key}.pt"


def to_channels(label: np.ndarray) -> np.ndarray:
    """TotalSegmentator v2 values -> the bundle's channels by name (a v2-only structure is background)."""
    classes = json.loads((SHARED / "labels" / "totalsegmentator_classes.json").read_text())["total_v2"]
    channels = wholebody_labels()
    lut = np.zeros(256, dtype=np.int64)
    for index, name in classes.items():
        lut[int(index)] = channels.get(name, 0)
    return lut[label]


def training_volumes(tmp: Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, network input (1, X, Y, Z), label (X, Y, Z)): the shared CT and the full-size case made from it,
    at 3 mm and at 1.5 mm. The z-mirrored cases hold the same anatomy and statistics as the CT itself."""
    images = bench_inference.build_inputs(tmp, [], full_size=True)
    labels = bench_inference.build_inputs(tmp, [], full_size=True, source=SEG, label=True)
    volumes = []
    for highres in (False, True):
        for image, label in zip(images, labels):
            data = Compose(pipeline.preprocessing(pipeline.PIXDIM[highres], "cpu", label_key="label"))(
                {"image": image["image"], "label": label["image"]}
            )
            target = to_channels(np.asarray(data["label"][0]).round().astype(np.int64))
            case = f"{image['case']}@{pipeline.PIXDIM[highres][0]:g}mm"
            volumes.append((case, torch.as_tensor(data["image"]).float(), torch.as_tensor(target)))
            print(f"  {case}: {tuple(target.shape)}, {len(np.unique(target)) - 1} structures", flush=True)
    return volumes


class WeightedCEPresentDice(torch.nn.Module):
    """Cross-entropy weighted by inverse square-root class frequency (background floored) plus soft Dice over the
    structures present in the training labels only: 105 channels of plain DiceCE from random weights settle on
    background, the rare structures' gradients drowned by the air and the absent channels."""

    def __init__(self, volumes, background_weight: float = 0.05):
        super().__init__()
        counts = sum(torch.bincount(label.flatten(), minlength=105).double() for _, _, label in volumes)
        present = counts > 0
        weight = torch.zeros(105, dtype=torch.float64)
        weight[present] = (counts[present].sum() / counts[present]).sqrt()
        weight = weight / weight[present].mean()
        weight[0] = max(float(weight[0]), background_weight)
        self.ce = torch.nn.CrossEntropyLoss(weight=weight.float())
        self.present = torch.nonzero(present[1:]).flatten() + 1

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(1)[:, self.present]
        onehot = torch.stack([label == c for c in self.present.tolist()], 1).float()
        dims = (0, 2, 3, 4)
        dice = (2 * (probs * onehot).sum(dims) + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)
        return self.ce(logits, label) + 1 - dice.mean()


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


def train(volumes, steps: int, seed: int, lr: float, checkpoints: str | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = wholebody_segresnet().to(memory_format=torch.channels_last_3d).train()
    for module in network.modules():  # the served dropout (0.2) only slows memorising the bench's own inputs
        if isinstance(module, torch.nn.Dropout3d):
            module.p = 0.0
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    loss_fn = WeightedCEPresentDice(volumes)
    volumes = [(name, *padded_to_eight(image, label)) for name, image, label in volumes]
    # bf16 autocast where the CPU has the units: about 3x faster steps; the weights stay float32.
    autocast = cpu_precision.bf16_units()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        name, image, label = volumes[rng.integers(len(volumes))]
        x, y = random_crop(image, label, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = network(x[None].contiguous(memory_format=torch.channels_last_3d))
        # The loss on channels-last logits is ~3x slower than on contiguous ones (softmax over the channels).
        loss = loss_fn(logits.float().contiguous(), y[None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == steps:
            with torch.no_grad():
                got = logits.argmax(1)[0]
                dice = [2 * ((got == c) & (y == c)).sum().item() / ((got == c).sum() + (y == c).sum()).item()
                        for c in torch.unique(y).tolist() if c]
            print(f"  step {step}/{steps}: loss {loss.item():.3f}, {name}: median Dice {np.median(dice):.3f}, lowest {min(dice):.3f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        if checkpoints and step % 200 == 0 and step < steps:  # something to judge with if the run is cut short
            torch.save(network.state_dict(), f"{checkpoints}.step{step}")
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
        volumes = training_volumes(Path(tmp))
    path.parent.mkdir(parents=True, exist_ok=True)
    network = train(volumes, args.steps, args.seed, args.lr, str(path))
    dice = training_dice(network, volumes)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    settings = {"steps": args.steps, "seed": args.seed, "lr": args.lr, "recipe": RECIPE}
    path.with_suffix(".json").write_text(json.dumps({**settings, "training_dice": dice}, indent=1))
    print(path)


if __name__ == "__main__":
    main()
