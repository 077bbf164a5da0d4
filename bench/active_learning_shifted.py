"""Active learning where the literature says it can pay (issue 21): a pretrained model adapting to a new site.

``bench_active_learning.py --mode shifted`` runs this; the default mode is the cold-start study.

1. Source model: the bundle's SegResNet at a smaller width (``small``: 8 instead of 32 initial filters, the
   same blocks and 0.2 dropout, 105 channels) trained on source phantoms (portal-venous, full trunk, standard
   noise) for ``--source-steps`` (3000), cached; its held-out source Dice must then be at least ``--source-dice``
   (0.7), else the study stops and says so: selection on an untrained model measures noise.
2. Target site (bench/shifted_studies.py): a pool of 33 studies, half source-like, the rest in shifted
   subgroups at uneven prevalence, visible in the DICOM tags (arterial, low dose, thick slices, cut field of
   view) or hidden (a missing organ, metal, an enlarged liver or a lesion). Held out: 20 new target studies
   (at least 2 per subgroup) and 6 source studies, to measure forgetting.
3. Rounds: from the source model, no target label. Each round a strategy picks studies one at a time until
   the round's correction-cost budget is spent (``--budget`` times the median cost of a pool study under the
   source model), the annotator corrects them (their labels are revealed), and the model is fine-tuned the
   same way for every strategy (``--steps`` steps of Adam over the labelled target studies, seeded by pair
   and round). Cost: lib/corrections/cost.py on the correction record of the model's own prediction of the
   study (structures reviewed, structures edited, slices edited, weights stated in the output).
4. Strategies: ``random``; ``stratified_random`` (equal picks per group of the tags, what a careful lead
   does by hand); the server's ``diversity``, ``class_entropy``, ``uncertainty`` and
   ``diversity_then_class_entropy`` (lib/activelearning/selection.py, MC dropout of the round's model); and
   the noise-floor control ``random_reseeded`` (random with another training seed).
5. Paired seeds: in pair ``p`` every strategy starts from the same source model, fine-tunes with the same
   seeds and MC dropout masks; only the picks differ.

Metrics per strategy and pair: the area under target held-out Dice against cumulative cost (mean Dice over
[0, rounds x budget]; a structure predicted but absent counts 0), the cost to reach 90 % of the gain of
fine-tuning on the whole pool (same steps in all), the worst subgroup's final Dice, and forgetting (source
held-out Dice lost). The rule that decides the default strategy is RULE below, stated in
docs/active-learning.md before the run.

    $V/bin/python bench/bench_active_learning.py --mode shifted                       # CPU: 2 hours (119.6 min)
    $V/bin/python bench/bench_active_learning.py --mode shifted --pairs 1 --rounds 1 --steps 2 \\
        --source-steps 20 --source-dice 0 --out /tmp/al                              # the harness, a few minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "apps" / "wholebody")]

from bench_active_learning import NETWORKS, padded, shared_options, write_csv  # noqa: E402
from confident_checkpoint import present_dice_ce  # noqa: E402
from shifted_studies import SUBGROUPS, Study, source_studies, target_studies  # noqa: E402

from lib.acceleration import cpu_precision  # noqa: E402
from lib.activelearning.mc_dropout import enable_mc_dropout, mc_dropout_features, mc_dropout_uncertainty  # noqa: E402
from lib.activelearning.selection import class_entropy_pick, coverage_pick  # noqa: E402
from lib.corrections.cost import CostWeights, correction_cost  # noqa: E402
from lib.corrections.effort import effort  # noqa: E402
from lib.labels import wholebody_labels  # noqa: E402
from lib.phantom import REFERENCE_FOV_MM  # noqa: E402

CHANNELS = 105
NAMES = {v: k for k, v in wholebody_labels().items()}
IDENTITY = np.arange(256, dtype=np.int64)
BASELINE = "stratified_random"
CONTROL = "random_reseeded"
STRATEGIES = ("random", BASELINE, "diversity", "class_entropy", "uncertainty", "diversity_then_class_entropy", CONTROL)
RULE = {
    "baseline": BASELINE,
    "interval": "the 95 % t-interval of the paired gain in area (strategy minus stratified_random) is above 0",
    "wins": "the strategy's area is larger in at least 4 of 5 pairs (80 % of the pairs)",
    "subgroups": "no subgroup's final held-out Dice is lower than stratified_random's by more than 0.02 (mean over pairs)",
    "forgetting": "its mean forgetting (source held-out Dice lost) exceeds stratified_random's by at most 0.01",
    "else": "no strategy passes: stratified_random becomes the served default",
}
CACHE = Path(os.environ.get("WHOLEBODY_CACHE", Path.home() / ".cache" / "wholebody")) / "active-learning-source"


# --- the model and its figures


def predict(network: torch.nn.Module, study: Study, device) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        logits = network(padded(study.image)[None].to(device))[0]
    return logits.argmax(0)[tuple(slice(0, s) for s in study.label.shape)].cpu().numpy().astype(np.uint8)


def study_dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Mean Dice over the structures in the label or the prediction: one predicted but absent counts 0."""
    scores = []
    for value in sorted((set(np.unique(label).tolist()) | set(np.unique(pred).tolist())) - {0}):
        p, g = pred == value, label == value
        scores.append(2.0 * float((p & g).sum()) / float(p.sum() + g.sum()))
    return float(np.mean(scores)) if scores else 1.0


def evaluate(network, studies: list[Study], device) -> dict[str, float]:
    return {s.name: study_dice(predict(network, s, device), s.label.numpy()) for s in studies}


def figures(network, held_out: list[Study], source_test: list[Study], device) -> dict[str, float]:
    """Target held-out Dice (mean over studies), per subgroup, and the source held-out Dice."""
    dice = evaluate(network, held_out, device)
    out = {"heldout_dice": round(float(np.mean(list(dice.values()))), 5)}
    for subgroup in SUBGROUPS:
        out[f"dice_{subgroup}"] = round(float(np.mean([dice[s.name] for s in held_out if s.subgroup == subgroup])), 5)
    out["source_dice"] = round(float(np.mean(list(evaluate(network, source_test, device).values()))), 5)
    return out


def study_cost(network, study: Study, weights: CostWeights, device) -> dict[str, float]:
    """What correcting the model's prediction of ``study`` into its label costs."""
    record = effort(predict(network, study, device), study.label.numpy().astype(np.uint8), NAMES, IDENTITY)
    return correction_cost(record, weights)


def fine_tune(network, studies: list[Study], steps: int, seed: int, lr: float, device) -> float:
    """``steps`` steps of Adam (fresh each call), each on one study drawn at random; recipe 4 of
    bench/confident_checkpoint.py (cross-entropy plus Dice of the structures present), bfloat16 autocast on
    CPUs with the units. Seeded: paired runs differ only in what is labelled."""
    torch.manual_seed(seed)
    draw = random.Random(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    autocast = device.type == "cpu" and cpu_precision.bf16_units()
    network.train()
    loss = torch.zeros(())
    for _ in range(steps):
        study = draw.choice(studies)
        x = padded(study.image)[None].to(device)
        y = padded(study.label[None], mode="constant").to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = network(x)
        loss = present_dice_ce(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def source_model(args, sources: list[Study], source_test: list[Study], device) -> tuple[dict, float, int]:
    """(state dict, source held-out Dice, steps): trained for ``--source-steps`` in chunks of 100, the held-out
    source Dice printed after each, cached by the settings. All the steps, not just until ``--source-dice``: a
    model stopped as soon as it passes the bar is still learning, and then any fine-tuning helps it, whatever
    was picked."""
    settings = [2, args.network, args.pixdim, len(sources), args.source_steps, args.source_dice, args.source_lr]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]
    path = CACHE / f"source-{key}.pt"
    if path.exists():
        cached = torch.load(path, map_location="cpu")
        print(f"source model cached: {path} (held-out source Dice {cached['dice']:.3f} after {cached['steps']} steps)")
        return cached["state"], cached["dice"], cached["steps"]
    torch.manual_seed(0)
    network = NETWORKS[args.network]().to(device)
    steps, dice, began = 0, 0.0, time.time()
    while steps < args.source_steps:
        chunk = min(100, args.source_steps - steps)
        loss = fine_tune(network, sources, chunk, steps, args.source_lr, device)
        steps += chunk
        dice = float(np.mean(list(evaluate(network, source_test, device).values())))
        print(f"  source model step {steps}: loss {loss:.3f}, held-out source Dice {dice:.3f}, {time.time() - began:.0f} s", flush=True)
    state = {k: v.cpu() for k, v in network.state_dict().items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"state": state, "dice": dice, "steps": steps}, path)
    return state, dice, steps


# --- picking within a budget


class Round:
    """One round's picks by one strategy with the round's model: studies one at a time until the budget is
    spent (the last pick may overrun it; its whole cost counts)."""

    def __init__(self, strategy: str, network, labelled: list[Study], args, seed: int, device):
        self.strategy, self.network, self.args, self.seed, self.device = strategy, network, args, seed, device
        self.labelled = list(labelled)
        self.draw = random.Random(seed)
        self.roi = tuple(8 * math.ceil(fov / args.pixdim / 8) for fov in REFERENCE_FOV_MM)
        self.scores: dict[str, object] = {}

    def _score(self, study: Study):
        if study.name not in self.scores:
            enable_mc_dropout(self.network)
            self.scores[study.name] = mc_dropout_uncertainty(self.network, study.image, study.hu, self.roi, self.args.mc_samples, 1, self.device, self.seed)
        return self.scores[study.name]

    def _features(self, study: Study) -> np.ndarray:
        if study.name in self.scores:
            return self.scores[study.name].features.numpy()
        enable_mc_dropout(self.network)
        return mc_dropout_features(self.network, study.image, study.hu, self.roi, self.args.mc_samples, 1, self.device, self.seed).numpy()

    def pick(self, candidates: list[Study]) -> tuple[int, str]:
        """(index into ``candidates``, how it was picked)."""
        strategy = self.strategy
        if strategy == "diversity_then_class_entropy":
            strategy = "diversity" if len(self.labelled) < self.args.diversity_studies else "class_entropy"
        if strategy in ("random", CONTROL):
            return self.draw.randrange(len(candidates)), "random"
        if strategy == BASELINE:
            picked = {g: sum(1 for s in self.labelled if s.group == g) for g in {c.group for c in candidates}}
            fewest = min(picked.values())
            group = self.draw.choice(sorted(g for g, n in picked.items() if n == fewest))
            return self.draw.choice([i for i, c in enumerate(candidates) if c.group == group]), f"group {group}"
        scores = [self._score(c) for c in candidates]
        if strategy == "uncertainty":
            return int(np.argmax([s.bald for s in scores])), "uncertainty"
        if strategy == "diversity":
            known = np.stack([self._features(s) for s in self.labelled]) if self.labelled else np.zeros((0, len(scores[0].features)))
            return coverage_pick(known, torch.stack([s.features for s in scores]).numpy()), "diversity"
        labelled_voxels = sum((torch.bincount(s.label.flatten(), minlength=CHANNELS) for s in self.labelled), torch.zeros(CHANNELS, dtype=torch.long))
        found = class_entropy_pick(
            labelled_voxels.numpy(),
            torch.stack([s.structure_voxels for s in scores]).numpy(),
            torch.stack([s.structure_entropy for s in scores]).numpy(),
            len(self.labelled),
            self.args.gumbel,
            np.random.default_rng(self.seed),
        )
        if found is None:
            return self.draw.randrange(len(candidates)), "random (no structure predicted)"
        return found[0], f"class_entropy {NAMES.get(found[1], found[1])}"

    def spend(self, unlabelled: list[Study], budget: float, weights: CostWeights) -> list[tuple[Study, dict, str]]:
        picks, spent = [], 0.0
        while spent < budget and unlabelled:
            index, how = self.pick(unlabelled)
            study = unlabelled.pop(index)
            cost = study_cost(self.network, study, weights, self.device)
            spent += cost["seconds"]
            picks.append((study, cost, how))
            self.labelled.append(study)  # Next Sample after a save sees the saved label
        return picks


def run(strategy: str, pair: int, source: dict, start: dict, pool, held_out, source_test, budget: float, weights, args, device) -> list[dict]:
    network = NETWORKS[args.network]().to(device)
    network.load_state_dict(source)
    labelled, unlabelled, spent = [], list(pool), 0.0
    rows = [{"strategy": strategy, "repeat": pair, "round": 0, "labelled": 0, "cost": 0.0, **start, "picked": "", "seconds": 0.0}]
    for k in range(1, args.rounds + 1):
        began = time.time()
        seed = 1000 * pair + k
        picks = Round(strategy, network, labelled, args, seed, device).spend(unlabelled, budget, weights)
        labelled += [study for study, _, _ in picks]
        spent += sum(cost["seconds"] for _, cost, _ in picks)
        fine_tune(network, labelled, args.steps, seed + (500 if strategy == CONTROL else 0), args.lr, device)
        row = {"strategy": strategy, "repeat": pair, "round": k, "labelled": len(labelled), "cost": round(spent, 1),
               **figures(network, held_out, source_test, device),
               "picked": "; ".join(f"{s.name} ({how}, {cost['seconds']:g} s)" for s, cost, how in picks), "seconds": round(time.time() - began, 1)}
        rows.append(row)
        print(f"{strategy:28s} pair {pair} round {k}: +{len(picks)} studies, cost {spent:.0f} s, Dice {row['heldout_dice']:.4f}, "
              f"source {row['source_dice']:.4f} ({row['seconds']} s)", flush=True)
    return rows


# --- the figures of a run and the rule


def curve_area(xs, ys, end: float) -> float:
    """Mean of the piecewise-linear curve over [0, end]."""
    grid = np.linspace(0.0, end, 201)
    return float(np.mean(np.interp(grid, xs, ys)))


def cost_to_reach(xs, ys, level: float) -> float | None:
    """The first cumulative cost at which the curve reaches ``level`` (linear between rounds)."""
    for i in range(1, len(xs)):
        if ys[i] >= level:
            if ys[i - 1] >= level:
                return float(xs[i - 1])
            return float(xs[i - 1] + (level - ys[i - 1]) / (ys[i] - ys[i - 1]) * (xs[i] - xs[i - 1]))
    return None


def per_run(rows: list[dict], full_pool: dict[int, float], budget: float, args) -> list[dict]:
    table = []
    studies_end = min(r["labelled"] for r in rows if r["round"] == args.rounds)  # every run has labelled this many
    for (strategy, pair) in sorted({(r["strategy"], r["repeat"]) for r in rows}):
        curve = sorted((r for r in rows if (r["strategy"], r["repeat"]) == (strategy, pair)), key=lambda r: r["round"])
        xs, ys = [r["cost"] for r in curve], [r["heldout_dice"] for r in curve]
        start, last = curve[0], curve[-1]
        level = start["heldout_dice"] + 0.9 * (full_pool[pair] - start["heldout_dice"])
        reached = cost_to_reach(xs, ys, level)
        table.append({
            "strategy": strategy, "repeat": pair,
            "area_by_cost": round(curve_area(xs, ys, args.rounds * budget), 5),
            "area_by_studies": round(curve_area([r["labelled"] for r in curve], ys, studies_end), 5),
            "final_dice": last["heldout_dice"], "studies": last["labelled"], "cost": last["cost"],
            "cost_to_90pct_of_full_pool_gain": round(reached, 1) if reached is not None else "",
            "worst_subgroup_dice": min(last[f"dice_{s}"] for s in SUBGROUPS),
            "forgetting": round(start["source_dice"] - last["source_dice"], 5),
            **{f"dice_{s}": last[f"dice_{s}"] for s in SUBGROUPS},
        })
    return table


def decide(table: list[dict], pairs: int) -> dict:
    """RULE applied: each strategy's paired figures against stratified_random, and the chosen default."""
    from scipy import stats

    def of(strategy):
        return {r["repeat"]: r for r in table if r["strategy"] == strategy}

    base = of(BASELINE)
    verdicts = {}
    for strategy in STRATEGIES:
        mine = of(strategy)
        common = sorted(set(mine) & set(base))
        if strategy in (BASELINE, CONTROL) or len(common) < 2:
            continue
        gain = np.array([mine[p]["area_by_cost"] - base[p]["area_by_cost"] for p in common])
        half = float(stats.t.ppf(0.975, len(gain) - 1) * gain.std(ddof=1) / math.sqrt(len(gain)))
        subgroup_loss = {s: round(float(np.mean([mine[p][f"dice_{s}"] - base[p][f"dice_{s}"] for p in common])), 5) for s in SUBGROUPS}
        forgetting = float(np.mean([mine[p]["forgetting"] - base[p]["forgetting"] for p in common]))
        checks = {
            "interval": float(gain.mean()) - half > 0,
            "wins": int((gain > 0).sum()) >= math.ceil(0.8 * len(common)),
            "subgroups": min(subgroup_loss.values()) >= -0.02,
            "forgetting": forgetting <= 0.01,
        }
        verdicts[strategy] = {
            "gain_mean": round(float(gain.mean()), 5), "gain_95ci": [round(float(gain.mean()) - half, 5), round(float(gain.mean()) + half, 5)],
            "wins": f"{int((gain > 0).sum())}/{len(common)}", "subgroup_dice_minus_baseline": subgroup_loss,
            "forgetting_minus_baseline": round(forgetting, 5), "checks": checks, "passes": all(checks.values()),
        }
    passing = [s for s, v in verdicts.items() if v["passes"]]
    chosen = max(passing, key=lambda s: verdicts[s]["gain_mean"]) if passing else BASELINE
    control, random_runs = of(CONTROL), of("random")
    noise = [abs(control[p]["area_by_cost"] - random_runs[p]["area_by_cost"]) for p in control if p in random_runs]
    return {"rule": RULE, "verdicts": verdicts, "chosen": chosen, "pairs": pairs,
            "noise_floor_area": round(float(np.mean(noise)), 5) if noise else None}


def plot(rows: list[dict], table: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in rows)]
    colours = dict(zip(STRATEGIES, ["tab:blue", "black", "tab:green", "tab:orange", "tab:red", "tab:purple", "tab:gray"]))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        for pair in sorted({r["repeat"] for r in mine}):
            curve = sorted((r for r in mine if r["repeat"] == pair), key=lambda r: r["round"])
            label = strategy if pair == 0 else None
            axes[0].plot([r["cost"] / 60 for r in curve], [r["heldout_dice"] for r in curve], "-o", ms=2, lw=1, color=colours[strategy], label=label, alpha=0.7)
            axes[1].plot([r["labelled"] for r in curve], [r["heldout_dice"] for r in curve], "-o", ms=2, lw=1, color=colours[strategy], label=label, alpha=0.7)
    axes[0].set_xlabel("cumulative correction cost (minutes)")
    axes[1].set_xlabel("labelled studies")
    for ax in axes[:2]:
        ax.set_ylabel("target held-out Dice")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_title(title, fontsize=8)
    others = [s for s in strategies if s != BASELINE]
    for i, strategy in enumerate(others):
        base = {r["repeat"]: r["area_by_cost"] for r in table if r["strategy"] == BASELINE}
        d = [r["area_by_cost"] - base[r["repeat"]] for r in table if r["strategy"] == strategy and r["repeat"] in base]
        axes[2].scatter(np.full(len(d), i) + np.linspace(-0.15, 0.15, len(d)), d, color=colours[strategy], s=14)
        axes[2].plot([i - 0.25, i + 0.25], [np.mean(d)] * 2, color="black", lw=1)
    axes[2].axhline(0.0, color="black", lw=0.8)
    axes[2].set_xticks(range(len(others)), [s.replace("_then_", "_then\n") for s in others], fontsize=7, rotation=20)
    axes[2].set_ylabel("area by cost minus stratified_random's, same pair")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_active_learning.py --mode shifted", description=__doc__.splitlines()[0], parents=[shared_options()])
    parser.add_argument("--pixdim", type=float, default=6.0, help="mm")
    parser.add_argument("--sources", type=int, default=24, help="source studies the source model trains on")
    parser.add_argument("--source-steps", type=int, default=3000, help="steps of the source model")
    parser.add_argument("--source-dice", type=float, default=0.7, help="the held-out source Dice the source model must reach")
    parser.add_argument("--source-lr", type=float, default=1e-3)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0, help="a round's budget: this many times the median pool study's cost under the source model")
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps after each round")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args(argv)
    strategies = args.strategies.split(",")
    if set(strategies) - set(STRATEGIES) or BASELINE not in strategies:
        parser.error(f"strategies must include {BASELINE} and be among {STRATEGIES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    weights = CostWeights()

    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        sources = source_studies(args.sources, 1, args.pixdim, Path(tmp), "source")
        source_test = source_studies(6, 900, args.pixdim, Path(tmp), "source_test")
        pool = target_studies(args.pixdim, Path(tmp), held_out=False)
        held_out = target_studies(args.pixdim, Path(tmp), held_out=True)
    print(f"{len(sources)} source studies, {len(source_test)} source held out, pool {len(pool)}, target held out {len(held_out)}; "
          f"data in {time.time() - began:.0f} s", flush=True)

    source, source_dice, source_steps = source_model(args, sources, source_test, device)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"active_learning_shifted_{args.network}_{args.pixdim:g}mm_{device.type}"
    summary = {"source_dice": round(source_dice, 4), "source_steps": source_steps, "source_dice_needed": args.source_dice,
               "cost_weights_seconds": weights.describe(), "argv": sys.argv[1:]}
    if source_dice < args.source_dice:
        summary["stopped"] = f"the source model reached held-out Dice {source_dice:.3f} < {args.source_dice} in {source_steps} steps"
        (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
        print(summary["stopped"])
        return 1

    network = NETWORKS[args.network]().to(device)
    network.load_state_dict(source)
    start = figures(network, held_out, source_test, device)
    budget = args.budget * statistics.median(study_cost(network, s, weights, device)["seconds"] for s in pool)
    print(f"source model: {start}; round budget {budget:.0f} s ({weights.describe()})", flush=True)

    rows, full_pool = [], {}
    for pair in range(args.pairs):
        whole = NETWORKS[args.network]().to(device)
        whole.load_state_dict(source)
        fine_tune(whole, pool, args.rounds * args.steps, 1000 * pair + 999, args.lr, device)
        full_pool[pair] = figures(whole, held_out, source_test, device)["heldout_dice"]
        print(f"pair {pair}: the whole pool ({args.rounds * args.steps} steps) gives held-out Dice {full_pool[pair]:.4f}", flush=True)
        for strategy in strategies:
            rows += run(strategy, pair, source, start, pool, held_out, source_test, budget, weights, args, device)
        table = per_run(rows, full_pool, budget, args)
        write_csv(args.out / f"{stem}.csv", rows)
        write_csv(args.out / f"{stem}_runs.csv", table)
    decision = decide(table, args.pairs)
    summary.update({"round_budget_seconds": round(budget, 1), "start": start, "full_pool_dice": full_pool, **decision,
                    "minutes": round((time.time() - began) / 60, 1)})
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    plot(rows, table, args.out / f"{stem}.png", f"{args.network} SegResNet, {args.pixdim:g} mm, budget {budget:.0f} s x {args.rounds} rounds, {args.pairs} pairs")
    print(json.dumps(decision["verdicts"], indent=1))
    print(f"chosen by the rule: {decision['chosen']}; noise floor (|random - random_reseeded| area) {decision['noise_floor_area']}")
    print(f"total {time.time() - began:.0f} s; wrote {args.out / stem}.csv, _runs.csv, .json and .png")
    return 0
