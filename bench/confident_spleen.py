"""A confident ``spleen`` network for issue 22's agreement figures: the served UNet (the bundle
spleen_ct_segmentation's) trained on the shared CT's spleen and the full-size case made from it, each through
the served spleen preprocessing (1.5x1.5x2 mm, HU window -57..164), cached outside the repo, never shipped.

Same reason and same loop as bench/confident_checkpoint.py (whose ``train`` it runs): random weights make
near-tied logits, so bf16-against-fp32 agreement means nothing on them. Crops of the bundle's 96^3 window, a
labelled voxel at the centre in 4 of 5 draws; plain cross-entropy plus soft Dice; Adam at a constant 1e-3.
It prints the training Dice of the spleen through the served sliding windows at the end.

    $V/bin/python bench/confident_spleen.py             # trains once (minutes on 2 cores), prints the file
    $V/bin/python bench/bench_cpu_precision.py --model spleen --checkpoint "$($V/bin/python bench/confident_spleen.py --path)"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "apps" / "wholebody")]
RECIPE = 1  # bump when the training data or loop changes
CROP = (96, 96, 96)  # the bundle's window; the UNet's four down-samplings need multiples of 16
MULTIPLE = 16

import bench_inference  # noqa: E402
import confident_checkpoint  # noqa: E402

from lib.acceleration import channels_last, cpu_precision  # noqa: E402
from lib.labels import wholebody_labels  # noqa: E402
from lib.networks import spleen_unet  # noqa: E402
from lib.pipelines import spleen as pipeline  # noqa: E402


def checkpoint_path(args) -> Path:
    key = hashlib.sha256(json.dumps([RECIPE, args.steps, args.seed, args.lr]).encode()).hexdigest()[:12]
    return confident_checkpoint.CACHE / f"spleen-{key}" / "models" / "model.pt"  # the bundle's layout


def training_volumes(tmp: Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, network input (1, X, Y, Z), spleen mask (X, Y, Z) as 0/1) for the shared CT and the full-size case."""
    images = bench_inference.build_inputs(tmp, [], full_size=True)
    labels = bench_inference.build_inputs(tmp, [], full_size=True, source=confident_checkpoint.SEG, label=True)
    spleen = wholebody_labels()["spleen"]
    volumes = []
    for image, label in zip(images, labels):
        data = Compose(pipeline.preprocessing(label_key="label"))({"image": image["image"], "label": label["image"]})
        target = bench_inference.to_channels(np.asarray(data["label"][0]).round().astype(np.int64)) == spleen
        volumes.append((image["case"], torch.as_tensor(data["image"]).float(), torch.as_tensor(target.astype(np.int64))))
        print(f"  {image['case']}: {tuple(target.shape)}, spleen {int(target.sum())} voxels", flush=True)
    return volumes


def training_dice(network: torch.nn.Module, volumes) -> dict:
    """Dice of the spleen in the fp32 labels (the served sliding windows) against the training labels, per volume."""
    net = channels_last.for_device(network, "cpu", True)
    dice = {}
    for name, image, label in volumes:
        with torch.inference_mode():
            got = pipeline.inferer()(image[None], net).argmax(1)[0] == 1
        ref = label == 1
        dice[name] = round(2 * (ref & got).sum().item() / (ref.sum() + got.sum()).item(), 4)
        print(f"  {name}: spleen Dice {dice[name]}", flush=True)
    return dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--save-every", type=int, default=50, help="steps between saved states to resume from")
    parser.add_argument("--path", action="store_true", help="print the cached checkpoint's file (fails if not made)")
    args = parser.parse_args()
    path = checkpoint_path(args)
    if args.path:
        if not path.exists():
            sys.exit(f"not made yet: run {Path(__file__).name} with the same settings first")
        print(path)
        return
    if path.exists():
        print(f"cached: {path}")
        return
    print(f"bfloat16 units: {cpu_precision.bf16_units()}, torch threads: {torch.get_num_threads()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="confident-spleen-") as tmp:
        volumes = training_volumes(Path(tmp))
    network = confident_checkpoint.train(
        spleen_unet(), volumes, CROP, args.steps, args.seed, args.lr, path.with_suffix(".state"), args.save_every, MULTIPLE
    )
    dice = training_dice(network, volumes)
    torch.save(network.state_dict(), path)
    path.with_suffix(".state").unlink(missing_ok=True)
    settings = {"steps": args.steps, "seed": args.seed, "lr": args.lr, "recipe": RECIPE, "crop": CROP}
    path.with_suffix(".json").write_text(json.dumps({**settings, "training_dice": dice}, indent=1))
    print(path)


if __name__ == "__main__":
    main()
