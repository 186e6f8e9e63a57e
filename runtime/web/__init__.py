"""Running `webgpu` builds outside a browser: Deno's WebGPU with the TVM JavaScript runtime."""

from .deno import DenoMissingError, find_deno, run_greedy

__all__ = ["DenoMissingError", "find_deno", "run_greedy"]
