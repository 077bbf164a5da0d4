"""Sessions (``PUT /session/``: a volume to segment that is not in the datastore) hold one checked CT file.

Stock MONAI Label stores whatever arrives: several files as a folder (read later as a DICOM series),
an archive unpacked on the server (``uncompress``: a tar may hold links to any file of the server's
disk, which ``GET /session/{id}?image=true`` would then send back), or a corrupt file that fails only
when a model reads it (500). Here a session is one NIfTI or NRRD file that passes the checks of an
upload to the datastore, checked before it is stored; anything else is 422.
"""

from __future__ import annotations

import os

from monailabel.utils.sessions import Sessions

from lib.datastore.image_check import SUPPORTED, check_ct_file
from lib.server.errors import SESSION_ID_PATTERN
from lib.transforms.validate import InvalidImageError


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
        return super().add_session(data_file, expiry, False, session_id)

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True):
        """None for anything but a session id of ours: never a path under the store."""
        if not isinstance(session_id, str) or not SESSION_ID_PATTERN.match(session_id):
            return None
        return super().get_session(session_id, update_ts, fetch_cache)
