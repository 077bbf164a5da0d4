"""Reading and writing checkpoints in the layouts MONAI bundles and MONAI Label use."""

from __future__ import annotations

import torch

from lib.datastore.atomic import write_atomically


def load_state_dict(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A bundle's ``.pt`` is a plain state_dict; a MONAI Label/ignite checkpoint wraps it as ``{"model": ...}``."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    return checkpoint


def save_atomically(state_dict: dict[str, torch.Tensor], path: str) -> None:
    """Readers (the infer tasks reload on mtime change) never see a half-written file, nor does a restart after a crash."""
    write_atomically(path, lambda f: torch.save(state_dict, f))
