"""Running `webgpu` builds: in Deno's WebGPU (`run_greedy`), and in a browser through the chat
page that `mlc web` serves or exports (`server.py`, `chat/`)."""

from .deno import find_deno, run_greedy

__all__ = ["find_deno", "run_greedy"]
