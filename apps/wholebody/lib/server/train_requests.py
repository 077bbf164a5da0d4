"""Checks a training request in the server before MONAI Label starts a training process for it.

Stock MONAI Label answers ``POST /train/{model}`` at once and runs the trainer in a subprocess, so
a request that cannot be trained (a structure no saved label has, a clashing name) only shows as
``ERROR`` in the training status. Trainers with a ``plan(request, datastore)`` method are asked
first, and what they refuse is answered with a 4xx naming the problem.
"""

from __future__ import annotations

from monailabel.endpoints import train


def install(app) -> None:
    start = train.run_model

    def run_model(model: str, params=None, run_sync=False, enqueue=False):
        plan = getattr(app._trainers.get(model), "plan", None)
        if plan:
            plan(dict(params or {}), app.datastore())
        return start(model, params, run_sync, enqueue)

    # The route handler looks run_model up in its module on every call.
    train.run_model = run_model
