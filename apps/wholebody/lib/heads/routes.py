"""REST for decoder heads: ``GET /heads/{model}`` lists them (with ``stale`` when the model's encoder
changed since a head was trained), ``DELETE /heads/{model}/{head}`` removes one (both resolutions, or
``?resolution=highres|lowres``). New heads come from ``POST /train/{model}_structures``."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, FastAPI
from monailabel.config import RBAC_ADMIN, RBAC_USER, settings
from monailabel.endpoints.user.auth import RBAC, User

from lib.heads.store import RESOLUTIONS, HeadError
from lib.server.errors import NotFoundError, shown


def install(fastapi_app: FastAPI, infers: dict) -> None:
    router = APIRouter(prefix="/heads", tags=["Heads"])

    def task(model: str):
        found = infers.get(model)
        if found is None or not hasattr(found, "head_store"):
            with_heads = [name for name, t in infers.items() if hasattr(t, "head_store")]
            raise NotFoundError(f"model '{model}' has no decoder heads; models with heads: {', '.join(with_heads) or 'none'}")
        return found

    @router.get("/{model}", summary=f"{RBAC_USER}Decoder heads of a model (new structures)")
    def list_heads(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return task(model).heads_info()

    @router.delete("/{model}/{head}", summary=f"{RBAC_ADMIN}Remove a decoder head")
    def remove_head(
        model: str,
        head: str,
        resolution: Optional[str] = None,
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        by_name = {v: k for k, v in RESOLUTIONS.items()}
        if resolution is not None and resolution not in by_name:
            raise HeadError(f"'resolution' must be one of {', '.join(by_name)}, got {shown(resolution)}")
        removed = task(model).head_store.remove(head, by_name.get(resolution))
        return {"removed": [r.describe() for r in removed]}

    fastapi_app.include_router(router)
