"""`/health` and `/metrics` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from . import Metrics, Served

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", response_class=PlainTextResponse)
async def get_metrics(served: Served, metrics: Metrics) -> str:
    return metrics.render(served.engine.stats())
