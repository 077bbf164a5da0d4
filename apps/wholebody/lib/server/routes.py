"""How each request is run: routes put in front of MONAI Label's own, so the event loop never computes.

MONAI Label 0.8.5 declares every endpoint ``async def`` and does all its work inside: inference, datastore
reads and writes, DICOMweb fetches, starting training. The event loop that serves every client waits for
each of them in turn; while one inference runs, ``/info/`` waits for all of it. Here, in front of each
stock route, the same endpoint (same URL, parameters, answers and role) is served:

* inference (``/infer/{model}``, every task, uploads and sessions included; ``/batch/infer/{model}``)
  through the bounded :class:`~lib.server.infer_queue.InferQueue`;
* everything else in FastAPI's worker threads.

``GET /queue/`` shows the queue. Every route the server adds is made by :func:`_route`: the one place
where a check that applies to all endpoints (a role per endpoint) goes.
"""

from __future__ import annotations

import inspect
import json
import logging
from typing import Any, Callable, Coroutine

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from monailabel.config import RBAC_USER, settings
from monailabel.endpoints import (
    activelearning,
    batch_infer,
    datastore,
    infer,
    info,
    login,
    logs,
    model,
    ohif,
    scoring,
    session,
    train,
    wsi_infer,
)
from monailabel.endpoints.user.auth import RBAC, User

from lib.server.auth.context import requester, signed_in_user
from lib.server.auth.roles import ADMIN, allows
from lib.server.infer_queue import InferQueue
from lib.server.request_checks import check_request

logger = logging.getLogger(__name__)

# Stock routers whose endpoints only call blocking code (``proxy`` really awaits: it stays as it is).
THREADED_ROUTERS = (activelearning, batch_infer, datastore, info, logs, model, ohif, scoring, session, train, wsi_infer)


def finish(coroutine: Coroutine) -> Any:
    """Runs a stock endpoint's coroutine to its end in the calling (worker) thread. They never await:
    the first step is the whole body."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError(f"{coroutine.__qualname__} awaits: it cannot be finished in a worker thread")


def threaded(endpoint: Callable[..., Coroutine]) -> Callable[..., Any]:
    """The endpoint as a plain function with its signature: FastAPI runs it in its thread pool."""

    def run(**kwargs):
        check_request(endpoint, kwargs)
        return finish(endpoint(**kwargs))

    run.__signature__ = inspect.signature(endpoint, eval_str=True)
    run.__name__, run.__doc__ = endpoint.__name__, endpoint.__doc__
    return run


def queued(
    endpoint: Callable[..., Coroutine],
    queue: InferQueue,
    on_device: Callable[[dict, str], dict],
) -> Callable[..., Coroutine]:
    """The endpoint run by the inference queue; ``on_device(kwargs, device)`` points a request at its worker's device."""
    signature = inspect.signature(endpoint, eval_str=True)

    async def run(request: Request, **kwargs):
        check_request(endpoint, kwargs)  # cheap: before the request waits for a worker
        model_name, client_id = kwargs.get("model", ""), _client_id(request, kwargs.get("params"))
        work = lambda device: finish(endpoint(**on_device(kwargs, device)))  # noqa: E731
        return await queue.run(model_name, client_id, work, request.is_disconnected, signed_in_user())

    request_parameter = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
    run.__signature__ = signature.replace(parameters=[request_parameter, *signature.parameters.values()])
    run.__name__, run.__doc__ = endpoint.__name__, endpoint.__doc__
    return run


def _client_id(request: Request, params: Any) -> str:
    """The Slicer module sends its "Client/User-ID" as ``client_id`` in the params."""
    if isinstance(params, str):
        try:
            params = json.loads(params or "{}")
        except ValueError:
            params = None
    found = params.get("client_id") if isinstance(params, dict) else None
    return str(found) if found else f"@{request.client.host if request.client else '?'}"


def _infer_on_device(kwargs: dict, device: str) -> dict:
    """``/infer``'s params are a JSON form field; the worker's device goes in there. Malformed JSON is
    left for the endpoint to answer (400)."""
    try:
        params = json.loads(kwargs.get("params") or "{}")
    except ValueError:
        return kwargs
    if not isinstance(params, dict):
        return kwargs
    return {**kwargs, "params": json.dumps({**params, "device": device})}


def _unchanged(kwargs: dict, device: str) -> dict:
    """Batch inference names its own devices (its params) and mostly runs in a task process."""
    return kwargs


def _route(app: FastAPI, path: str, endpoint: Callable[..., Any], methods, **described) -> APIRoute:
    """Every route the request layer adds is made here: the one place for what applies to all endpoints.
    A route built outside ``app.router`` resolves its dependencies with the app's overrides only when told
    where they are: without them MONAI Label's user dependency names its default "admin" (who updated a
    label's info, in the datastore and the log) instead of the signed-in user."""
    return APIRoute(settings.MONAI_LABEL_API_STR + path, endpoint, methods=methods, dependency_overrides_provider=app, **described)


def _in_front_of(app: FastAPI, route: APIRoute, endpoint: Callable[..., Any]) -> APIRoute:
    """Same URL and description as ``route``, answered by ``endpoint``. The stock route stays in the OpenAPI
    schema (same parameters); it is never reached."""
    return _route(
        app,
        route.path,
        endpoint,
        route.methods,
        name=route.name,
        summary=route.summary,
        description=route.description,
        tags=route.tags,
        responses=route.responses,
        response_class=route.response_class,
        dependencies=route.dependencies,
        include_in_schema=False,
    )


def install(app: FastAPI, queue: InferQueue) -> None:
    queued_endpoints = {infer.api_run_inference: _infer_on_device, batch_infer.api_run: _unchanged}
    routers = [infer.router, *(r.router for r in THREADED_ROUTERS)]
    if settings.MONAI_LABEL_AUTH_ENABLE:
        routers.append(login.router)
    front = []
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            on_device = queued_endpoints.get(route.endpoint)
            front.append(_in_front_of(app, route, queued(route.endpoint, queue, on_device) if on_device else threaded(route.endpoint)))

    async def queue_status(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        """Running and waiting inference requests: model, client id, age (s); the queue's size and counts.
        A signed-in user below admin sees only their own requests, and how many others run and wait."""
        current = requester()
        return queue.snapshot(None if current is None or allows(current.roles, ADMIN) else current.username)

    front.append(_route(app, "/queue/", queue_status, ["GET"], tags=["Infer"], summary=f"{RBAC_USER}Inference queue: running and waiting requests"))
    app.router.routes[0:0] = front
    logger.info(
        f"Requests off the event loop: {len(front)} routes; inference queue: {queue.workers} worker(s) on {queue.devices}, "
        f"{queue.capacity} may wait, at most {queue.wait_s:.0f} s"
    )
