"""Shared fixtures: tiny random models, built once per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mlc.build import BuildOptions, build
from mlc.testing.random_model import save_model


def _settings_dir(options: tuple[tuple[str, object], ...]) -> str:
    """`(("target", "webgpu"),)` -> `target=webgpu`; no options -> `default`."""
    return ",".join(f"{name}={value}" for name, value in options) or "default"


class TinyBuilds:
    """Builds each (name, settings) once; tests share the artifacts read-only."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[tuple, tuple[Path, Path]] = {}

    def get(
        self,
        name: str,
        quantization: str = "q0f32",
        build_options: dict | None = None,
        **model_settings,
    ) -> tuple[Path, Path]:
        """(Hugging Face model dir, built artifact dir)."""
        key = (name, quantization, tuple(sorted((build_options or {}).items())))
        if key not in self._cache:
            hf_dir = self.root / "hf" / name
            if not hf_dir.exists():
                save_model(hf_dir, **model_settings)
            out = build(
                BuildOptions(
                    model=hf_dir,
                    quantization=quantization,
                    output=self.root / "dist" / _settings_dir(key[2]),
                    quiet=True,
                    **(build_options or {}),
                )
            )
            self._cache[key] = (hf_dir, out)
        return self._cache[key]


@pytest.fixture(scope="session")
def tiny_builds(tmp_path_factory) -> TinyBuilds:
    return TinyBuilds(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def smollm2_builds(tmp_path_factory):
    """The embedded default (SmolLM2 Q4_1 GGUF) built with a quantization code, once each."""
    from mlc.default_model import embedded_gguf

    out = tmp_path_factory.mktemp("smollm2")
    cache: dict[str, Path] = {}

    def get(code: str) -> Path:
        if code not in cache:
            cache[code] = build(
                BuildOptions(model=embedded_gguf(), quantization=code, output=out, quiet=True)
            )
        return cache[code]

    return get
