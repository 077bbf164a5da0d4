"""``python -m lib.batch`` (from apps/wholebody): segment every study of a folder or a DICOMweb PACS on Ray.

    python -m lib.batch --studies DIR|DICOMWEB_URL --out DIR [--to-pacs [--rtstruct]] [--ray-address ADDR]
                        [--highres | --lowres] [--actors N] [--device auto|cpu|cuda] ...

Labels go to ``OUT/labels/<study>.nii.gz`` (``/infer``'s labels for the same study, checkpoint and params),
their measurements to ``OUT/measurements.csv`` (one row per study and structure), the record of each study
to ``OUT/manifest.jsonl``; a rerun skips what is done (and what failed for
good: unreadable, not a CT; failures with the PACS are retried). Exit status: 0 when every
study is done, 1 when some failed (their reasons are in the manifest), 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import os
import sys

from lib.acceleration import cpu_precision
from lib.batch.model import BatchError
from lib.batch.pipeline import APP_DIR, Resources, run
from lib.batch.sources import open_studies
from lib.conf import ConfError
from lib.pipelines.wholebody import CPU_PRECISION
from lib.transforms import body_mask


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wholebody", choices=["wholebody"], help="the model (default wholebody)")
    p.add_argument("--studies", required=True, help="a folder of CT files / DICOM series folders, or a DICOMweb URL")
    p.add_argument("--out", required=True, help="output folder: labels/, manifest.jsonl")
    p.add_argument("--to-pacs", action="store_true", help="store each result as DICOM SEG, with its measurement report (SR), in the PACS the series came from")
    p.add_argument("--rtstruct", action="store_true", help="with --to-pacs: also store an RT Structure Set beside each SEG")
    p.add_argument("--ray-address", help="an existing Ray cluster (e.g. ray://head:10001 or head:6379); default: Ray on this machine")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--highres", dest="highres", action="store_true", default=True, help="1.5 mm model.pt (default)")
    res.add_argument("--lowres", dest="highres", action="store_false", help="3 mm model_lowres.pt")
    p.add_argument("--model-dir", default=os.path.join(APP_DIR, "model"), help="where the server keeps its weights (default apps/wholebody/model)")
    p.add_argument("--checkpoint", help="this checkpoint file instead of the one the server would use")
    p.add_argument("--sw-overlap", type=float, help="sliding-window overlap (as the /infer param sw_overlap; default 0.25)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="as --conf channels_last false on the server")
    p.add_argument("--precision", default=CPU_PRECISION, choices=cpu_precision.PRECISIONS,
                   help=f"on a CPU: as --conf cpu_precision on the server (default {CPU_PRECISION}; bf16 only where the CPU has bfloat16 units, else fp32)")
    p.add_argument("--skip-air", action=argparse.BooleanOptionalAction, default=body_mask.SKIP_AIR,
                   help=f"as --conf skip_air on the server: windows holding no body voxel are not run (default {str(body_mask.SKIP_AIR).lower()})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when the cluster has GPUs")
    p.add_argument("--actors", type=int, help="network actors (default: one per GPU, else 1)")
    p.add_argument("--actor-cpus", type=int, default=1, help="CPUs each network actor reserves (default 1)")
    p.add_argument("--actor-threads", type=int, help="torch threads of a network actor (default: local Ray, the threads /infer uses here shared among the actors; a cluster, --actor-cpus)")
    p.add_argument("--cpus", type=int, help="local Ray: CPUs to use (default all)")
    p.add_argument("--object-store-mb", type=int, help="local Ray: object store size (default Ray's: 30%% of memory)")
    p.add_argument("--retry-failed", action="store_true", help="also retry studies that failed for good (unreadable, not a CT) before")
    p.add_argument("--credentials", help="DICOMweb: file with one line user:password (default: MONAI_LABEL_DICOMWEB_USERNAME/_PASSWORD)")
    p.add_argument("--cache", help="DICOMweb: where series are downloaded (default OUT/dicomweb)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.sw_overlap is not None and not 0.0 <= args.sw_overlap < 1.0:
        parser().error("--sw-overlap must be in [0, 1)")
    for name in ("actors", "actor_cpus", "actor_threads", "cpus", "object_store_mb"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser().error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        source = open_studies(args.studies, args.cache or os.path.join(args.out, "dicomweb"), args.credentials)
        summary = run(
            source,
            args.out,
            args.model_dir,
            args.highres,
            Resources(args.ray_address, args.cpus, args.object_store_mb, args.device, args.actors, args.actor_cpus, args.actor_threads),
            checkpoint=args.checkpoint,
            to_pacs=args.to_pacs,
            rtstruct=args.rtstruct,
            overlap=args.sw_overlap,
            channels_last=args.channels_last,
            precision=args.precision,
            skip_air=args.skip_air,
            retry_failed=args.retry_failed,
        )
    except (BatchError, ConfError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
