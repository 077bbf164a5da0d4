"""The work of one study in a batch run, cut where Ray hands it from one process to the next:
preprocessing, the network, inversion and writing. Each is ``/infer``'s own piece for ``wholebody``
(``lib/pipelines/wholebody.py``, as ``lib/infers/wholebody.py`` runs them), so the labels are
``/infer``'s to the voxel for the same study, checkpoint and params (tests/e2e/test_batch_ray.py).

Between processes the preprocessed image travels with its applied operations (MONAI's record of
what the orientation and spacing did), so the inversion undoes exactly them. MONAI checks that the
transform undoing an operation is the very instance that applied it (``id()``); in another process
the same transforms are rebuilt from the same list, so that check gives way to MONAI's own "any
instance" marker (``TraceKeys.NONE``), and the order of the list does the matching.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils import TraceKeys
from monailabel.transform.writer import Writer

from lib.acceleration import channels_last, cpu_precision
from lib.acceleration.cpu_memory import reusing_freed_memory
from lib.batch.model import ModelRun
from lib.networks import wholebody_segresnet
from lib.pipelines import wholebody as pipeline
from lib.transforms.body_mask import BODY_MASK_KEY, BodyMaskd
from lib.weights.checkpoints import load_state_dict

logger = logging.getLogger(__name__)

LABEL_EXTENSION = ".nii.gz"


def preprocess(path: str, run: ModelRun, threads: int | None = None) -> tuple[MetaTensor, torch.Tensor | None]:
    """(1, X, Y, Z) float image at the model's spacing, its operations portable to another process, and with
    ``skip_air`` the body mask on its grid (the windows to run; made from HU, which the image no longer is).
    Raises for a file that is not a readable 3D CT (lib.transforms.validate). ``threads``: those of the
    network, as ``/infer`` normalises with the same threads it infers with; the mean and deviation are
    sums whose order follows the thread count, and a last-bit change flips near-tied labels."""
    if threads:
        torch.set_num_threads(threads)
    with reusing_freed_memory():
        data = Compose(pipeline.preprocessing(run.pixdim, "cpu", body=BodyMaskd() if run.skip_air else None))({"image": path})
    image = data["image"]
    image.applied_operations = _any_instance(image.applied_operations)
    body = data.get(BODY_MASK_KEY)
    return image, None if body is None else torch.as_tensor(body)


def _any_instance(operations: Any) -> Any:
    if isinstance(operations, dict):
        return {k: TraceKeys.NONE if k == TraceKeys.ID else _any_instance(v) for k, v in operations.items()}
    if isinstance(operations, list):
        return [_any_instance(v) for v in operations]
    return operations


class Network:
    """The checkpoint loaded once (per Ray actor), then one study after another, as ``/infer`` runs it:
    the same layout (channels-last on the CPU) and precision (bf16 on a CPU if asked, AMP on CUDA),
    inference mode, streaming argmax, windows on air skipped if asked."""

    def __init__(self, run: ModelRun, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.run = run
        self.device = torch.device("cuda" if run.device == "cuda" else "cpu")
        network = wholebody_segresnet()
        network.load_state_dict(load_state_dict(run.checkpoint), strict=True)
        network = channels_last.for_device(network.to(self.device).eval(), self.device, run.channels_last)
        self.network = cpu_precision.for_device(network, self.device, run.precision)
        logger.info(f"wholebody network on {self.device} from {run.checkpoint} ({torch.get_num_threads()} threads)")

    def __call__(self, prepared: tuple[MetaTensor, torch.Tensor | None]) -> dict[str, Any]:
        """``preprocess``'s image and body mask -> (1, X, Y, Z) uint8 labels on the preprocessed grid, with
        what the inversion needs in MONAI's dictionary form (``image_transforms``, ``image_meta_dict``)."""
        image, body = prepared
        with reusing_freed_memory():
            inputs = torch.as_tensor(image)[None].to(self.device)
            inferer = pipeline.inferer(pipeline.ROI_SIZE, self.run.overlap, window_mask=None if body is None else body[None])
            with torch.inference_mode(), torch.autocast("cuda", enabled=self.device.type == "cuda"):
                labels = inferer(inputs, self.network)
            labels = labels[0].cpu().as_tensor() if isinstance(labels, MetaTensor) else labels[0].cpu()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return {"pred": labels.clone(), "image_transforms": image.applied_operations, "image_meta_dict": image.meta}


def invert_and_write(inferred: dict[str, Any], out_file: str, run: ModelRun) -> torch.Tensor:
    """Labels back on the input's grid (``/infer``'s post-processing: nearest inversion, squeeze, uint8)
    and written as ``/infer`` writes them; ``out_file`` appears whole or not at all. Returns the labels."""
    with reusing_freed_memory():
        pre = Compose(pipeline.preprocessing(run.pixdim, "cpu"))
        data = Compose(pipeline.postprocessing(pre))(inferred)
        written, _ = Writer(label="pred", json="result")({**data, "result_extension": LABEL_EXTENSION, "result_dtype": "uint8"})
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    part = f"{out_file}.part"
    try:
        shutil.copyfile(written, part)
        os.replace(part, out_file)
    finally:
        os.unlink(written)
        if os.path.exists(part):
            os.unlink(part)
    return data["pred"]
