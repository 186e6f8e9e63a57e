"""Running `webgpu` builds: in Deno's WebGPU (`run_greedy`), and in a browser through the chat
page that `mlc web` serves or exports (`server.py`, `chat/`)."""

from .deno import DenoMissingError, find_deno, run_greedy

__all__ = ["DenoMissingError", "find_deno", "run_greedy"]
