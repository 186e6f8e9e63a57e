"""The API's routers, and the dependencies their handlers use to reach the served model, the
metrics and the `--lenient` setting (kept on `app.state` by `create_app`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .. import protocol as api
from ..metrics import ServerMetrics
from ..service import ServedModel

ERROR_RESPONSES = {
    status: {"model": api.ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}


async def served_model(request: Request) -> ServedModel:
    """The model `create_app` was given (async: no trip through the thread pool)."""
    return request.app.state.served


async def server_metrics(request: Request) -> ServerMetrics:
    """The app's request and token counters."""
    return request.app.state.metrics


async def lenient(request: Request) -> bool:
    """Whether unknown request fields are ignored (`mlc serve --lenient`) instead of refused."""
    return request.app.state.lenient


Served = Annotated[ServedModel, Depends(served_model)]
Metrics = Annotated[ServerMetrics, Depends(server_metrics)]
Lenient = Annotated[bool, Depends(lenient)]
