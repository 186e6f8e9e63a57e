"""mlc: compile large language models with Apache TVM and chat with them, CPU first."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ChatModule", "GenerationConfig", "__version__"]


def __getattr__(name: str):
    # Loaded on first use, so that `import mlc.<tool>` does not start TVM (the llama.cpp
    # reference of `mlc bench` must not share a process with TVM's OpenMP runtime).
    if name in ("ChatModule", "GenerationConfig"):
        from mlc import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'mlc' has no attribute {name!r}")
