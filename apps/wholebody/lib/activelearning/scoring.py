"""``wholebody_uncertainty``: MC dropout scores of every unlabeled study, kept in the datastore.

MONAI Label runs a scoring method as a background task (``POST /scoring/wholebody_uncertainty``,
``AsyncTask``): a separate process, so the server's inference never waits for it. That process
lowers its own CPU priority and torch threads (``al_threads``) so that it also leaves the cores
to inference. Each record is written as soon as it is computed, under the image's info::

    "wholebody_uncertainty": {"score": 0.0123, "entropy": 0.41, "structures": {"liver": [0.113, 5120], ...},
                              "features": "<base64>", "model": "wholebody_lowres.pt",
                              "model_mtime": 1732345678.1, "mc_samples": 4, "voxels": 151200,
                              "windows": 1, "seconds": 14.2, "ts": 1732345690}

(``records.py`` says what each field is.) A study is scored again only when it has no record
from the current lowres checkpoint (path and mtime) or a request says ``force``. Bound per study:
``al_mc_samples`` passes over at most ``al_windows`` windows of ``al_roi`` voxels at 3 mm,
whatever the study's size. Labelled studies get the features alone (the encoder's share of the
same passes), so that ``diversity`` compares them with the candidates in one model's feature space.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from functools import cached_property
from typing import Any, Callable, Sequence

import torch
from monai.transforms import Compose, NormalizeIntensityd
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from lib.activelearning import datastore_info
from lib.activelearning.mc_dropout import enable_mc_dropout, mc_dropout_features, mc_dropout_uncertainty
from lib.activelearning.records import encode_features, structures_record
from lib.conf import as_bool, as_int
from lib.pipelines import wholebody as pipeline
from lib.weights.checkpoints import load_state_dict

logger = logging.getLogger(__name__)

SCORE_KEY = "wholebody_uncertainty"
TASK_MODULE = "monailabel.interfaces.utils.app"  # what MONAI Label's background task processes run


def in_background_task() -> bool:
    """Whether this process is one of MONAI Label's task processes (``python -m monailabel.interfaces.utils.app``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == TASK_MODULE


def load_study(path: str, pixdim: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The inference preprocessing of ``path``: (network input, the same grid in HU), each (1, X, Y, Z)."""
    transforms = pipeline.preprocessing(pixdim)
    split = next(i for i, t in enumerate(transforms) if isinstance(t, NormalizeIntensityd))
    data = Compose(transforms[:split])({"image": path})
    hu = data["image"].as_tensor().clone()
    image = Compose(transforms[split:])(data)["image"].as_tensor()
    return image.float(), hu


class WholeBodyUncertainty(ScoringMethod):
    """MC dropout scores of the lowres ``wholebody`` model per unlabeled study: the epistemic
    uncertainty (BALD), the entropy of each structure and the pooled encoder features.

    ``checkpoint_paths``: the lowres candidates, most preferred last (as the infer task uses them).
    ``labels``: structure name -> channel, the names the per-structure scores are kept under.
    Request params (``POST /scoring/wholebody_uncertainty``): ``mc_samples``, ``windows``,
    ``force`` (score all again), ``max_studies`` (at most this many this run), ``device``.
    """

    def __init__(
        self,
        network_factory: Callable[[], torch.nn.Module],
        checkpoint_paths: Sequence[str],
        labels: dict[str, int],
        pixdim: Sequence[float],
        roi_size: Sequence[int],
        mc_samples: int = 4,
        windows: int = 1,
        threads: int = 1,
        key: str = SCORE_KEY,
    ):
        super().__init__(
            f"Uncertainty of the lowres wholebody model per unlabeled study, overall and per structure, and its encoder "
            f"features: MC dropout, {mc_samples} passes over at most {windows} window(s) of {'x'.join(map(str, roi_size))} "
            f"at {pixdim[0]} mm; stored as image info '{key}'"
        )
        self.network_factory = network_factory
        self.names = {channel: name for name, channel in labels.items()}
        self.checkpoint_paths = list(checkpoint_paths)
        self.pixdim = tuple(pixdim)
        self.roi_size = tuple(roi_size)
        self.mc_samples = mc_samples
        self.windows = windows
        self.threads = threads
        self.key = key

    def info(self):
        return {**super().info(), "key": self.key, "mc_samples": self.mc_samples, "windows": self.windows, "roi_size": self.roi_size}

    def checkpoint(self) -> tuple[str | None, float]:
        """The checkpoint the lowres infer task would load now, and its mtime (0 when untrained)."""
        for path in reversed(self.checkpoint_paths):
            if path and os.path.exists(path):
                return path, os.stat(path).st_mtime
        return None, 0.0

    @cached_property
    def has_encoder(self) -> bool:
        """Whether the network has an encoder to take features from (labelled studies need them then)."""
        return hasattr(self.network_factory(), "encode")

    def is_current(self, info: dict[str, Any], checkpoint: tuple[str | None, float], field: str = "score") -> bool:
        """Whether the record is from the current checkpoint and has ``field`` (or failed with it)."""
        record = info.get(self.key)
        path, mtime = checkpoint
        return (
            isinstance(record, dict)
            and record.get("model") == (os.path.basename(path) if path else "untrained")
            and record.get("model_mtime") == mtime
            and (field in record or "error" in record)
        )

    def pending(self, datastore: Datastore) -> list[str]:
        """Unlabeled studies without a score from the current checkpoint, never scored first; then
        labelled studies without its features."""
        datastore_info.reload(datastore)
        checkpoint = self.checkpoint()
        never, stale = [], []
        for image_id in sorted(datastore.get_unlabeled_images()):
            info = datastore.get_image_info(image_id)
            if not self.is_current(info, checkpoint):
                (stale if self.key in info else never).append(image_id)
        return never + stale + self.pending_features(datastore, checkpoint)

    def pending_features(self, datastore: Datastore, checkpoint: tuple[str | None, float]) -> list[str]:
        if not self.has_encoder:
            return []
        labelled = sorted(datastore.get_labeled_images())
        return [i for i in labelled if not self.is_current(datastore.get_image_info(i), checkpoint, "features")]

    def network(self, device: torch.device, path: str | None) -> torch.nn.Module:
        with torch.random.fork_rng():  # the same seeded weights as the untrained infer task
            torch.manual_seed(0)
            network = self.network_factory()
        if path:
            network.load_state_dict(load_state_dict(path, map_location="cpu"), strict=True)
        return enable_mc_dropout(network.to(device))

    def __call__(self, request, datastore: Datastore):
        start = time.time()
        if in_background_task():
            # This process only scores: leave the CPU to the server's inference and to training.
            os.nice(10)
            torch.set_num_threads(self.threads)
        samples = as_int(request.get("mc_samples", self.mc_samples), "mc_samples", minimum=2)
        windows = as_int(request.get("windows", self.windows), "windows", minimum=1)
        max_studies = as_int(request.get("max_studies", 0), "max_studies", minimum=0)
        device = torch.device(request.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")

        if as_bool(request.get("force", False), "force"):
            datastore_info.reload(datastore)
            todo = sorted(datastore.get_unlabeled_images())
            todo += sorted(datastore.get_labeled_images()) if self.has_encoder else []
        else:
            todo = self.pending(datastore)
        todo = todo[:max_studies] if max_studies else todo
        path, mtime = self.checkpoint()
        summary: dict[str, Any] = {"model": path or "untrained", "pending": len(todo), "scored": {}, "featured": [], "failed": {}}
        if not todo:
            summary["seconds"] = round(time.time() - start, 2)
            return summary

        network = self.network(device, path)
        model = {"model": os.path.basename(path) if path else "untrained", "model_mtime": mtime}
        labelled = set(datastore.get_labeled_images())
        for image_id in todo:
            began = time.time()
            try:
                image, hu = load_study(datastore.get_image_uri(image_id), self.pixdim)
                if image_id in labelled:
                    record = {"features": encode_features(mc_dropout_features(network, image, hu, self.roi_size, samples, windows, device))}
                else:
                    u = mc_dropout_uncertainty(network, image, hu, self.roi_size, samples, windows, device)
                    record = {
                        "score": u.bald,
                        "entropy": u.entropy,
                        "structures": structures_record(u.structure_entropy, u.structure_voxels, self.names),
                        **({"features": encode_features(u.features)} if u.features is not None else {}),
                        "voxels": u.voxels,
                        "windows": u.windows,
                    }
            except Exception as e:  # one unreadable study must not stop the others
                # Recorded, so that it is not tried again (and again) until the model changes.
                logger.warning(f"{self.key}: cannot score {image_id}: {e}")
                summary["failed"][image_id] = str(e)
                datastore_info.update_image_info(datastore, image_id, {self.key: {"error": str(e), **model, "ts": int(time.time())}})
                continue
            record = {**model, "mc_samples": samples, "windows": windows, **record, "seconds": round(time.time() - began, 2), "ts": int(time.time())}
            if not datastore_info.update_image_info(datastore, image_id, {self.key: record}):
                continue  # removed while it was being scored
            if image_id in labelled:
                summary["featured"].append(image_id)
                continue
            summary["scored"][image_id] = round(u.bald, 6)
            logger.info(f"{self.key}: {image_id} score {u.bald:.5f} (entropy {u.entropy:.4f}) in {record['seconds']} s")
        summary["seconds"] = round(time.time() - start, 2)
        return summary
