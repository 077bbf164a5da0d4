"""The mean training loss of the last epoch, for the train stats (``/info/`` ``train_stats``, which OHIF's panel
shows while a run goes on): MONAI Label's stats hold the epoch and the metrics, not the loss."""

from __future__ import annotations

from typing import Optional

from ignite.engine import Engine, Events


class EpochLoss:
    def __init__(self):
        self._sum, self._count = 0.0, 0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._reset)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._add)

    def _reset(self, _engine: Engine) -> None:
        self._sum, self._count = 0.0, 0

    def _add(self, engine: Engine) -> None:
        output = engine.state.output
        # Decollated (a dict per sample, the batch's loss in each) or not.
        self._sum += float((output[0] if isinstance(output, list) else output)["loss"])
        self._count += 1

    @property
    def epoch_mean(self) -> Optional[float]:
        """The mean over the epoch so far: read when an epoch completes (the validation, which writes the stats,
        runs inside the trainer's epoch-completed event), it is the whole epoch's."""
        return round(self._sum / self._count, 6) if self._count else None
