"""Checks a scoring request in the server before MONAI Label starts a scoring process for it.

Stock MONAI Label answers ``POST /scoring/{method}`` at once and scores in a subprocess, so a parameter
of the wrong type (``mc_samples: "many"``) only showed as ``ERROR`` in the scoring status. Here a
scoring method's ``checked_params(params)`` runs first (as a trainer's does for ``/train``), and what
it refuses is answered 422 naming the parameter.
"""

from __future__ import annotations

from monailabel.endpoints import scoring

from lib.server.errors import NotFoundError


def install(app) -> None:
    run_method_unchecked, run_unchecked = scoring.run_method, scoring.run

    def check(method: str, params) -> None:
        found = app._scoring_methods.get(method)
        if found is None:
            raise NotFoundError(f"unknown scoring method '{method}'; available: {', '.join(app._scoring_methods)}")
        checked = getattr(found, "checked_params", None)
        if checked:
            checked(dict(params or {}))

    def run_method(method: str, params=None, run_sync=False):
        check(method, params)
        return run_method_unchecked(method, params, run_sync)

    def run(params=None, run_sync=False):
        """``POST /scoring/``: every method, each with ``params[method]``."""
        for method in app._scoring_methods:
            check(method, (params or {}).get(method))
        return run_unchecked(params, run_sync)

    # The route handlers look these up in their module on every call.
    scoring.run_method = run_method
    scoring.run = run
