"""What one study's active learning record costs, against the MC dropout passes it is made of.

Reference: ``T`` passes of the served network (``wholebody_segresnet``) over one window, nothing
else: the floor of any MC dropout score. Measured, on the same window, the same masks:

* ``score before``: ``mc_dropout_uncertainty`` as it was at ``--before`` (git), BALD alone;
* ``score``: :func:`mc_dropout_uncertainty`, the record of an unlabelled study (BALD, the entropy
  of each of the 104 structures, the pooled encoder features);
* ``features``: :func:`mc_dropout_features`, the record of a labelled study (encoder alone).

Prints each one's median time over ``--repeats`` interleaved runs and its ratio to the reference,
and whether the BALD scores before and now agree.

    $V/bin/python bench/bench_active_learning_cost.py --threads 1          # CPU: ~4 min here
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "apps" / "wholebody")]

from revisions import module_at  # noqa: E402

from lib.activelearning.mc_dropout import enable_mc_dropout, mc_dropout_features, mc_dropout_uncertainty  # noqa: E402
from lib.networks import wholebody_segresnet  # noqa: E402
from lib.phantom import make_phantom  # noqa: E402

MODULE = "apps/wholebody/lib/activelearning/mc_dropout.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--roi", type=int, default=64, help="window edge at 3 mm (the server's al_roi)")
    parser.add_argument("--mc-samples", type=int, default=4, help="the server's al_mc_samples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="a8d440d", help="git commit of the BALD-only score")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    network = enable_mc_dropout(wholebody_segresnet().to(device))
    phantom = make_phantom((args.roi,) * 3, (3.0,) * 3, seed=1, variation=0.5)
    hu = torch.as_tensor(phantom.image, dtype=torch.float32)[None]
    image = (hu - hu.mean()) / hu.std()
    roi = (args.roi,) * 3

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def reference():
        torch.manual_seed(0)
        x = image[None].to(device)
        for _ in range(args.mc_samples):
            network(x)

    before = module_at(args.before, MODULE, "mc_dropout_before")
    runs = {
        "reference (passes alone)": reference,
        f"score before ({args.before})": lambda: before.mc_dropout_uncertainty(network, image, hu, roi, args.mc_samples, 1, device),
        "score (unlabelled study)": lambda: mc_dropout_uncertainty(network, image, hu, roi, args.mc_samples, 1, device),
        "features (labelled study)": lambda: mc_dropout_features(network, image, hu, roi, args.mc_samples, 1, device),
    }
    for run in runs.values():  # warm-up: allocator, kernels
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            sync()
            began = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - began)

    base = statistics.median(times["reference (passes alone)"])
    print(f"wholebody SegResNet, {args.mc_samples} passes over {args.roi}^3 at 3 mm, {device.type}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}:")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"  {name:28s} {median:7.2f} s   {median / base:5.2f}x the reference   (runs: {', '.join(f'{t:.2f}' for t in measured)})")
    old, new = runs[f"score before ({args.before})"](), runs["score (unlabelled study)"]()
    print(f"BALD before {old.bald:.8f}, now {new.bald:.8f}; entropy before {old.entropy:.6f}, now {new.entropy:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
