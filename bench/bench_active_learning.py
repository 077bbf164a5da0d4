"""Simulated annotation study: does asking for the most uncertain study beat asking at random?

A pool of studies whose labels are known but hidden (the shared real CT with its TotalSegmentator
labels mapped to the bundle's channels by name, and phantoms of varied anatomy from
``lib.phantom``: many ordinary ones, a few unusual ones), a held-out set, and K rounds of

    pick the next study by the strategy -> reveal its label -> train a few epochs -> Dice on held-out

for ``uncertainty`` (the server's MC dropout score, ``lib/activelearning/mc_dropout.py``, with the
model of that round) and ``random``, each repeated with several seeds. Writes a CSV of every round
and a PNG of the learning curves. Not part of CI.

    $V/bin/python bench/bench_active_learning.py --threads 1               # CPU: the small network at 10 mm, ~26 min
    $V/bin/python bench/bench_active_learning.py --network bundle --pixdim 3 --device cuda --lr 1e-4

``--network small`` is the bundle's SegResNet with 8 instead of 32 initial filters (same blocks,
same 0.2 dropout, 105 channels), so that a study runs on a 2-core CPU in minutes; ``bundle`` is
the served network itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "apps" / "wholebody"))
SHARED = ROOT.parent / "shared" / "data"

from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import SegResNet  # noqa: E402
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing  # noqa: E402

from lib.activelearning.mc_dropout import enable_mc_dropout, mc_dropout_uncertainty  # noqa: E402
from lib.activelearning.scoring import load_study  # noqa: E402
from lib.labels import wholebody_labels  # noqa: E402
from lib.networks import wholebody_segresnet  # noqa: E402
from lib.phantom import REFERENCE_FOV_MM, make_phantom, ras_affine  # noqa: E402

CHANNELS = 105


@dataclass
class Study:
    name: str
    kind: str  # "ordinary", "unusual" or "real"
    image: torch.Tensor  # (1, X, Y, Z) network input
    hu: torch.Tensor  # (1, X, Y, Z)
    label: torch.Tensor  # (X, Y, Z) int64 bundle channels


def small_segresnet() -> SegResNet:
    return SegResNet(
        spatial_dims=3, in_channels=1, out_channels=CHANNELS, init_filters=8,
        blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2,
    )


NETWORKS = {"small": small_segresnet, "bundle": wholebody_segresnet}


def phantom_study(name: str, kind: str, pixdim: float, tmp: Path, **kwargs) -> Study:
    shape = tuple(int(round(fov / pixdim)) for fov in REFERENCE_FOV_MM)
    phantom = make_phantom(shape, (pixdim,) * 3, **kwargs)
    path = tmp / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image, ras_affine(shape, (pixdim,) * 3)), str(path))
    image, hu = load_study(str(path), (pixdim,) * 3)
    assert image.shape[1:] == phantom.label.shape, (image.shape, phantom.label.shape)
    return Study(name, kind, image, hu, torch.as_tensor(phantom.label, dtype=torch.long))


def real_ct_study(pixdim: float) -> Study:
    """The shared CT; its TotalSegmentator v2 labels become bundle channels by name (others: 0)."""
    classes = json.loads((SHARED / "labels" / "totalsegmentator_classes.json").read_text())["total_v2"]
    channels = wholebody_labels()
    lut = np.zeros(256, dtype=np.int64)
    for index, name in classes.items():
        lut[int(index)] = channels.get(name, 0)
    image, hu = load_study(str(SHARED / "ct" / "example_ct_sm.nii.gz"), (pixdim,) * 3)
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS"), Spacing(pixdim=(pixdim,) * 3, mode="nearest")])
    label = load(str(SHARED / "ct" / "example_ct_sm_totalseg_v2.nii.gz"))[0].numpy().round().astype(np.int64)
    assert label.shape == tuple(image.shape[1:]), (label.shape, image.shape)
    return Study("real_ct", "real", image, hu, torch.as_tensor(lut[label]))


def build_data(pixdim: float, tmp: Path) -> tuple[Study, list[Study], list[Study]]:
    """(first labelled study, pool, held-out). Ordinary phantoms vary a little; unusual ones a lot
    and have a contrast-enhanced aorta; the held-out set has both, half and half."""
    ordinary = {"variation": 0.15}
    unusual = {"variation": 1.0, "contrast": True}
    start = phantom_study("start", "ordinary", pixdim, tmp, seed=1000, **ordinary)
    pool = [real_ct_study(pixdim)]
    pool += [phantom_study(f"ordinary{s}", "ordinary", pixdim, tmp, seed=s, **ordinary) for s in range(1, 8)]
    pool += [phantom_study(f"unusual{s}", "unusual", pixdim, tmp, seed=s, **unusual) for s in range(101, 105)]
    held_out = [phantom_study(f"test_ordinary{s}", "ordinary", pixdim, tmp, seed=s, **ordinary) for s in range(501, 504)]
    held_out += [phantom_study(f"test_unusual{s}", "unusual", pixdim, tmp, seed=s, **unusual) for s in range(601, 604)]
    return start, pool, held_out


def padded(t: torch.Tensor, multiple: int = 8, mode: str = "replicate") -> torch.Tensor:
    """(C, X, Y, Z) padded at the end of each spatial dim to a multiple of ``multiple``."""
    pad = []
    for size in reversed(t.shape[1:]):
        pad += [0, (-size) % multiple]
    if mode == "replicate":
        return F.pad(t[None].float(), pad, mode="replicate")[0]
    return F.pad(t, pad, mode="constant", value=0)


def train(network, optimizer, loss_fn, studies: list[Study], epochs: int, device, rng: random.Random) -> float:
    network.train()
    last = 0.0
    for _ in range(epochs):
        for study in rng.sample(studies, len(studies)):
            x = padded(study.image)[None].to(device)
            y = padded(study.label[None], mode="constant")[None].to(device)
            loss = loss_fn(network(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            last = float(loss)
    return last


@torch.no_grad()
def dice(network, studies: list[Study], device) -> float:
    """Mean over studies of the mean Dice of the structures in each study's label."""
    network.eval()
    per_study = []
    for study in studies:
        logits = network(padded(study.image)[None].to(device))[0]
        pred = logits.argmax(0)[tuple(slice(0, s) for s in study.label.shape)].cpu()
        scores = []
        for c in study.label.unique().tolist():
            if c == 0:
                continue
            p, g = pred == c, study.label == c
            scores.append(2.0 * float((p & g).sum()) / float(p.sum() + g.sum()))
        per_study.append(float(np.mean(scores)))
    return float(np.mean(per_study))


def run(strategy: str, repeat: int, start: Study, pool: list[Study], held_out: list[Study], args, device) -> list[dict]:
    torch.manual_seed(repeat)
    rng = random.Random(repeat)
    network = NETWORKS[args.network]().to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    labelled, unlabelled = [start], list(pool)
    began = time.time()
    train(network, optimizer, loss_fn, labelled, args.warmup_epochs, device, rng)  # the model the server starts with
    rows = [{"strategy": strategy, "repeat": repeat, "round": 0, "labelled": 1, "picked": start.name, "kind": start.kind,
             "score": "", "heldout_dice": dice(network, held_out, device), "seconds": round(time.time() - began, 1)}]
    for k in range(1, args.rounds + 1):
        began = time.time()
        score = ""
        if strategy == "uncertainty":
            enable_mc_dropout(network)
            scores = [
                mc_dropout_uncertainty(network, s.image, s.hu, (args.score_roi,) * 3, args.mc_samples, args.windows, device, seed=k).bald
                for s in unlabelled
            ]
            index = int(np.argmax(scores))
            score = round(scores[index], 6)
        else:
            index = rng.randrange(len(unlabelled))
        picked = unlabelled.pop(index)
        labelled.append(picked)  # the annotator's label is revealed
        loss = train(network, optimizer, loss_fn, labelled, args.epochs, device, rng)
        rows.append({"strategy": strategy, "repeat": repeat, "round": k, "labelled": len(labelled), "picked": picked.name,
                     "kind": picked.kind, "score": score, "heldout_dice": dice(network, held_out, device),
                     "seconds": round(time.time() - began, 1)})
        print(f"{strategy:11s} repeat {repeat} round {k}: picked {picked.name:12s} dice {rows[-1]['heldout_dice']:.4f} "
              f"loss {loss:.3f} ({rows[-1]['seconds']} s)", flush=True)
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy, colour in (("uncertainty", "tab:red"), ("random", "tab:blue")):
        mine = [r for r in rows if r["strategy"] == strategy]
        rounds = sorted({r["labelled"] for r in mine})
        curves = np.array([[r["heldout_dice"] for r in mine if r["labelled"] == n] for n in rounds])
        ax.plot(rounds, curves.mean(1), "-o", color=colour, label=f"{strategy} (mean of {curves.shape[1]})")
        ax.fill_between(rounds, curves.min(1), curves.max(1), color=colour, alpha=0.15)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("labelled studies")
    ax.set_ylabel("held-out mean Dice")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="small")
    parser.add_argument("--pixdim", type=float, default=10.0, help="mm; the bundle's lowres model is 3")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=25, help="passes over the labelled studies per round")
    parser.add_argument("--warmup-epochs", type=int, default=150, help="epochs on the first labelled study before round 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument("--windows", type=int, default=1)
    parser.add_argument("--score-roi", type=int, default=32, help="MC dropout window (the server's al_roi)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        start, pool, held_out = build_data(args.pixdim, Path(tmp))
    print(f"pool {len(pool)} ({', '.join(s.name for s in pool)}), held-out {len(held_out)}, "
          f"volumes {tuple(start.image.shape[1:])} at {args.pixdim} mm; data in {time.time() - began:.0f} s", flush=True)

    rows = []
    for repeat in range(args.repeats):
        for strategy in ("uncertainty", "random"):
            rows += run(strategy, repeat, start, pool, held_out, args, device)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"active_learning_{args.network}_{args.pixdim:g}mm_{device.type}"
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    title = (f"{args.network} SegResNet, {args.pixdim:g} mm, {args.epochs} epochs/round, "
             f"{len(pool)}-study pool, {len(held_out)} held out, {device.type}")
    plot(rows, args.out / f"{stem}.png", title)
    final = {s: np.mean([r["heldout_dice"] for r in rows if r["strategy"] == s and r["round"] == args.rounds]) for s in ("uncertainty", "random")}
    print(f"final held-out Dice after {args.rounds} rounds: {final}; total {time.time() - began:.0f} s; "
          f"wrote {args.out / stem}.csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
