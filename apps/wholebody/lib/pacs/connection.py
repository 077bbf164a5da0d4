"""The DICOMweb connection to the PACS, and its failures as one-line HTTP answers.

An unreachable PACS is a 503 that says what to do, refused credentials a 502 that names the settings, any
other refusal a 502 quoting the PACS; the last outage is remembered so that status pages can show it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional

import requests
from fastapi import HTTPException

from lib.conf import ConfError

logger = logging.getLogger(__name__)


class PacsUnavailable(HTTPException):
    def __init__(self, detail: str):
        super().__init__(status_code=503, detail=detail)


class PacsRefused(HTTPException):
    def __init__(self, detail: str):
        super().__init__(status_code=502, detail=detail)


class _TimeoutAdapter(requests.adapters.HTTPAdapter):
    """requests has no session-wide timeout; a PACS that hangs must not hang the server."""

    def __init__(self, timeout: tuple[float, float], **kwargs):
        self._timeout = timeout
        super().__init__(**kwargs)

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout
        return super().send(request, **kwargs)


def make_client(url: str, auth: tuple[str, str] | None, timeout_s: float, prefixes: Mapping[str, Optional[str]]):
    from monailabel.datastore.dicom import DICOMwebClientX

    if "googleapis.com" in url:  # Google Cloud Healthcare: the machine's Google credentials, as stock
        from dicomweb_client.ext.gcp.session_utils import create_session_from_gcp_credentials

        session = create_session_from_gcp_credentials()
    else:
        session = requests.Session()
        session.auth = auth
    adapter = _TimeoutAdapter((min(10.0, timeout_s), timeout_s))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    client = DICOMwebClientX(
        url=url,
        session=session,
        qido_url_prefix=prefixes.get("qido"),
        wado_url_prefix=prefixes.get("wado"),
        stow_url_prefix=prefixes.get("stow"),
    )
    client.set_http_retry_params(retry=False)  # our own retry loop; don't stall a request
    return client


class PacsConnection:
    """A DICOMweb client with ``answering(what)``: the PACS's failures while doing ``what`` as HTTP answers."""

    def __init__(self, client):
        self.client = client
        self.url = client.base_url
        self.last_error: Optional[str] = None

    @contextmanager
    def answering(self, what: str) -> Iterator[None]:
        """Turns the PACS's failures into one-line HTTP answers (and remembers the last one)."""
        try:
            yield
            self.last_error = None
        except (requests.ConnectionError, requests.Timeout) as e:
            self.last_error = (
                f"the PACS at {self.url} is unreachable ({type(e).__name__}) while {what}; "
                "check that it is running and reachable from this server, then retry"
            )
            raise PacsUnavailable(self.last_error) from None
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            body = (e.response.text or "").strip().replace("\n", " ")[:200] if e.response is not None else ""
            if status in (401, 403):
                self.last_error = (
                    f"the PACS at {self.url} refused the credentials (HTTP {status}) while {what}: set "
                    "MONAI_LABEL_DICOMWEB_USERNAME / MONAI_LABEL_DICOMWEB_PASSWORD or --conf dicomweb_credentials FILE"
                )
                raise PacsRefused(self.last_error) from None
            if status in (502, 503, 504):
                self.last_error = f"the PACS at {self.url} is unavailable (HTTP {status}) while {what}; retry later"
                raise PacsUnavailable(self.last_error) from None
            self.last_error = None  # it answered: a refusal of this request, not an outage
            raise PacsRefused(f"the PACS at {self.url} answered HTTP {status} while {what}: {body}") from None

    def check(self, pending_dir: str, retry_s: float) -> None:
        """At start-up: a wrong URL or refused credentials stop the server; an unreachable PACS
        is logged (the server starts, and requests that need the PACS answer 503)."""
        try:
            with self.answering("checking the connection at start-up"):
                self.client.search_for_studies(limit=1)
        except PacsRefused as e:
            raise ConfError(f"--studies {self.url}: {e.detail}") from None
        except PacsUnavailable as e:
            logger.error(
                f"{e.detail}. The server starts anyway: requests that need the PACS answer 503 until it is back; "
                f"labels saved meanwhile are kept in {pending_dir} and uploaded when it answers (every {retry_s:g} s)"
            )
        else:
            logger.info(f"PACS at {self.url} answers")
