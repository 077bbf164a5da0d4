"""The parameters MONAI Label's infer tasks read for every model, checked before anything is computed.

Stock MONAI Label reads them deep inside the task: a result format or type its writer (ITK) cannot
write failed with a bare 500 after the whole inference ran (``result_dtype`` ``int8``, ``bool``,
``foo``; ``result_extension`` ``nrrd`` without a dot), and a 2D format (``.png``) answered 200 with one
slice of the 3D result. Here a request gets 422 naming the parameter first. The models' own parameters
(``highres``, ``label_prompt``, points ...) are checked by their tasks.
"""

from __future__ import annotations

from typing import Any, Mapping

from lib.conf import ConfError, as_bool, as_float
from lib.server.errors import check_id

# What MONAI Label's writer (ITK) writes as a 3D label volume that holds every value a model answers (0..255).
RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd")
RESULT_DTYPES = ("uint8", "int16", "uint16", "int32", "uint32", "float32", "float64")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_infer_params(request: Mapping[str, Any]) -> None:
    """Raises ConfError (422) for a parameter the task would fail on or answer unfaithfully."""
    extension = request.get("result_extension")
    if extension not in (None, "") and extension not in RESULT_EXTENSIONS:
        raise ConfError(
            f"'result_extension' must be one of {', '.join(RESULT_EXTENSIONS)} (a 3D label volume), got {extension!r}"
        )
    dtype = request.get("result_dtype")
    if dtype not in (None, "") and dtype not in RESULT_DTYPES:
        raise ConfError(
            f"'result_dtype' must be one of {', '.join(RESULT_DTYPES)} (types the writer keeps as given that hold every "
            f"label value, 0..255), got {dtype!r}"
        )
    for name in ("result_compress", "skip_writer", "save_label"):
        if name in request:
            as_bool(request[name], name)
    if "result_write_to_file" in request and not as_bool(request["result_write_to_file"], "result_write_to_file"):
        raise ConfError("'result_write_to_file' false is not served: the result is always sent as a file")
    level = request.get("logging")
    if level is not None and (not isinstance(level, str) or level.upper() not in LOG_LEVELS):
        raise ConfError(f"'logging' must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    if request.get("timeout") is not None:
        as_float(request["timeout"], "timeout", low=0.001)
    if request.get("label_tag") is not None:
        check_id(request["label_tag"], "label tag")
