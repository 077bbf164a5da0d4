"""``GET /corrections/report``: the correction report per model version (JSON), ``.html``: the same as a page."""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import HTMLResponse
from monailabel.config import RBAC_REVIEWER, settings
from monailabel.endpoints.user.auth import RBAC, User

from lib.corrections.report import records, report


def install(fastapi_app: FastAPI, app: Any) -> None:
    router = APIRouter(prefix="/corrections", tags=["Corrections"])
    role = settings.MONAI_LABEL_AUTH_ROLE_REVIEWER

    @router.get("/report", summary=f"{RBAC_REVIEWER}Correction effort per model version")
    def as_json(user: User = Depends(RBAC(role))):
        return report(records(app.datastore()))

    @router.get("/report.html", summary=f"{RBAC_REVIEWER}Correction effort per model version, as a page", response_class=HTMLResponse)
    def as_page(user: User = Depends(RBAC(role))):
        return HTMLResponse(page(report(records(app.datastore()))))

    fastapi_app.include_router(router)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.3g}"
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def page(answer: dict[str, Any]) -> str:
    """One table per model: a row per version, the accepted share drawn as a bar."""
    parts = ["<!doctype html><meta charset=utf-8><title>Correction report</title><h1>Correction effort per model version</h1>"]
    for model, versions in answer.items():
        parts.append(f"<h2>{html.escape(model)}</h2><table border=1 cellpadding=4>")
        parts.append(
            "<tr><th>version</th><th>studies</th><th>structures accepted unchanged</th><th>median voxels changed</th>"
            "<th>median slices touched</th><th>median seconds</th></tr>"
        )
        for version, summary in versions.items():
            share = summary["accepted_share"]
            bar = f"<div style='background:#4a4;height:1em;width:{200 * share:.0f}px'></div>{share:.1%}" if share is not None else ""
            row = [_cell(version), _cell(len(summary["studies"])), f"<td>{bar}</td>"]
            row += [_cell(summary[k]) for k in ("median_voxels_changed", "median_slices_touched", "median_seconds")]
            parts.append("<tr>" + "".join(row) + "</tr>")
        parts.append("</table>")
    return "".join(parts)
