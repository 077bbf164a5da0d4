"""What the ``vista3d`` and ``vista3d_point`` infer tasks share, one instance per server.

* the network: one ``vista3d132`` (218 M parameters, ~0.9 GB) for both tasks, loaded on first use from
  the trained checkpoint or the official one, reloaded when the file's mtime changes;
* the preprocessed images: the bundle's preprocessing of an image is kept (LRU, bounded in bytes,
  keyed by the file's path, mtime, size and the preprocessing parameters), so a repeat click skips
  reading and resampling;
* the image-encoder outputs per window (``GridPointWindowInferer``, LRU bounded by ``--conf
  vista3d_cache_mb``): a repeat click on the same image runs only the prompt heads;
* the classes learned by finetuning (``<model_dir>/vista3d_classes.json``).

Without a checkpoint the tasks refuse to run (HTTP 503 naming where the file goes): random VISTA3D
weights answer clicks with noise, unlike the segmentation models, which are trained from scratch here.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastapi import HTTPException
from monai.transforms import Compose

from lib.pipelines.vista3d import preprocessing
from lib.vista3d.classes import LearnedClasses, table_labels
from lib.vista3d.grid_inferer import GridPointWindowInferer
from lib.weights.checkpoints import load_state_dict
from lib.weights.official import OfficialCheckpoint

logger = logging.getLogger(__name__)

#: bump when the preprocessing changes: part of every cache key
PREPROCESSING_VERSION = "vista3d-bundle-1"


@dataclass(frozen=True)
class PreprocessedImage:
    """One image after the bundle's preprocessing.

    image: [1, H, W, D] MetaTensor (its ``applied_operations`` are what ``Invertd`` undoes).
    compose: the transform instances that made it (``Invertd`` needs these very instances).
    original_shape: spatial shape of the file, to check clicks; original_affine: its voxel -> world.
    key: identity of the file content + preprocessing, also the encoder cache's ``image_key``.
    """

    image: Any
    compose: Compose
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray
    key: tuple
    nbytes: int


class PreprocessedImageCache:
    """LRU of ``PreprocessedImage`` bounded in bytes (an image bigger than the bound is not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, PreprocessedImage] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: tuple) -> PreprocessedImage | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, item: PreprocessedImage) -> None:
        with self._lock:
            if item.nbytes > self.max_bytes:
                return
            self._items[item.key] = item
            self._items.move_to_end(item.key)
            while sum(i.nbytes for i in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)
                self.evictions += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "images": len(self._items),
                "nbytes": sum(i.nbytes for i in self._items.values()),
                "max_bytes": self.max_bytes,
            }


def file_identity(path: str) -> tuple:
    """(real path, mtime_ns, size): a replaced or rewritten file gets a new identity. For a folder (a
    DICOM series) the newest mtime and the total size of its files."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if os.path.isdir(real):
        mtime, size = st.st_mtime_ns, 0
        for entry in os.scandir(real):
            if entry.is_file():
                est = entry.stat()
                mtime, size = max(mtime, est.st_mtime_ns), size + est.st_size
        return real, mtime, size
    return real, st.st_mtime_ns, st.st_size


class Vista3DRuntime:
    """Network, caches and learned classes of the VISTA3D tasks (see the module docstring)."""

    def __init__(
        self,
        checkpoint: OfficialCheckpoint,
        classes_path: str,
        network_factory: Callable[[], torch.nn.Module],
        pixdim: Sequence[float],
        hu_window: Sequence[float],
        crop_margin: int,
        roi_size: Sequence[int],
        cache_bytes: int,
        image_cache_bytes: int,
        window_grid: int,
    ):
        self.checkpoint = checkpoint
        self.learned = LearnedClasses(classes_path)
        self.network_factory = network_factory
        self.pixdim = tuple(float(p) for p in pixdim)
        self.hu_window = tuple(float(h) for h in hu_window)
        self.crop_margin = int(crop_margin)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.inferer = GridPointWindowInferer(roi_size=self.roi_size, cache_bytes=cache_bytes, window_grid=window_grid)
        self.images = PreprocessedImageCache(image_cache_bytes)
        self._networks: dict[str, tuple[tuple, torch.nn.Module]] = {}  # device -> (weights, network)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ weights
    def checkpoint_path(self) -> str | None:
        for path in reversed(self.checkpoint.paths):  # trained here beats official
            if path and os.path.isfile(path) and os.path.getsize(path) > 0:
                return path
        return None

    def unavailable_message(self) -> str:
        status = self.checkpoint.status()
        return (
            f"VISTA3D has no weights: put the official model_vista3d.pt ({self.checkpoint.entry.md5}) at "
            f"{self.checkpoint.path} (or pass --conf vista3d_path FILE) and send the request again; no restart "
            f"is needed. {status['message']}"
        )

    def require_weights(self) -> str:
        path = self.checkpoint_path()
        if path is None:
            raise HTTPException(status_code=503, detail=self.unavailable_message())
        return path

    def network(self, device: Any) -> tuple[torch.nn.Module, tuple]:
        """The network for ``device`` and its identity (path, mtime) for the encoder cache. One per device:
        the inference queue runs one worker per GPU."""
        path = self.require_weights()
        weights = (path, os.stat(path).st_mtime_ns)
        with self._lock:
            cached = self._networks.get(str(device))
            if cached and cached[0] == weights:
                return cached[1], weights
            if any(other != weights for other, _ in self._networks.values()):
                self._networks.clear()
                self.inferer.clear()  # embeddings of the old weights can never be used again: free them now
            with torch.random.fork_rng():
                torch.manual_seed(0)
                network = self.network_factory()
            logger.info(f"VISTA3D: loading {path} on {device}")
            network.load_state_dict(load_state_dict(path, map_location="cpu"), strict=True)
            network = network.to(torch.device(device)).eval()
            self._networks[str(device)] = (weights, network)
            return network, weights

    # ------------------------------------------------------------------ classes
    def extra_classes(self) -> dict[str, int]:
        return self.learned.get()

    def labels(self) -> dict[str, int]:
        """What ``/info/`` lists: the published class table plus the learned classes."""
        return {**table_labels(), **self.extra_classes()}

    # ------------------------------------------------------------------ images
    def preprocessing_params(self) -> tuple:
        return (PREPROCESSING_VERSION, self.pixdim, self.hu_window, self.crop_margin)

    def preprocess(self, path: str, device: Any = None) -> tuple[PreprocessedImage, bool]:
        """The preprocessed image and whether it came from the cache."""
        key = (*file_identity(path), str(device), self.preprocessing_params())
        cached = self.images.get(key)
        if cached is not None:
            return cached, True
        transforms = preprocessing(self.pixdim, self.hu_window, self.crop_margin, device)
        data: dict = {"image": path}
        for transform in transforms:  # one by one, not through Compose, which would wrap a bad input's error
            data = transform(data)
        image, compose = data["image"], Compose(transforms)
        meta = image.meta
        original_affine = np.asarray(meta.get("original_affine", meta["affine"]), dtype=np.float64)
        original_shape = tuple(int(s) for s in np.asarray(meta["spatial_shape"]).reshape(-1)[:3])
        item = PreprocessedImage(
            image=image,
            compose=compose,
            original_shape=original_shape,  # type: ignore[arg-type]
            original_affine=original_affine,
            key=key,
            nbytes=image.element_size() * image.nelement(),
        )
        self.images.put(item)
        return item, False

    def stats(self) -> dict[str, Any]:
        return {**self.inferer.stats(), "images_preprocessed": self.images.stats()}
