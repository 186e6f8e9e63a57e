"""mlc: compile large language models with Apache TVM and chat with them, CPU first."""

from mlc.runtime import ChatModule, GenerationConfig

__version__ = "0.1.0"

__all__ = ["ChatModule", "GenerationConfig", "__version__"]
