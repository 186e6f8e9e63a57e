"""The chat runtime: loads a built model (library, weights, config) and generates text.

It imports nothing from the compiler side, only TVM's runtime, numpy and `tokenizers`. Names
are loaded on first use, so that `import mlc.runtime.<module>` starts TVM only where that
module needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArtifactError": "chat_config",
    "ChatConfig": "chat_config",
    "ChatModule": "chat_module",
    "GenerationStats": "chat_module",
    "CompiledModel": "compiled_model",
    "ContextWindowExceeded": "compiled_model",
    "TEMPLATES": "conversation",
    "ConversationTemplate": "conversation",
    "get_template": "conversation",
    "GenerationConfig": "generation_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mlc.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
