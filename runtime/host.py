"""What this machine provides outside Python: the per-user cache directory, and the error for an
external tool (a compiler, a device runtime) that is not installed."""

from __future__ import annotations

import os
from pathlib import Path


class ToolMissingError(RuntimeError):
    """A tool mlc needs (a compiler, a runtime, a driver) is not installed; says how to get it."""


def cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/mlc/<parts>` (`~/.cache/mlc/<parts>` by default); not created."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "mlc", *parts)
