"""Sessions (``PUT /session/``: a volume to segment that is not in the datastore) hold one checked CT file,
and belong to the user who made them.

Stock MONAI Label stores whatever arrives: several files as a folder (read later as a DICOM series),
an archive unpacked on the server (``uncompress``: a tar may hold links to any file of the server's
disk, which ``GET /session/{id}?image=true`` would then send back), or a corrupt file that fails only
when a model reads it (500). Here a session is one NIfTI or NRRD file that passes the checks of an
upload to the datastore, checked before it is stored; anything else is 422.

Stock ids are uuid1 (the time and the server's MAC address: guessable), any signed-in user may read or
delete any session, and every answer names the session's folder and file on the server's disk. Here ids
are random (uuid4, from the operating system's secure source), a session is found only for the user
who made it (others get 404, as for an id that does not exist), and answers hold no server path.
"""

from __future__ import annotations

import os
import uuid

from monailabel.utils.sessions import SessionInfo, Sessions

from lib.datastore.image_check import SUPPORTED, check_ct_file
from lib.server.auth.context import signed_in_user
from lib.server.errors import SESSION_ID_PATTERN
from lib.transforms.validate import InvalidImageError

OWNER = "owner"


class OwnedSessionInfo(SessionInfo):
    """A session as clients see it: what it is, not where it lies (``to_str`` still writes the whole record)."""

    PRIVATE = ("path", "image", "meta")

    def to_json(self, indent=None):
        answer = {k: v for k, v in super().to_json(indent).items() if k not in self.PRIVATE}
        answer["image_name"] = os.path.basename(self.image)
        return answer


class CheckedSessions(Sessions):
    def __init__(self, store_path: str, expiry: int, max_voxels: int):
        super().__init__(store_path, expiry)
        self.max_voxels = max_voxels

    def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id=None):
        if uncompress:
            raise InvalidImageError(f"archives are not unpacked here: send one image file ({', '.join(SUPPORTED)})")
        if os.path.isdir(data_file):
            raise InvalidImageError(
                f"a session holds one image file ({', '.join(SUPPORTED)}), got {len(os.listdir(data_file))} files: "
                "send a DICOM series as one NIfTI or NRRD volume (Slicer does)"
            )
        check_ct_file(data_file, self.max_voxels)
        session_id, info = super().add_session(data_file, expiry, False, session_id or str(uuid.uuid4()))
        info.meta = {**(info.meta or {}), OWNER: signed_in_user()}
        self._write_meta_info(session_id, info)
        return session_id, OwnedSessionInfo(info.__dict__)

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True):
        """None for anything but a session id of ours, and for another user's session: never a path under the
        store. Outside a request (the expiry sweep) nobody is signed in, and every session is found."""
        if not isinstance(session_id, str) or not SESSION_ID_PATTERN.match(session_id):
            return None
        found = super().get_session(session_id, update_ts, fetch_cache)
        if found is None:
            return None
        caller = signed_in_user()
        if caller is not None and (found.meta or {}).get(OWNER) != caller:
            return None
        return OwnedSessionInfo(found.__dict__)
