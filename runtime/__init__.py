"""The chat runtime: loads a built model (library, weights, config) and generates text.

It imports nothing from the compiler side, only TVM's runtime, numpy and `tokenizers`.
"""

from .artifact import ArtifactError
from .chat_module import ChatModule, GenerationStats
from .compiled_model import CompiledModel, ContextWindowExceeded
from .conversation import TEMPLATES, ConversationTemplate, get_template
from .generation_config import GenerationConfig

__all__ = [
    "TEMPLATES",
    "ArtifactError",
    "ChatModule",
    "CompiledModel",
    "ContextWindowExceeded",
    "ConversationTemplate",
    "GenerationConfig",
    "GenerationStats",
    "get_template",
]
