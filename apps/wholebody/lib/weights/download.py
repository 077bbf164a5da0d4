"""Find the official MONAI model-zoo checkpoints in the bundle layout, downloading them if allowed.

Start-up must work offline, so nothing here raises on network trouble: a missing
checkpoint is reported as ``missing`` and the model simply starts untrained.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import secrets
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/"
DEFAULT_TIMEOUT_S = 5.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialWeights:
    """One official checkpoint: where it goes under the model dir and how to fetch it."""

    key: str
    relative_path: str
    url_name: str
    md5: str


@dataclass(frozen=True)
class WeightsStatus:
    """Outcome of :func:`ensure_weights`."""

    path: Path
    present: bool
    source: Literal["local", "downloaded", "missing"]
    message: str


OFFICIAL_WEIGHTS: dict[str, OfficialWeights] = {
    w.key: w
    for w in (
        OfficialWeights(
            "wholebody_highres",
            "wholeBody_ct_segmentation/models/model.pt",
            "model_wholebody_ct_segmentation.pt",
            "aded45dea52f9c00b37922bcd0a98502",
        ),
        OfficialWeights(
            "wholebody_lowres",
            "wholeBody_ct_segmentation/models/model_lowres.pt",
            "model_lowres_wholebody_ct_segmentation.pt",
            "dbdebeae650f4fb5ea7f4ad01e0d2431",
        ),
        OfficialWeights(
            "spleen",
            "spleen_ct_segmentation/models/model.pt",
            "model_spleen_ct_segmentation_v1.pt",
            "be4fa95e236df91766147c112ee6fafd",
        ),
        OfficialWeights(
            "vista3d",
            "vista3d/models/model.pt",
            "model_vista3d.pt",
            "6ce45a8edde4400c5d28d5e74d7b61d5",
        ),
    )
}


class ChecksumError(ValueError):
    """A downloaded file does not have the published md5."""


def md5sum(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex md5 of a file, read in chunks so multi-GB checkpoints need no memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def weights_url(entry: OfficialWeights, base_url: str = DEFAULT_BASE_URL) -> str:
    return base_url.rstrip("/") + "/" + entry.url_name


def _download(url: str, path: Path, md5: str, timeout: float) -> int:
    """Fetch ``url`` into ``path`` atomically after checking its md5; returns the size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so the final rename is atomic; a unique dot name so a
    # crash leaves nothing the app could mistake for a checkpoint and concurrent starts
    # do not collide; opened with "x" rather than mkstemp so it gets umask permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        digest, size = hashlib.md5(usedforsecurity=False), 0
        # The timeout bounds the connect and each read, not the whole transfer, so a
        # dead host fails fast while a slow but live download still completes.
        with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        actual = digest.hexdigest()
        if actual != md5:
            raise ChecksumError(f"md5 mismatch for {url}: expected {md5}, got {actual} ({size} bytes)")
        os.replace(tmp, path)
        return size
    finally:
        tmp.unlink(missing_ok=True)


def ensure_weights(
    entry: OfficialWeights,
    model_dir: str | os.PathLike,
    base_url: str = DEFAULT_BASE_URL,
    download: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> WeightsStatus:
    """Make sure ``entry``'s checkpoint is at its bundle path under ``model_dir``.

    An existing file is trusted without hashing: it may be the user's own fine-tuned model.
    """
    path = Path(model_dir) / entry.relative_path
    # An empty file is what an interrupted copy or `touch` leaves; loading it would fail later.
    if path.is_file() and path.stat().st_size > 0:
        return WeightsStatus(path, True, "local", f"using {path}")

    untrained = (
        f"{entry.key}: no checkpoint, the model starts untrained; "
        f"put the official {entry.url_name} (md5 {entry.md5}) at {path}"
    )
    if not download:
        return WeightsStatus(path, False, "missing", f"{untrained} (download disabled)")

    url = weights_url(entry, base_url)
    logger.info("%s: downloading %s -> %s", entry.key, url, path)
    try:
        size = _download(url, path, entry.md5, timeout)
    except ChecksumError as e:
        # Not a network hiccup but a wrong file (captive portal, changed upstream asset):
        # logged loudly, yet still not fatal so the server comes up.
        logger.error("%s", e)
        return WeightsStatus(path, False, "missing", f"{untrained}; rejected download: {e}")
    except (OSError, http.client.HTTPException, ValueError) as e:
        # OSError covers URLError/HTTPError, timeouts and refused connections; ValueError a bad URL.
        logger.warning("%s: download from %s failed: %s", entry.key, url, e)
        return WeightsStatus(path, False, "missing", f"{untrained}; download from {url} failed: {e}")
    return WeightsStatus(path, True, "downloaded", f"downloaded {url} ({size} bytes) to {path}")
