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


def write_training_checkpoints_atomically() -> None:
    """MONAI's CheckpointSaver has ignite's DiskSaver write in place (``atomic=False``, for the file permissions
    ignite's temporary files lack): killed while it writes, a run leaves a truncated ``model.pt`` that the next
    run resumes from and fails on. Its writes go through :func:`write_atomically` instead. Idempotent."""
    from ignite.handlers import DiskSaver

    if getattr(DiskSaver._save_func, "atomic_writes", False):
        return
    in_place = DiskSaver._save_func

    def _save_func(self, checkpoint, path, func):
        if self._atomic:
            return in_place(self, checkpoint, path, func)
        write_atomically(str(path), lambda f: func(checkpoint, f, **self.kwargs))

    _save_func.atomic_writes = True
    DiskSaver._save_func = _save_func

