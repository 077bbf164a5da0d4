"""The prediction an annotator starts from, kept as the study's ``original_<model>`` label with the model
version that made it and when it was served. Kept on the server's disk only (a DICOMweb datastore does not
send it to the PACS); it replaces the previous prediction of the model for the study, whose copy is not kept.
A batch run's results (tag ``original``, lib/batch/) are served predictions too."""

from __future__ import annotations

import glob
import logging
import os
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from lib.versions.store import known_stores

logger = logging.getLogger(__name__)

BATCH_TAG = DefaultLabelTag.ORIGINAL.value


def served_tag(model: str) -> str:
    return f"{BATCH_TAG}_{model}"


def model_version(checkpoint: str | None) -> Any:
    """The version a checkpoint file is: its number when it is a versioned served file, ``"official"`` for
    the bundle's file, None when untrained weights (no file) ran."""
    if not checkpoint:
        return None
    store = known_stores().get(os.path.abspath(checkpoint))
    return store.state()["serving"] if store else "official"


def keep_served(datastore: Datastore, image_id: str, label_file: str, model: str, version: Any, label_names: dict, client: str | None) -> None:
    info = {"model": model, "version": version, "served_at": time.time(), "client": client, "label_names": label_names}
    store = getattr(datastore, "_store_label", None) or datastore.save_label  # local only: never a SEG to the PACS
    tag = served_tag(model)
    store(image_id, label_file, tag, info)
    history = os.path.join(os.path.dirname(datastore.get_label_uri(image_id, tag)), "history")
    for old in glob.glob(os.path.join(glob.escape(history), glob.escape(image_id) + ".*")):
        os.remove(old)


def served(datastore: Datastore, image_id: str, models: list[str], model: str | None) -> tuple[str, dict[str, Any]] | None:
    """(file, info) of the prediction a saved label corrects: that of the model the save names, else the
    study's newest served prediction (or batch result); None if none was served."""
    found = []
    for tag in [*(served_tag(m) for m in models), BATCH_TAG]:
        uri = datastore.get_label_uri(image_id, tag)
        if uri and os.path.exists(uri):
            info = datastore.get_label_info(image_id, tag) or {}
            # A batch result: names in its params; no answer to a person, so its seconds count from a hand-out only.
            names = info.get("label_names") or (info.get("params") or {}).get("label_names") or {}
            found.append((os.path.getmtime(uri), uri, {**info, "label_names": names}))
    named = [f for f in found if model and f[2].get("model") == model]
    if not found:
        return None
    _, uri, info = max(named or found, key=lambda f: f[0])
    return uri, info
