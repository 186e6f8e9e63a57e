"""`mlc serve`: an OpenAI-compatible HTTP server over the continuous-batching engine."""

from .app import create_app
from .service import EngineOptions, ServedModel

__all__ = ["EngineOptions", "ServedModel", "create_app"]
