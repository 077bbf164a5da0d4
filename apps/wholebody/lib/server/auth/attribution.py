"""A saved label names who saved it: the signed-in user, not what the client claims.

MONAI Label's ``PUT /datastore/label`` passes the client's ``params`` JSON to the datastore as
the label's info; its ``user`` field is what the DICOMweb datastore writes as the SEG's content
creator. With accounts on, that field is set to the signed-in user before the label is saved.
"""

from __future__ import annotations

import json

from monailabel.endpoints import datastore as datastore_endpoints

from lib.server.auth.context import signed_in_user


def install() -> None:
    save = datastore_endpoints.save_label
    if getattr(save, "attributed", False):
        return

    def save_label(background_tasks, image, params, tag, label, user=None):
        username = signed_in_user()
        if username:
            info = json.loads(params) if params else {}
            if isinstance(info, dict):
                params = json.dumps({**info, "user": username})
            user = username
        return save(background_tasks, image, params, tag, label, user)

    save_label.attributed = True
    # The route handler looks save_label up in its module on every call.
    datastore_endpoints.save_label = save_label
