"""`/v1/models`: the one model this server serves."""

from __future__ import annotations

from fastapi import APIRouter

from .. import protocol as api
from . import ERROR_RESPONSES, Served

router = APIRouter()


@router.get("/v1/models", response_model=api.ModelList, responses=ERROR_RESPONSES)
async def models(served: Served) -> api.ModelList:
    card = api.ModelCard(
        id=served.name, created=served.created, max_model_len=served.context_window_size
    )
    return api.ModelList(data=[card])
