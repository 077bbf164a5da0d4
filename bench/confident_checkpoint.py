"""The confident checkpoint that issue 22's agreement figures are stated on: the served wholebody network trained
until its logits are confident on the bench's own inputs, cached outside the repo, never shipped.

Random weights make near-tied logits everywhere, so "bf16 labels agree with fp32 labels" means nothing on them.
A trained model's logits are far apart inside its structures and close only at their borders, which is what a
precision change meets in practice. This trains the served architecture on the shared CT's TotalSegmentator v2
labels (mapped by name to the bundle's 104 channels, others background) and on the full-size case made from it
(the same anatomy in air, so normalised differently), each preprocessed by the served pipeline. Like the bundle,
it makes one network per resolution, in the bundle's layout (``models/model_lowres.pt`` at 3 mm, ``models/model.pt``
at 1.5 mm), which ``bench_inference.py --checkpoint`` and ``bench_cpu_precision.py --checkpoint`` read.

Recipe 4, what learns on two cores: plain cross-entropy plus soft Dice over the structures in the step's labels,
Adam at a constant 1e-3, no dropout, bfloat16 autocast. The 3 mm network trains from random weights on the shared
CT's whole volume and on crops of that size from the full-size case; the 1.5 mm network starts from it and trains
on crops of both at 1.5 mm. Recipes that did not learn: DiceCE over all 105 channels (1 and 2: background
everywhere after 450 steps) and cross-entropy weighted by inverse square-root frequency with AdamW 3e-3 one-cycle
on 96x96x48 crops (3: median training Dice 0 at step 575). A probe of recipe 4's loss on the whole shared CT
at 3 mm reached median training Dice 0.64 at step 400 and 0.97 at step 720. A run saves its state every
``--save-every`` steps and resumes from it when started again with the same settings. The figures in
docs/performance.md are on the defaults (1300 and 900 steps), made in pieces: the 3 mm network resumed at step 901
from an earlier 900-step run with Adam's moments restarted (a finished run keeps no optimizer state), the 1.5 mm
network at step 451 from the saved state of a stopped 600-step run (its moments kept).

It prints the training Dice per structure at the end (sliding windows, as served): the labels are a model's
prediction, so these say "the network is confident here", not accuracy.

    $V/bin/python bench/confident_checkpoint.py            # trains once (about 3 hours on 2 cores), prints the folder
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
RECIPE = 4  # bump when the training data or loop changes: the cache then trains a new checkpoint
# Per resolution (highres?): the crop a step takes (multiples of 8). At 3 mm it holds the shared CT's whole
# volume (~3 s a step on 2 cores); at 1.5 mm a quarter of it in-plane (~7 s a step).
CROP = {False: (128, 112, 32), True: (128, 128, 64)}

import bench_inference  # noqa: E402  (needs bench/ on sys.path)

from lib.acceleration import channels_last, cpu_precision  # noqa: E402
from lib.labels import wholebody_labels  # noqa: E402
from lib.networks import wholebody_segresnet  # noqa: E402
from lib.pipelines import wholebody as pipeline  # noqa: E402


def cache_folder(args) -> Path:
    """Keyed by the recipe and its settings; the bundle's layout inside."""
    key = hashlib.sha256(json.dumps([RECIPE, args.steps, args.highres_steps, args.seed, args.lr]).encode()).hexdigest()[:12]
    return CACHE / f"wholebody-{key}"


def training_volumes(tmp: Path, highres: bool) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, network input (1, X, Y, Z), label (X, Y, Z)) at the resolution: the shared CT and the full-size
    case made from it (its z-mirrored cases hold the same anatomy and statistics as the CT itself)."""
    images = bench_inference.build_inputs(tmp, [], full_size=True)
    labels = bench_inference.build_inputs(tmp, [], full_size=True, source=SEG, label=True)
    volumes = []
    for image, label in zip(images, labels):
        data = Compose(pipeline.preprocessing(pipeline.PIXDIM[highres], "cpu", label_key="label"))(
            {"image": image["image"], "label": label["image"]}
        )
        target = bench_inference.to_channels(np.asarray(data["label"][0]).round().astype(np.int64))
        case = f"{image['case']}@{pipeline.PIXDIM[highres][0]:g}mm"
        volumes.append((case, torch.as_tensor(data["image"]).float(), torch.as_tensor(target)))
        print(f"  {case}: {tuple(target.shape)}, {len(np.unique(target)) - 1} structures", flush=True)
    return volumes


def present_dice_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the structures in these labels only: Dice over all 105 channels from
    random weights settles on background, the absent channels' perfect scores drowning the present ones."""
    present = [c for c in torch.unique(label).tolist() if c]
    ce = torch.nn.functional.cross_entropy(logits, label)
    if not present:  # a crop of air or of tissue outside every labelled structure
        return ce
    probs = logits.softmax(1)[:, present]
    onehot = torch.stack([label == c for c in present], 1).float()
    dims = (0, 2, 3, 4)
    dice = (2 * (probs * onehot).sum(dims) + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)
    return ce + 1 - dice.mean()


def padded_to_eight(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (the image with its own minimum, air) to sizes the network's three down-samplings divide."""
    pad = []
    for size in reversed(label.shape):
        extra = -size % 8
        pad += [extra // 2, extra - extra // 2]
    return torch.nn.functional.pad(image, pad, value=float(image.min())), torch.nn.functional.pad(label, pad)


def random_crop(image, label, crop, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole volume where it fits in ``crop``, else a crop around a labelled voxel (4 in 5 draws) or anywhere
    (air and table, which the sliding windows of the full-size case meet too)."""
    size = [min(c, s) for c, s in zip(crop, label.shape)]
    labelled = torch.nonzero(label) if rng.random() < 0.8 else None
    if labelled is not None and len(labelled):
        centre = labelled[rng.integers(len(labelled))].tolist()
    else:
        centre = [int(rng.integers(s)) for s in label.shape]
    start = [min(max(c - r // 2, 0), s - r) for c, r, s in zip(centre, size, label.shape)]
    window = tuple(slice(a, a + r) for a, r in zip(start, size))
    return image[(slice(None), *window)], label[window]


def new_network() -> torch.nn.Module:
    network = wholebody_segresnet()
    for module in network.modules():  # the served dropout (0.2) only slows memorising the bench's own inputs
        if isinstance(module, torch.nn.Dropout3d):
            module.p = 0.0
    return network


def train(network: torch.nn.Module, volumes, crop, steps: int, seed: int, lr: float, state_file: Path, save_every: int) -> torch.nn.Module:
    """Adam at a constant ``lr`` on random crops; resumes from ``state_file`` (saved every ``save_every`` steps)."""
    network = network.to(memory_format=torch.channels_last_3d).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    first = 1
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu")
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        first = state["step"] + 1
        print(f"  resumed at step {first} from {state_file}", flush=True)
    rng = np.random.default_rng([seed, first])
    torch.manual_seed(seed + first)
    volumes = [(name, *padded_to_eight(image, label)) for name, image, label in volumes]
    # bf16 autocast where the CPU has the units: about 3x faster steps; the weights stay float32.
    autocast = cpu_precision.bf16_units()
    start = time.perf_counter()
    for step in range(first, steps + 1):
        name, image, label = volumes[rng.integers(len(volumes))]
        x, y = random_crop(image, label, crop, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = network(x[None].contiguous(memory_format=torch.channels_last_3d))
        # The loss on channels-last logits is ~3x slower than on contiguous ones (softmax over the channels).
        loss = present_dice_ce(logits.float().contiguous(), y[None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step % 25 == 0 or step == steps) and y.any():  # a crop without a structure has no Dice to print
            with torch.no_grad():
                got = logits.argmax(1)[0]
                dice = [2 * ((got == c) & (y == c)).sum().item() / ((got == c).sum() + (y == c).sum()).item()
                        for c in torch.unique(y).tolist() if c]
            print(f"  step {step}/{steps}: loss {loss.item():.3f}, {name}: median Dice {np.median(dice):.3f}, lowest {min(dice):.3f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
        if step % save_every == 0 and step < steps:  # a run cut short resumes here
            torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, state_file)
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


def make(folder: Path, highres: bool, steps: int, args) -> None:
    """One resolution's network: 3 mm from random weights, 1.5 mm from the 3 mm network."""
    models = folder / "models"
    path = models / bench_inference.BUNDLE_FILES[highres]
    if path.exists():
        print(f"cached: {path}")
        return
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    network = new_network()
    if highres:
        network.load_state_dict(torch.load(models / bench_inference.BUNDLE_FILES[False], map_location="cpu"))
    print(f"{pipeline.PIXDIM[highres][0]:g} mm network: {steps} steps", flush=True)
    with tempfile.TemporaryDirectory(prefix="confident-") as tmp:
        volumes = training_volumes(Path(tmp), highres)
    network = train(network, volumes, CROP[highres], steps, args.seed, args.lr, path.with_suffix(".state"), args.save_every)
    dice = training_dice(network, volumes)
    torch.save(network.state_dict(), path)
    path.with_suffix(".state").unlink(missing_ok=True)
    settings = {"steps": steps, "seed": args.seed, "lr": args.lr, "recipe": RECIPE, "crop": CROP[highres]}
    path.with_suffix(".json").write_text(json.dumps({**settings, "training_dice": dice}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1300, help="steps of the 3 mm network")
    parser.add_argument("--highres-steps", type=int, default=900, help="steps of the 1.5 mm network, after the 3 mm one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--save-every", type=int, default=50, help="steps between saved states to resume from")
    parser.add_argument("--path", action="store_true", help="print the cached checkpoint's folder (fails if not made)")
    args = parser.parse_args()
    folder = cache_folder(args)
    if args.path:
        if not all((folder / "models" / name).exists() for name in bench_inference.BUNDLE_FILES.values()):
            sys.exit(f"not made yet: run {Path(__file__).name} with the same settings first")
        print(folder)
        return
    print(f"bfloat16 units: {cpu_precision.bf16_units()}, torch threads: {torch.get_num_threads()}")
    make(folder, False, args.steps, args)
    make(folder, True, args.highres_steps, args)
    print(folder)


if __name__ == "__main__":
    main()
