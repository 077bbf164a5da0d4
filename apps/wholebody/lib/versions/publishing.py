"""A training run's weights as a model version: the one call a trainer makes when it publishes."""

from __future__ import annotations

import numbers
from typing import Any

import torch

from lib.versions.store import versions_of


def metrics_of(context: Any) -> dict[str, float]:
    """The scalar metrics of the run's last evaluation (training's if it has no validation)."""
    engine = context.evaluator or context.trainer
    metrics = getattr(getattr(engine, "state", None), "metrics", None) or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Number)}


def publish_version(served_path: str, number: int | None, state_dict: dict, context: Any, trainer: str, studies: list[str]) -> int:
    """Writes ``state_dict`` as the run's version (made on its first publish: ``number`` None) and serves it
    unless a version is pinned; the version's number."""
    store = versions_of(served_path)
    if number is None:
        number = store.begin(trainer, studies)
    store.publish(number, lambda f: torch.save(state_dict, f), metrics_of(context))
    return number
