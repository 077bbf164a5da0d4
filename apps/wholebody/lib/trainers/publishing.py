"""The base of this app's trainers: they publish to where the infer tasks look, after every epoch, so users
get the better model while training goes on (the infer tasks reload a checkpoint when its mtime changes),
and train with freed CPU memory reused (lib/acceleration/cpu_memory.py)."""

from __future__ import annotations

from ignite.engine import Events
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from lib.acceleration.cpu_memory import reusing_freed_memory


class PublishingTrainTask(BasicTrainTask):
    def __call__(self, request, datastore):
        # On the CPU a 96^3 iteration of the wholebody SegResNet (forward, backward, AdamW) took 9.3 s with
        # glibc's default of fresh pages for every large tensor, 6.7 s with freed ones reused.
        with reusing_freed_memory():
            return super().__call__(request, datastore)

    def finalize(self, context: Context):
        super().finalize(context)
        if context.local_rank == 0:  # one writer under multi-GPU training
            engine = context.evaluator or context.trainer
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self._publish(context))

    def _publish(self, context: Context) -> None:
        """Writes this run's model (atomically) where the infer task reads it, if it has a better one."""
        raise NotImplementedError

    def stats(self):
        # MONAI Label copies train_stats.json in place after every epoch: read during that copy, or after a
        # crash in it, the file is cut short. /info/ then shows no stats for this trainer instead of failing.
        try:
            return super().stats()
        except ValueError:
            return {}
