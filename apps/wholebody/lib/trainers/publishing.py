"""Trainers publish to where the infer tasks look, after every epoch, so users get the better model
while training goes on (the infer tasks reload a checkpoint when its mtime changes)."""

from __future__ import annotations

from ignite.engine import Events
from monailabel.tasks.train.basic_train import BasicTrainTask, Context


class PublishingTrainTask(BasicTrainTask):
    def finalize(self, context: Context):
        super().finalize(context)
        if context.local_rank == 0:  # one writer under multi-GPU training
            engine = context.evaluator or context.trainer
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._publish(context))

    def _publish(self, context: Context) -> None:
        """Writes this run's model (atomically) where the infer task reads it, if it has a better one."""
        raise NotImplementedError
