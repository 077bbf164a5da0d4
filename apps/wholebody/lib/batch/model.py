"""What decides a batch run's labels: the ``wholebody`` checkpoint ``/infer`` would use, its identity,
and the params; two runs with the same ``key`` give the same labels, so a rerun skips what is done."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

from lib.acceleration import cpu_precision
from lib.conf import Conf
from lib.pipelines import wholebody as pipeline
from lib.weights.download import md5sum
from lib.weights.official import OfficialCheckpoint


class BatchError(ValueError):
    """A batch run that cannot start as asked (no checkpoint, no studies, a bad option)."""


def checkpoint_path(model_dir: str, highres: bool, checkpoint: str | None = None) -> str:
    """``checkpoint`` if given, else the file ``/infer`` loads for this resolution: the weights trained
    here (``<model_dir>/wholebody_{highres,lowres}.pt``, as the wholebody config names them), else the
    official bundle file. Batch runs never start on untrained weights."""
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise BatchError(f"--checkpoint {checkpoint}: no such file")
        return checkpoint
    key = "wholebody_highres" if highres else "wholebody_lowres"
    official = OfficialCheckpoint(key, model_dir, Conf({}), os.path.join(model_dir, f"{key}.pt"))
    for path in reversed(official.paths):
        if os.path.isfile(path):
            return path
    raise BatchError(
        f"no {key} checkpoint: looked for {' and '.join(reversed(official.paths))}; "
        f"put the official {official.entry.url_name} there or pass --checkpoint FILE"
    )


@dataclass(frozen=True)
class ModelRun:
    """``/infer``'s ``wholebody`` request params (``highres``, ``sw_overlap``, ``precision``, ``skip_air``,
    ``--conf channels_last``) on ``device``'s kind (AMP on CUDA changes the numbers), and the checkpoint by
    content. ``precision`` is the one that serves (bf16 only on a CPU with the units)."""

    checkpoint: str
    checkpoint_md5: str
    highres: bool
    overlap: float = pipeline.OVERLAP
    channels_last: bool = True
    device: str = "cpu"
    precision: str = "fp32"
    skip_air: bool = False

    @classmethod
    def create(cls, model_dir: str, highres: bool, checkpoint: str | None = None, **params) -> "ModelRun":
        path = os.path.abspath(checkpoint_path(model_dir, highres, checkpoint))
        # The server's default where none is named; what serves on this CPU (bf16 only with the units).
        params["precision"] = cpu_precision.serving(cpu_precision.check(params.get("precision", pipeline.CPU_PRECISION), "precision"))
        return cls(checkpoint=path, checkpoint_md5=md5sum(path), highres=highres, **params)

    @property
    def pixdim(self) -> tuple[float, ...]:
        return pipeline.PIXDIM[self.highres]

    def params(self) -> dict:
        """What a manifest record keeps; the checkpoint counts by content, not by where it lies."""
        params = {"model": "wholebody", **asdict(self)}
        params.pop("checkpoint")
        return params

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.params(), sort_keys=True).encode()).hexdigest()[:16]
