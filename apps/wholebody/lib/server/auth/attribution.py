"""MONAI Label's endpoints name the signed-in user, not a default one or what the client claims.

With MONAI Label's own authentication off (as it is with built-in accounts), its endpoints get a
default "admin" user and record that name (label and image info updates, logs). Its user
dependency is replaced with the signed-in user. ``PUT /datastore/label`` passes the client's
``params`` JSON to the datastore as the label's info; its ``user`` field (what the DICOMweb
datastore writes as the SEG's content creator) is set to the signed-in user before saving.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from monailabel.endpoints import datastore as datastore_endpoints
from monailabel.endpoints.user.auth import User, get_current_user

from lib.server.auth.context import signed_in_user


def _signed_in() -> User:
    return User(username=signed_in_user() or "")


def install(app: FastAPI) -> None:
    app.dependency_overrides[get_current_user] = _signed_in
    save = datastore_endpoints.save_label
    if getattr(save, "attributed", False):
        return

    def save_label(background_tasks, image, params, tag, label, user=None):
        username = signed_in_user()
        if username:
            info = json.loads(params) if params else {}
            if isinstance(info, dict):
                params = json.dumps({**info, "user": username})
        return save(background_tasks, image, params, tag, label, username or user)

    save_label.attributed = True
    # The route handler looks save_label up in its module on every call.
    datastore_endpoints.save_label = save_label
