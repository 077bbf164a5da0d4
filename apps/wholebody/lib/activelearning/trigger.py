"""When scoring runs: MONAI Label asks for it after every training run, every next-sample request
and at start-up (``MONAI_LABEL_AUTO_UPDATE_SCORING``, on by default); on demand with
``POST /scoring/{method}``. Stock MONAI Label starts a task process for each of those asks and
drops the one after training with a 429 when another scoring run is busy. Here:

* an ask starts a scoring process only when some unlabeled study has no score from the current
  model (a process costs its start-up, about 10 s of CPU, even when it finds nothing to do);
* in the server process, it never queues a second run behind one that has not started yet
  (that one will see the same studies);
* in a task process (training), the ask goes to the server's ``POST /scoring/``, which queues it
  behind a busy run instead of refusing it, so a new model always gets its scores.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from monailabel.config import settings
from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.async_tasks.utils import tasks

logger = logging.getLogger(__name__)


def _queued(method: str) -> bool:
    """A scoring run of ``method`` that waits for its turn."""
    return any(t.get("status") == "SUBMITTED" and t.get("request", {}).get("method") == method for t in tasks("scoring"))


def _has_work(app, method: str) -> bool:
    """False when the method can tell that every unlabeled study already has a current score."""
    pending = getattr(app._scoring_methods.get(method), "pending", None)
    if callable(pending) and not pending(app.datastore()):
        logger.debug(f"Scoring {method}: every unlabeled study has a current score")
        return False
    return True


def async_scoring(app, method: str | None, params: dict | None = None) -> dict[str, Any] | Any:
    """What :meth:`MONAILabelApp.async_scoring` does, without runs that would find nothing to do."""
    methods = [m for m in ([method] if method else list(app._scoring_methods)) if _has_work(app, m)]
    result: dict[str, Any] = {m: None for m in ([method] if method else app._scoring_methods)}
    if not methods:
        return result[method] if method else result
    if not app._server_mode:
        url = f"http://127.0.0.1:{settings.MONAI_LABEL_SERVER_PORT}/scoring/"
        try:
            response = requests.post(url, json={m: (params or {}).get(m, {}) for m in methods}, timeout=30)
            response.raise_for_status()
            result = {m: response.json().get(m) for m in methods}
        except requests.RequestException as e:
            logger.error(f"Failed to ask the server for scoring {methods}: {e}")
        return result[method] if method else result

    for m in methods:
        if _queued(m):
            logger.info(f"Scoring {m}: a queued run will score the pending studies")
            result[m] = None
        else:
            request = {"method": m, **((params or {}).get(m) or {})}
            result[m], _ = AsyncTask.run("scoring", request=request, enqueue=True)
    return result[method] if method else result
