"""Reading and writing checkpoints in the layouts MONAI bundles and MONAI Label use."""

from __future__ import annotations

import os
import tempfile

import torch


def load_state_dict(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A bundle's ``.pt`` is a plain state_dict; a MONAI Label/ignite checkpoint wraps it as ``{"model": ...}``."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    return checkpoint


def save_atomically(state_dict: dict[str, torch.Tensor], path: str) -> None:
    """Readers (the infer tasks reload on mtime change) never see a half-written file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state_dict, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
