"""Keep PyTorch out of processes that only run compiled models."""

from __future__ import annotations

import sys


def skip_torch() -> None:
    """`tvm_ffi` imports PyTorch at start-up whenever it is installed, about 200 MB resident
    that the runtime never uses. Make `import torch` fail in this process instead; call before
    TVM is first imported (the `mlc chat`, `bench` and `serve` commands do)."""
    if "tvm" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
