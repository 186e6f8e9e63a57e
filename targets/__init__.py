"""Target presets by name: everything that differs per target lives here."""

from __future__ import annotations

from .base import TargetPreset
from .llvm import LLVMTarget

TARGETS: dict[str, TargetPreset] = {t.name: t for t in (LLVMTarget(),)}


def get_target(name: str) -> TargetPreset:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose one of: {', '.join(sorted(TARGETS))}")
    return TARGETS[name]


__all__ = ["TARGETS", "TargetPreset", "get_target"]
