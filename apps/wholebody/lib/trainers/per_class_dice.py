"""Validation Dice for each structure, by name, in the train stats MONAI Label reports."""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events


class PerClassDice:
    """Accumulates overlap over the whole validation epoch and stores ``{name: dice}`` in
    ``engine.state.metrics["val_dice_per_class"]`` for the structures present in the labels
    (others have no meaningful Dice and would be NaN, which JSON cannot carry).

    Reads ``engine.state.output`` items with one-hot ``pred`` and ``label``: (C, *spatial). In a distributed run
    every rank validates its own studies and the sums are added up over the ranks.
    """

    def __init__(self, labels: dict[str, int]):
        self.labels = labels

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._store)

    def _reset(self, engine: Engine) -> None:
        self.intersection = self.pred = self.truth = None

    def _update(self, engine: Engine) -> None:
        for item in engine.state.output:
            pred, label = item["pred"].float(), item["label"].float()
            dims = tuple(range(1, pred.ndim))
            sums = ((pred * label).sum(dims), pred.sum(dims), label.sum(dims))
            if self.intersection is None:
                self.intersection, self.pred, self.truth = (s.cpu() for s in sums)
            else:
                self.intersection += sums[0].cpu()
                self.pred += sums[1].cpu()
                self.truth += sums[2].cpu()

    def _store(self, engine: Engine) -> None:
        if dist.is_initialized():
            sums = torch.zeros(3, max(self.labels.values()) + 1)
            if self.intersection is not None:
                sums = torch.stack((self.intersection, self.pred, self.truth)).float()
            nccl = dist.get_backend() == "nccl"  # reduces tensors on the rank's GPU only
            sums = sums.to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
            dist.all_reduce(sums)
            self.intersection, self.pred, self.truth = sums.cpu()
        if self.intersection is None:
            return
        dice = 2 * self.intersection / (self.pred + self.truth).clamp_min(1)
        engine.state.metrics["val_dice_per_class"] = {
            name: round(float(dice[idx]), 4) for name, idx in self.labels.items() if self.truth[idx] > 0
        }
