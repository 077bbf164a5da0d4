"""Checks a training request in the server before MONAI Label starts a training process for it.

Stock MONAI Label answers ``POST /train/{model}`` at once and runs the trainer in a subprocess, so
a request that cannot be trained (a parameter of the wrong type, a structure no saved label has, a
clashing name) only shows as ``ERROR`` in the training status. Here a trainer's
``checked_params(params)`` converts the parameters to their declared types and its
``plan(params, datastore)`` (where it has one) checks what the run would train; what they refuse is
answered with a 4xx naming the problem, and the process is started with the converted parameters.
"""

from __future__ import annotations

from monailabel.endpoints import train

from lib.conf import ConfError, NothingToTrainError


def install(app) -> None:
    start = train.run_model

    def checked(model: str, params) -> dict:
        params = dict(params or {})
        trainer = app._trainers.get(model)
        if trainer is None:
            return params  # MONAI Label answers an unknown model (404, main.py)
        # MONAI Label lets a request's 'model' replace the route's: the process would train another model.
        if params.get("model", model) != model:
            raise ConfError(f"'model' in the parameters must be the trainer's name '{model}', got {params['model']!r}")
        check = getattr(trainer, "checked_params", None)
        if check:
            params = check(params)
        plan = getattr(trainer, "plan", None)
        if plan:
            plan(params, app.datastore())
        return params

    def run_model(model: str, params=None, run_sync=False, enqueue=False):
        return start(model, checked(model, params), run_sync, enqueue)

    def run(params=None, run_sync=False):
        """``POST /train/`` (every trainer, one after the other), with each trainer's own parameters checked
        first; stock MONAI Label also merged the whole ``{model: params}`` object into every request. A trainer
        with nothing to learn (the decoder heads, until a label names a new structure) is left out and says why;
        only if every trainer is, the request is refused. This is OHIF's "Update Model"."""
        requests, left_out = {}, {}
        for model in app._trainers:
            try:
                requests[model] = checked(model, (params or {}).get(model))
            except NothingToTrainError as e:
                left_out[model] = e
        if not requests and left_out:
            raise next(iter(left_out.values()))
        started = {model: {"result": train.run_model(model, request, run_sync, True), "detail": None} for model, request in requests.items()}
        return {**started, **{model: {"result": None, "detail": f"not trained: {e}"} for model, e in left_out.items()}}

    # The route handlers look these up in their module on every call.
    train.run_model = run_model
    train.run = run
