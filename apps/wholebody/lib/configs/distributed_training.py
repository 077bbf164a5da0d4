"""One rank of a training job over processes and nodes, as each torchrun process runs it (docs/training.md):

    PYTHONPATH=apps/wholebody torchrun --nnodes 2 --node_rank R --nproc_per_node 4 \\
        --rdzv_backend c10d --rdzv_endpoint HOST:29400 \\
        -m lib.configs.distributed_training --model wholebody --studies DIR --model-dir DIR --lowres

Every process builds the model's config and trainer as the server does (the same ``--conf`` options), opens
the same studies (a folder every node mounts at the same path, or the PACS) and calls the trainer, which under
torchrun trains its own rank (lib/trainers/distributed.py). It lives among the configs because it builds
them (trainers may not import configs). The server's ``multi_gpu`` training option starts it on one node
with the server's studies and options, which MONAI Label hands its task processes in the environment
(``MONAI_LABEL_STUDIES``, ``MONAI_LABEL_APP_CONF``); the arguments here override them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from monailabel.config import settings

import lib.configs
from lib.conf import Conf, ConfError
from lib.datastore.local import CheckedLocalDatastore
from lib.trainers.distributed import TorchrunLaunch, torchrun_world
from lib.weights.checkpoints import write_training_checkpoints_atomically

APP_DIR = Path(__file__).resolve().parents[2]
# The trainers that train as torchrun ranks.
MODELS = ("wholebody", "spleen")


def torchrun_launch(model: str, options: Conf) -> TorchrunLaunch:
    """How the server's ``multi_gpu`` training of ``model`` runs this module under torchrun on its own node."""
    # On a machine without CUDA, Gloo processes (each with its share of the cores); 1: no torchrun job.
    return TorchrunLaunch(entry=("-m", __name__, "--model", model), cpu_processes=options.int("cpu_train_processes", 1, minimum=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="torchrun [torchrun options] -m lib.configs.distributed_training",
        description="Train wholebody or spleen on the labelled studies, one rank per torchrun process; rank 0 publishes "
        "the checkpoint where the server's infer task reads it.",
    )
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument(
        "--studies",
        default=settings.MONAI_LABEL_STUDIES or None,
        help="the server's studies: a folder (labels in labels/final) at the same path on every node, or a DICOMweb URL",
    )
    parser.add_argument("--model-dir", help="the server's model_dir (default: its --conf model_dir, else apps/wholebody/model)")
    parser.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="a server --conf option")
    parser.add_argument("--max-epochs", help="request param max_epochs")
    parser.add_argument("--lowres", action="store_true", help="wholebody: train the 3 mm model (request param highres=false)")
    parser.add_argument("--request", default="{}", help="training request params as JSON, as POST /train/{model} takes them")
    args = parser.parse_args(argv)
    if not args.studies:
        parser.error("--studies is required (or MONAI_LABEL_STUDIES in the environment)")
    return args


def request_of(args: argparse.Namespace) -> dict:
    try:
        request = json.loads(args.request)
    except json.JSONDecodeError as e:
        raise ConfError(f"--request must be a JSON object: {e}") from e
    if not isinstance(request, dict):
        raise ConfError(f"--request must be a JSON object, got {args.request!r:.80}")
    if args.max_epochs is not None:
        request["max_epochs"] = args.max_epochs
    if args.lowres:
        request["highres"] = False
    return {**request, "model": args.model}


def open_studies(studies: str, options: Conf, labels: dict[str, int], model: str):
    """The datastore the server opens on ``studies``."""
    if studies.startswith(("http://", "https://")):
        from lib.pacs import setup as pacs_setup

        return pacs_setup.create(studies, options, {model: labels}, "distributed-training")
    return CheckedLocalDatastore(studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT, auto_reload=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world = torchrun_world()
    logging.basicConfig(
        level=logging.INFO,
        format=f"[%(asctime)s] [rank {world.rank if world else 0}] [%(levelname)s] (%(name)s) - %(message)s",
    )
    # The ranks never download official weights (every process of every node would): the server does, or
    # the files are put in model_dir by hand; without them training starts from the seeded fresh network.
    given = {**settings.MONAI_LABEL_APP_CONF, **dict(args.conf), "download_weights": "false"}
    if args.model_dir:
        given["model_dir"] = args.model_dir
    options = Conf(given)
    try:
        model_dir = options.path("model_dir", str(APP_DIR / "model"))
        config = lib.configs.CONFIGS[args.model]()
        config.init(args.model, model_dir, given, None)
        trainers = config.trainer()
        trainer = trainers[args.model] if isinstance(trainers, dict) else trainers
        request = trainer.checked_params(request_of(args))
    except ConfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_training_checkpoints_atomically()
    trainer(request, open_studies(args.studies, options, config.labels, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
