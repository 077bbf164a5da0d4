"""Simulated annotation study: which next-sample strategy teaches the model most per labelled study?

Two modes. ``--mode cold-start`` (the default, below): a model trained from random weights on the first
label. ``--mode shifted``: a pretrained model adapting to a new site, with correction cost as the budget
(bench/active_learning_shifted.py, its own options).

A pool of studies whose labels are known but hidden (phantoms from ``lib.phantom`` of varied
anatomy, contrast and field of view, and the shared real CT with its TotalSegmentator labels
mapped to the bundle's channels by name), a held-out set drawn like the pool, and for each
strategy

    start from one labelled study -> K rounds of: pick the next study by the strategy ->
    reveal its label -> train (fine-tune) -> Dice on the held-out set

The strategies are the server's (``lib/activelearning/selection.py`` and ``mc_dropout.py``, with
the model of that round): ``uncertainty``, ``diversity``, ``class_entropy``,
``diversity_then_class_entropy``; and two baselines, ``random`` and ``foreground_random`` (at
random among the half of the candidates with the most predicted foreground).

Paired: in pair ``p`` every strategy starts from the same study (one per pair), the same
warmed-up model, and the same seeds for each round's training and noise; only the picks differ.
The summary is the area under each curve (mean held-out Dice over 1..K+1 labelled studies,
trapezoids) per strategy and pair, and its paired difference to ``random`` and to
``foreground_random``: mean, spread and wins. Writes a CSV of every round
(``strategy, repeat, labelled, heldout_dice, ...``), a CSV of the areas and a PNG. Not CI.

    nice -n 19 $V/bin/python bench/bench_active_learning.py --threads 1            # CPU: 95 min here with other jobs
    $V/bin/python bench/bench_active_learning.py --pairs 1 --pool 6 --held-out 2 --rounds 2 \\
        --warmup-steps 4 --steps 2 --out /tmp/al                                    # the harness, ~1 min
    $V/bin/python bench/bench_active_learning.py --network bundle --pixdim 3 --device cuda --lr 1e-4

``--network small`` is the bundle's SegResNet with 8 instead of 32 initial filters (same blocks,
same 0.2 dropout, 105 channels), so that a study runs on a 2-core CPU in hours; ``bundle`` is the
served network itself.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
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

from bench_inference import to_channels  # noqa: E402  (bench/ is the script's own folder)
from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.nets import SegResNet  # noqa: E402
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, Spacing  # noqa: E402

from lib.activelearning.mc_dropout import enable_mc_dropout, mc_dropout_features, mc_dropout_uncertainty  # noqa: E402
from lib.activelearning.scoring import load_study  # noqa: E402
from lib.activelearning.selection import class_entropy_pick, coverage_pick  # noqa: E402
from lib.labels import wholebody_labels  # noqa: E402
from lib.networks import wholebody_segresnet  # noqa: E402
from lib.phantom import REFERENCE_FOV_MM, make_phantom, ras_affine  # noqa: E402

CHANNELS = 105
NAMES = {v: k for k, v in wholebody_labels().items()}
STRATEGIES = ("random", "foreground_random", "uncertainty", "diversity", "class_entropy", "diversity_then_class_entropy")
# What a plain run compares: ``uncertainty`` lost to ``random`` in the earlier study (README), so it
# is left out to keep the run within ~2.5 hours on a shared 2-core CPU (``--strategies`` adds it).
DEFAULT_STRATEGIES = tuple(s for s in STRATEGIES if s != "uncertainty")
BASELINES = ("random", "foreground_random")
COLOURS = {
    "random": "tab:blue", "foreground_random": "tab:cyan", "uncertainty": "tab:red", "diversity": "tab:green",
    "class_entropy": "tab:orange", "diversity_then_class_entropy": "tab:purple",
}
# Fields of view of the phantoms: z range kept, as fractions of the trunk (0 = inferior).
FIELDS_OF_VIEW = {"trunk": (0.0, 1.0), "chest": (0.4, 1.0), "abdomen": (0.0, 0.6)}


@dataclass
class Study:
    name: str
    kind: str  # "phantom", "contrast" (arterial phase) or "real"
    fov: str
    image: torch.Tensor  # (1, X, Y, Z) network input
    hu: torch.Tensor  # (1, X, Y, Z)
    label: torch.Tensor  # (X, Y, Z) int64 bundle channels


def small_segresnet() -> SegResNet:
    return SegResNet(
        spatial_dims=3, in_channels=1, out_channels=CHANNELS, init_filters=8,
        blocks_down=[1, 2, 2, 4], blocks_up=[1, 1, 1], dropout_prob=0.2,
    )


NETWORKS = {"small": small_segresnet, "bundle": wholebody_segresnet}


def phantom_study(name: str, seed: int, pixdim: float, tmp: Path) -> Study:
    """A phantom whose anatomy variation (0.1..1), contrast (3 in 10) and field of view (half the
    trunk, a quarter chest, a quarter abdomen) are drawn from ``seed``."""
    draw = np.random.default_rng(seed)
    variation = float(draw.uniform(0.1, 1.0))
    contrast = bool(draw.random() < 0.3)
    fov = str(draw.choice(list(FIELDS_OF_VIEW), p=[0.5, 0.25, 0.25]))
    shape = tuple(int(round(fov_mm / pixdim)) for fov_mm in REFERENCE_FOV_MM)
    phantom = make_phantom(shape, (pixdim,) * 3, seed=seed, variation=variation, contrast=contrast)
    low, high = FIELDS_OF_VIEW[fov]
    z = slice(int(round(low * shape[2])), int(round(high * shape[2])))
    image, label = phantom.image[..., z], phantom.label[..., z]
    path = tmp / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image, ras_affine(image.shape, (pixdim,) * 3)), str(path))
    net_input, hu = load_study(str(path), (pixdim,) * 3)
    assert net_input.shape[1:] == label.shape, (net_input.shape, label.shape)
    return Study(name, "contrast" if contrast else "phantom", fov, net_input, hu, torch.as_tensor(label, dtype=torch.long))


def real_ct_study(pixdim: float) -> Study:
    """The shared CT; its TotalSegmentator v2 labels become bundle channels by name (others: 0)."""
    image, hu = load_study(str(SHARED / "ct" / "example_ct_sm.nii.gz"), (pixdim,) * 3)
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS"), Spacing(pixdim=(pixdim,) * 3, mode="nearest")])
    label = load(str(SHARED / "ct" / "example_ct_sm_totalseg_v2.nii.gz"))[0].numpy().round().astype(np.int64)
    assert label.shape == tuple(image.shape[1:]), (label.shape, image.shape)
    return Study("real_ct", "real", "abdomen", image, hu, torch.as_tensor(to_channels(label)))


def build_data(pixdim: float, pool_size: int, held_out_size: int, tmp: Path) -> tuple[list[Study], list[Study]]:
    """(pool, held-out): the real CT and ``pool_size - 1`` phantoms; held-out phantoms drawn alike."""
    pool = [real_ct_study(pixdim)] + [phantom_study(f"pool{s:02d}", s, pixdim, tmp) for s in range(1, pool_size)]
    held_out = [phantom_study(f"test{s}", 500 + s, pixdim, tmp) for s in range(held_out_size)]
    return pool, held_out


def padded(t: torch.Tensor, multiple: int = 8, mode: str = "replicate") -> torch.Tensor:
    """(C, X, Y, Z) padded at the end of each spatial dim to a multiple of ``multiple``."""
    pad = []
    for size in reversed(t.shape[1:]):
        pad += [0, (-size) % multiple]
    if mode == "replicate":
        return F.pad(t[None].float(), pad, mode="replicate")[0]
    return F.pad(t, pad, mode="constant", value=0)


def train(model: "Model", studies: list[Study], steps: int, seed: int, device) -> float:
    """``steps`` steps, each on one labelled study drawn at random; seeded, so paired runs differ
    only in what is labelled."""
    torch.manual_seed(seed)
    draw = random.Random(seed)
    model.network.train()
    last = 0.0
    for _ in range(steps):
        study = draw.choice(studies)
        x = padded(study.image)[None].to(device)
        y = padded(study.label[None], mode="constant")[None].to(device)
        loss = model.loss(model.network(x), y)
        model.optimizer.zero_grad()
        loss.backward()
        model.optimizer.step()
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


@dataclass
class Model:
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: torch.nn.Module


def new_model(args, device) -> Model:
    network = NETWORKS[args.network]().to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=args.lr, weight_decay=1e-5)
    return Model(network, optimizer, DiceCELoss(to_onehot_y=True, softmax=True))


def score_roi(pixdim: float) -> tuple[int, ...]:
    """One window that holds a whole study (the reference field of view, up to a multiple of 8)."""
    return tuple(8 * math.ceil(fov / pixdim / 8) for fov in REFERENCE_FOV_MM)


class Picker:
    """One strategy's choice among the unlabelled studies, with the model of the round."""

    def __init__(self, strategy: str, args, device):
        self.strategy, self.args, self.device = strategy, args, device
        self.roi = score_roi(args.pixdim)

    def scores(self, network, studies: list[Study], seed: int) -> list:
        enable_mc_dropout(network)
        return [mc_dropout_uncertainty(network, s.image, s.hu, self.roi, self.args.mc_samples, 1, self.device, seed) for s in studies]

    def __call__(self, network, labelled: list[Study], unlabelled: list[Study], seed: int, scored: list | None) -> tuple[int, dict]:
        """(index into ``unlabelled``, what to record). ``scored``: the candidates' scores when
        already computed with this model and seed (round 1 of a pair: the same for all)."""
        strategy = self.strategy
        if strategy == "diversity_then_class_entropy":
            strategy = "diversity" if len(labelled) < self.args.diversity_studies else "class_entropy"
        draw = random.Random(seed)
        if strategy == "random":
            return draw.randrange(len(unlabelled)), {}
        scores = scored if scored is not None else self.scores(network, unlabelled, seed)
        if strategy == "foreground_random":
            foreground = np.array([float(u.structure_voxels[1:].sum()) for u in scores])
            top = np.argsort(-foreground, kind="stable")[: math.ceil(len(scores) / 2)]
            index = int(top[draw.randrange(len(top))])
            return index, {"score": foreground[index]}
        if strategy == "uncertainty":
            index = int(np.argmax([u.bald for u in scores]))
            return index, {"score": scores[index].bald}
        if strategy == "diversity":
            known = torch.stack([mc_dropout_features(network, s.image, s.hu, self.roi, self.args.mc_samples, 1, self.device, seed) for s in labelled])
            index = coverage_pick(known.numpy(), torch.stack([u.features for u in scores]).numpy())
            return index, {"by": "diversity"}
        # class_entropy: the structure with the fewest labelled voxels, by its score + decaying noise
        labelled_voxels = sum(torch.bincount(s.label.flatten(), minlength=CHANNELS) for s in labelled).numpy()
        picked = class_entropy_pick(
            labelled_voxels,
            torch.stack([u.structure_voxels for u in scores]).numpy(),
            torch.stack([u.structure_entropy for u in scores]).numpy(),
            len(labelled),
            self.args.gumbel,
            np.random.default_rng(seed),
        )
        if picked is None:
            return draw.randrange(len(unlabelled)), {"by": "random"}
        index, target = picked
        return index, {"score": float(scores[index].structure_entropy[target]), "target": NAMES.get(target, target), "by": "class_entropy"}



def run(strategy: str, pair: int, start: Study, warm: Model, warm_dice: float, first_scores: list, pool: list[Study], held_out: list[Study], args, device) -> list[dict]:
    model = copy.deepcopy(warm)
    picker = Picker(strategy, args, device)
    labelled, unlabelled = [start], [s for s in pool if s is not start]
    rows = [{"strategy": strategy, "repeat": pair, "round": 0, "labelled": 1, "picked": start.name, "kind": start.kind,
             "fov": start.fov, "by": "start", "target": "", "score": "", "heldout_dice": warm_dice, "seconds": 0.0}]
    for k in range(1, args.rounds + 1):
        began = time.time()
        seed = 1000 * pair + k
        index, record = picker(model.network, labelled, unlabelled, seed, first_scores if k == 1 else None)
        picked = unlabelled.pop(index)
        labelled.append(picked)  # the annotator's label is revealed
        loss = train(model, labelled, args.steps, seed, device)
        rows.append({"strategy": strategy, "repeat": pair, "round": k, "labelled": len(labelled), "picked": picked.name,
                     "kind": picked.kind, "fov": picked.fov, "by": record.get("by", strategy), "target": record.get("target", ""),
                     "score": round(float(record["score"]), 6) if "score" in record else "",
                     "heldout_dice": dice(model.network, held_out, device), "seconds": round(time.time() - began, 1)})
        print(f"{strategy:28s} pair {pair} round {k}: {picked.name:8s} ({picked.kind}, {picked.fov}{', ' + str(record['target']) if record.get('target') else ''}) "
              f"dice {rows[-1]['heldout_dice']:.4f} loss {loss:.3f} ({rows[-1]['seconds']} s)", flush=True)
    return rows


def area(curve: list[dict]) -> float:
    """Mean held-out Dice under the curve over the labelled studies (trapezoids)."""
    curve = sorted(curve, key=lambda r: r["labelled"])
    x = np.array([r["labelled"] for r in curve], dtype=float)
    y = np.array([r["heldout_dice"] for r in curve], dtype=float)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def areas(rows: list[dict]) -> list[dict]:
    """Per strategy and pair: the area, and its paired difference to each baseline."""
    by = {}
    for r in rows:
        by.setdefault((r["strategy"], r["repeat"]), []).append(r)
    out = []
    for (strategy, pair), curve in sorted(by.items()):
        row = {"strategy": strategy, "repeat": pair, "area": round(area(curve), 5), "final_dice": round(max(curve, key=lambda r: r["labelled"])["heldout_dice"], 5)}
        for baseline in BASELINES:
            if (baseline, pair) in by:
                row[f"minus_{baseline}"] = round(area(curve) - area(by[(baseline, pair)]), 5)
        out.append(row)
    return out


def summary(table: list[dict], strategies: list[str]) -> str:
    lines = ["| strategy | mean area | " + " | ".join(f"minus {b}: mean ± sd (min, max) | wins" for b in BASELINES) + " |",
             "| --- | --- | " + " | ".join("--- | ---" for _ in BASELINES) + " |"]
    for strategy in strategies:
        mine = [r for r in table if r["strategy"] == strategy]
        cells = [f"`{strategy}`", f"{np.mean([r['area'] for r in mine]):.4f}"]
        for b in BASELINES:
            d = np.array([r[f"minus_{b}"] for r in mine if f"minus_{b}" in r])
            if strategy == b or not len(d):
                cells += ["", ""]
                continue
            cells += [f"{d.mean():+.5f} ± {d.std(ddof=1) if len(d) > 1 else 0:.5f} ({d.min():+.5f}, {d.max():+.5f})", f"{int((d > 0).sum())}/{len(d)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], table: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in rows)]
    fig, (curves_ax, diff_ax) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        counts = sorted({r["labelled"] for r in mine})
        curves = np.array([[r["heldout_dice"] for r in mine if r["labelled"] == n] for n in counts])
        colour = COLOURS.get(strategy)
        curves_ax.plot(counts, curves.mean(1), "-o", ms=3, color=colour, label=f"{strategy} (mean of {curves.shape[1]})")
        curves_ax.fill_between(counts, curves.min(1), curves.max(1), color=colour, alpha=0.08)
    curves_ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    curves_ax.set_xlabel("labelled studies")
    curves_ax.set_ylabel("held-out mean Dice")
    curves_ax.set_title(title, fontsize=8)
    curves_ax.grid(alpha=0.3)
    curves_ax.legend(fontsize=7)

    others = [s for s in strategies if s != "random"]
    for i, strategy in enumerate(others):
        d = [r["minus_random"] for r in table if r["strategy"] == strategy and "minus_random" in r]
        diff_ax.scatter(np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), d, color=COLOURS.get(strategy), s=14)
        diff_ax.plot([i - 0.25, i + 0.25], [np.mean(d)] * 2, color="black", lw=1)
    diff_ax.axhline(0.0, color="tab:blue", lw=1)
    diff_ax.set_xticks(range(len(others)), [s.replace("_then_", "_then\n") for s in others], fontsize=7, rotation=20)
    diff_ax.set_ylabel("area minus random's, same pair")
    diff_ax.set_title("paired differences (dots: pairs, bar: mean)", fontsize=8)
    diff_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def shared_options() -> argparse.ArgumentParser:
    """The options both modes take: the strategies' settings, where it runs and where it writes."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--network", choices=sorted(NETWORKS), default="small", help="small: 8 initial filters (CPU); bundle: the served network (GPU)")
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument("--gumbel", type=float, default=1.0, help="class_entropy noise scale with one labelled study (al_gumbel_scale)")
    parser.add_argument("--diversity-studies", type=int, default=3, help="diversity_then_class_entropy: diversity below this many labelled")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return parser


def main() -> int:
    modes = argparse.ArgumentParser(add_help=False)
    modes.add_argument("--mode", choices=("cold-start", "shifted"), default="cold-start")
    mode, rest = modes.parse_known_args()
    if mode.mode == "shifted":
        import active_learning_shifted

        return active_learning_shifted.main(rest)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[modes, shared_options()])
    parser.add_argument("--pixdim", type=float, default=10.0, help="mm; the bundle's lowres model is 3")
    parser.add_argument("--pool", type=int, default=20, help="studies in the pool (the real CT and phantoms)")
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=5, help="paired seeds")
    parser.add_argument("--rounds", type=int, default=5, help="studies labelled after the first")
    parser.add_argument("--warmup-steps", type=int, default=100, help="training steps on the first study")
    parser.add_argument("--steps", type=int, default=30, help="training steps after each new label")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    args = parser.parse_args(rest)
    strategies = args.strategies.split(",")
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or "random" not in strategies:
        parser.error(f"strategies must include random and be among {STRATEGIES}; unknown: {sorted(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        pool, held_out = build_data(args.pixdim, args.pool, args.held_out, Path(tmp))
    describe = lambda studies: ", ".join(f"{k} {sum(1 for s in studies if f'{s.kind} {s.fov}' == k)}" for k in sorted({f"{s.kind} {s.fov}" for s in studies}))  # noqa: E731
    print(f"pool {len(pool)} ({describe(pool)}); held-out {len(held_out)} ({describe(held_out)}); "
          f"data in {time.time() - began:.0f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"active_learning_{args.network}_{args.pixdim:g}mm_{device.type}"
    title = (f"{args.network} SegResNet, {args.pixdim:g} mm, {args.warmup_steps}+{args.steps} steps/round, "
             f"pool {len(pool)}, {len(held_out)} held out, {args.pairs} pairs, {device.type}")
    rows: list[dict] = []
    starts = random.Random(0).sample(pool, args.pairs)  # a different first study for each pair
    for pair, start in enumerate(starts):
        torch.manual_seed(pair)
        warm = new_model(args, device)  # the model the server starts with: trained on the first label
        train(warm, [start], args.warmup_steps, 1000 * pair, device)
        warm_dice = dice(warm.network, held_out, device)
        unlabelled = [s for s in pool if s is not start]
        first_scores = Picker("uncertainty", args, device).scores(warm.network, unlabelled, 1000 * pair + 1)
        print(f"pair {pair}: start {start.name} ({start.kind}, {start.fov}), dice {warm_dice:.4f}, "
              f"{time.time() - began:.0f} s", flush=True)
        for strategy in strategies:
            rows += run(strategy, pair, start, warm, warm_dice, first_scores, pool, held_out, args, device)
        table = areas(rows)
        write_csv(args.out / f"{stem}.csv", rows)
        write_csv(args.out / f"{stem}_area.csv", table)
        print(summary(table, strategies), flush=True)

    plot(rows, table, args.out / f"{stem}.png", title)
    print(f"total {time.time() - began:.0f} s; wrote {args.out / stem}.csv, _area.csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
