"""The mean loss of the epoch, as the train stats get it when the epoch completes (OHIF's panel shows it)."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from lib.trainers.epoch_loss import EpochLoss


def test_the_mean_of_each_epoch_decollated_or_not():
    losses = iter([1.0, 3.0, 0.5, 1.5])
    means = []

    def step(engine, batch):
        loss = torch.tensor(next(losses))
        # MONAI's trainer decollates: a dict per sample, the batch's loss in each; a plain dict otherwise.
        return [{"loss": loss}, {"loss": loss}] if engine.state.epoch == 1 else {"loss": loss}

    trainer = Engine(step)
    loss = EpochLoss()
    loss.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: means.append(loss.epoch_mean))
    assert loss.epoch_mean is None
    trainer.run([0, 1], max_epochs=2)
    assert means == [2.0, 1.0]
