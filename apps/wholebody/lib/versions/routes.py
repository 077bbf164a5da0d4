"""REST for model versions: list them (anyone signed in), pin one, unpin, delete one (admins).

``{slot}`` is a served checkpoint: ``wholebody_highres``, ``wholebody_lowres``, ``spleen`` (``/info/``
shows each model's under ``weights``). A version that cannot be loaded is refused (422) and the version
being served stays."""

from __future__ import annotations

import os
from typing import Callable

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse
from monailabel.config import RBAC_ADMIN, RBAC_USER, settings
from monailabel.endpoints.user.auth import RBAC, User

from lib.server.errors import NotFoundError, shown
from lib.versions.store import UnknownVersionError, VersionError, VersionStore, known_stores


def servable(infers: dict) -> dict[str, tuple[VersionStore, Callable[[str], None]]]:
    """slot -> (its store, a check that a weights file loads into the network strictly), for every infer
    task that loads checkpoints into a network of its own."""
    stores = known_stores()
    found = {}
    for task in infers.values():
        fresh = getattr(task, "_fresh_network", None)
        for path in getattr(task, "path", None) or []:
            store = stores.get(os.path.abspath(path)) if fresh else None
            if store:
                found[store.slot] = (store, _loads_into(fresh))
    return found


def _loads_into(fresh: Callable) -> Callable[[str], None]:
    def check(path: str) -> None:
        from lib.weights.checkpoints import load_state_dict

        fresh().load_state_dict(load_state_dict(path), strict=True)

    return check


def install(fastapi_app: FastAPI, infers: dict) -> None:
    router = APIRouter(prefix="/versions", tags=["Versions"])
    slots = servable(infers)

    def slot_of(slot: str) -> tuple[VersionStore, Callable[[str], None]]:
        if slot not in slots:
            raise NotFoundError(f"no model versions for {shown(slot)}; served checkpoints: {', '.join(slots) or 'none'}")
        return slots[slot]

    def refused(e: VersionError) -> JSONResponse:
        return JSONResponse(status_code=404 if isinstance(e, UnknownVersionError) else 422, content={"detail": str(e)})

    @router.get("/", summary=f"{RBAC_USER}Model versions of every served checkpoint")
    def list_all(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return {slot: {**store.describe(), "versions": store.versions()} for slot, (store, _) in slots.items()}

    @router.get("/{slot}", summary=f"{RBAC_USER}Model versions of one served checkpoint")
    def list_versions(slot: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        store, _ = slot_of(slot)
        return {**store.describe(), "versions": store.versions()}

    @router.put("/{slot}/pin/{version}", summary=f"{RBAC_ADMIN}Serve this version until unpinned (roll back)")
    def pin(slot: str, version: int, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        store, check = slot_of(slot)
        try:
            return store.pin(version, check)
        except VersionError as e:
            return refused(e)

    @router.delete("/{slot}/pin", summary=f"{RBAC_ADMIN}Serve the newest version again")
    def unpin(slot: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        store, check = slot_of(slot)
        return store.unpin(check)

    @router.delete("/{slot}/{version}", summary=f"{RBAC_ADMIN}Delete a version that is not served")
    def delete(slot: str, version: int, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        store, _ = slot_of(slot)
        try:
            store.delete(version)
        except VersionError as e:
            return refused(e)
        return store.describe()

    fastapi_app.include_router(router)
