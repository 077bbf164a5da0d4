"""``GET /ohif/app-config.js``: the app's OHIF configuration (``app-config.js`` beside this file), in front of
the stock route that serves the wheel's. Same role as the rest of ``/ohif/`` (a signed-in user)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

APP_CONFIG = Path(__file__).with_name("app-config.js")


async def app_config(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    # OHIF reads it once per page load: never cached, so a server update reaches every browser.
    return FileResponse(APP_CONFIG, media_type="application/javascript", headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    app.router.routes[0:0] = [APIRoute("/ohif/app-config.js", app_config, methods=["GET"], include_in_schema=False)]
