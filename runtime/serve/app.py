"""The FastAPI application: OpenAI-compatible routes over a `ServedModel`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from .errors import (
    APIError,
    handle_api_error,
    handle_http_error,
    handle_unexpected,
    handle_validation_error,
)
from .metrics import ServerMetrics
from .middleware import APIKeyMiddleware, BodyLimitMiddleware, RequestCountMiddleware
from .routes import ERROR_RESPONSES, chat, completions, models, system
from .service import ServedModel

__all__ = ["ENDPOINTS", "ERROR_RESPONSES", "create_app"]

ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"}


def create_app(
    served: ServedModel,
    api_key: str | None = None,
    max_body_bytes: int = 1 << 20,
    shutdown_timeout: float = 30.0,
    lenient: bool = False,
) -> FastAPI:
    metrics = ServerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        # Uvicorn has already waited for in-flight responses; end whatever is left cleanly.
        await asyncio.to_thread(served.engine.shutdown, shutdown_timeout)

    app = FastAPI(title="mlc serve", summary="OpenAI-compatible API", lifespan=lifespan)
    app.add_exception_handler(APIError, handle_api_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(HTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(RequestCountMiddleware, metrics=metrics, endpoints=ENDPOINTS)
    for module in (system, models, chat, completions):
        app.include_router(module.router)
    app.state.served = served
    app.state.metrics = metrics
    app.state.lenient = lenient
    return app
