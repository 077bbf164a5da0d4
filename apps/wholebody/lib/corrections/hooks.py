"""Where the app meets the learning loop: an inference answer keeps the prediction served, a saved final label
gets its correction record, and the server gets the versions and report endpoints. The app calls these three."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from monailabel.interfaces.datastore import DefaultLabelTag

from lib.corrections.record import Recorder
from lib.corrections.served import keep_served, model_version
from lib.server.auth.context import signed_in_user

logger = logging.getLogger(__name__)


class LearningLoop:
    def __init__(self):
        self.recorder = Recorder()

    def served(self, app, image_id: str, request: dict, result: dict) -> None:
        """After ``/infer`` answered a datastore study: the prediction and the model version that made it."""
        task = app._infers.get(request.get("model"))
        label_file, params = result.get("file"), result.get("params")
        if not label_file or not isinstance(params, dict) or task is None:
            return
        checkpoint = getattr(task, "checkpoint", None)  # the CT segmentation tasks': the file this request ran
        version = model_version(checkpoint(request) if callable(checkpoint) else None)
        params["model_version"] = version  # the client sees which version answered
        names = params.get("label_names") or getattr(task, "labels", None) or {}
        client = signed_in_user() or request.get("client_id")
        try:
            keep_served(app.datastore(), image_id, label_file, request.get("model"), version, dict(names), client)
        except Exception as e:  # bookkeeping never costs the annotator the answer: the save gets no record
            logger.warning(f"prediction served for {image_id} not kept ({e}): its correction will have no record")

    def saved(self, app, image_id: str, saved_at: float | None = None):
        """A label was saved (before its hand-out is released; ``saved_at`` when not now): its record is computed
        in the background."""
        store = app.datastore()
        tag = getattr(store, "last_saved_tag", lambda _: None)(image_id) or DefaultLabelTag.FINAL.value
        handouts = getattr(app, "handouts", None)
        started = handouts.handed_out_at(image_id) if handouts else None
        info = store.get_label_info(image_id, tag) or {}
        annotator = signed_in_user() or info.get("user") or info.get("client_id")
        try:
            return self.recorder.saved(store, image_id, tag, list(app._infers), started, annotator, saved_at)
        except Exception as e:  # the label is saved: a record that cannot be made never turns that into an error
            logger.warning(f"corrections of {image_id}: not recorded ({e})")
            return None


def install(fastapi_app: FastAPI, app: Any) -> None:
    from lib.corrections import report_routes
    from lib.versions import routes as version_routes

    version_routes.install(fastapi_app, app._infers)
    report_routes.install(fastapi_app, app)
