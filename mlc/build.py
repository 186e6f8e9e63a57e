"""`mlc build`: Hugging Face model directory → `<output>/<model>-<quantization>/` artifact.

Everything is written into a hidden staging directory beside the destination and moved into
place only when the build has succeeded, so a failed or interrupted build leaves nothing behind.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tqdm import tqdm

from mlc import __version__
from mlc.compiler import attach_metadata, attach_shape_bounds, compile_module, export_model
from mlc.gguf.checkpoint import GGUFCheckpoint
from mlc.hf_checkpoint import HFCheckpoint
from mlc.models import get_architecture
from mlc.quantization import Quantization, get_quantization
from mlc.quantization.base import CPU_TARGETS
from mlc.quantization.fidelity import WeightChange, block_quantized_sources, requantization_line
from mlc.runtime.artifact import library_name
from mlc.runtime.chat_config import ARTIFACT_FORMAT_VERSION, GENERATION_DEFAULT_KEYS, ChatConfig
from mlc.runtime.chat_format import FORMAT_NAME, write_chat_format
from mlc.runtime.conversation import get_template
from mlc.runtime.generation_config import DEFAULTS
from mlc.runtime.tensor_cache import TensorCacheWriter
from mlc.targets import get_target, target_summary
from mlc.targets.kv_cache_dispatch import fit_context_to_attention

# Sequences one batched decode step can serve (`mlc serve`); single-sequence chat costs nothing
# extra: it only raises the planned upper bound of the decode activations.
DEFAULT_MAX_BATCH_SIZE = 16


@dataclasses.dataclass
class BuildOptions:
    model: Path
    quantization: str | None = None  # None: `default_quantization`
    target: str = "llvm"
    arch: str | None = None
    output: Path = Path("dist")
    conv_template: str | None = None
    context_window_size: int | None = None
    prefill_chunk_size: int | None = None
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    kv_cache_dtype: str = "auto"  # the quantization's choice, or float32 / float16
    quiet: bool = False


KV_CACHE_DTYPES = ("auto", "float32", "float16")


def kv_cache_dtype(choice: str, quant: Quantization) -> str:
    """The dtype the paged KV cache keeps K and V in: `auto` is the quantization's default,
    the model's dtype."""
    if choice not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown KV cache dtype {choice!r}; choose one of: {KV_CACHE_DTYPES}")
    return quant.kv_cache_dtype if choice == "auto" else choice


def _log(opts: BuildOptions, message: str) -> None:
    if not opts.quiet:
        print(message, file=sys.stderr, flush=True)


def build(opts: BuildOptions) -> Path:
    """Build the artifact; returns the model directory it wrote."""
    start = time.perf_counter()
    model_path = Path(opts.model).resolve()
    checkpoint = open_checkpoint(model_path)
    arch = get_architecture(checkpoint.config)
    preset = get_target(opts.target).with_options(arch=opts.arch)
    quant = get_quantization(opts.quantization or default_quantization(checkpoint))
    quant = quant.for_target(preset.name)
    if quant.cpu_only and preset.name not in CPU_TARGETS:
        raise ValueError(
            f"--quantization {quant.name} runs on the CPU targets (llvm, arm64) only: its kernels "
            f"multiply int8 activations, which only the CPU's do; for {preset.name} use "
            "--quantization q4f16_1 (or q4f32_1 where the device has no fp16)"
        )
    # None: the model's own chat template if it has one, else the raw-text `LM` template.
    conv_template = get_template(opts.conv_template).name if opts.conv_template else None
    if opts.max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {opts.max_batch_size}")
    config = arch.CONFIG.from_hf(checkpoint.config)
    config.kv_cache_dtype = kv_cache_dtype(opts.kv_cache_dtype, quant)
    if opts.context_window_size:
        config.context_window_size = opts.context_window_size
    if opts.prefill_chunk_size or opts.context_window_size:
        chunk = opts.prefill_chunk_size or config.prefill_chunk_size
        config.prefill_chunk_size = min(chunk, config.context_window_size)
    model = arch.MODEL(config, dtype=quant.model_dtype)
    # Where the target's kernels cannot compute the attention variant, stay where they agree.
    config.context_window_size, config.prefill_chunk_size = fit_context_to_attention(
        preset,
        model.attention_facts(),
        config.head_dim,
        config.context_window_size,
        config.prefill_chunk_size,
    )

    model_name = checkpoint.model_name
    # The CPU build is `<model>-<quant>`; every other target gets its own folder, so building
    # a model for several devices keeps each artifact whole.
    artifact_name = f"{model_name}-{quant.name}"
    if preset.name != "llvm":
        artifact_name += f"-{preset.name}"
    output = Path(opts.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    final_dir = output / artifact_name
    staging = Path(tempfile.mkdtemp(prefix=f".{artifact_name}.partial-", dir=output))
    try:
        target = preset.tvm_target()
        source_names = [name for name, _ in model.named_parameters()]
        weight_map = arch.hf_weight_map(config)
        missing = [n for n in source_names if n not in weight_map]
        if missing:
            raise ValueError(f"{arch.__name__} maps no Hugging Face weights to: {missing}")
        ordered = {n: weight_map[n] for n in source_names}
        quant = quant.for_checkpoint(checkpoint, ordered)
        for line in quant.summary():
            _log(opts, f"Weights: {line}")
        if getattr(config, "num_experts", 0) and not quant.name.startswith("q0"):
            if quant.quantizes_experts:
                _log(
                    opts,
                    f"Weights: the mixture-of-experts' expert weights follow {quant.name} "
                    "like the other weights",
                )
            else:
                _log(
                    opts,
                    f"Weights: the mixture-of-experts' expert weights stay in {quant.model_dtype} "
                    f"({quant.name} has no expert kernels; q4f16_1, q4f32_1, q4a8_1, q4a8_2 "
                    "and gguf do)",
                )
        model = quant.quantize_model(model)
        mod, named_params = export_model(model, target, preset)
        param_meta = [
            {"name": n, "shape": [int(d) for d in p.shape], "dtype": p.dtype}
            for n, p in named_params
        ]
        measured = {} if quant.name == "gguf" else block_quantized_sources(checkpoint, ordered)
        change = _convert_weights(opts, checkpoint, ordered, quant, param_meta, staging, measured)
        if measured:
            types = set().union(*measured.values())
            _log(opts, f"Weights: {requantization_line(quant.name, types, change)}")

        lib_name = library_name(model_name, quant.name, preset.name, preset.library_suffix)
        metadata = {
            "artifact_format_version": ARTIFACT_FORMAT_VERSION,
            "builder": f"mlc {__version__}",
            "tvm_version": tvm.__version__,
            "model_type": checkpoint.config["model_type"],
            "quantization": quant.name,
            "quantization_scheme": quant.describe(),
            "target": str(target),
            "model_config": config.to_dict(),
            "max_batch_size": opts.max_batch_size,
            "params": param_meta,
        }
        mod = attach_metadata(
            attach_shape_bounds(mod, config.prefill_chunk_size, opts.max_batch_size), metadata
        )
        mod = preset.prepare_module(mod, Path(lib_name).stem)
        _log(opts, f"Compiling for {preset.name} ({target_summary(target)}) ...")
        t0 = time.perf_counter()
        executable = compile_module(mod, preset, target)
        preset.export(executable, staging / lib_name)
        _log(opts, f"Compiled {lib_name} in {time.perf_counter() - t0:.1f} s")

        tokenizer_files = checkpoint.write_tokenizer(staging)
        chat_config = _chat_config(
            checkpoint,
            model_path,
            config.to_dict(),
            quant,
            preset.name,
            lib_name,
            conv_template,
            opts.max_batch_size,
            tokenizer_files,
            staging,
        )
        chat_config.save(staging)
        unreduced = write_chat_format(staging)
        if unreduced is not None:
            _log(opts, f"No {FORMAT_NAME}: {unreduced}")
        _replace_dir(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _log(opts, f"Built {final_dir} in {time.perf_counter() - start:.1f} s")
    return final_dir


def _convert_weights(
    opts: BuildOptions,
    checkpoint: HFCheckpoint | GGUFCheckpoint,
    weight_map: dict,
    quant: Any,
    param_meta: list[dict[str, Any]],
    out_dir: Path,
    measured: dict[str, Any],
) -> WeightChange:
    """Stream every parameter from the checkpoint into the tensor cache, in calling order;
    returns how far the `measured` parameters moved from the checkpoint's values."""
    writer = TensorCacheWriter(out_dir)
    expected = iter(param_meta)
    change = WeightChange()

    def convert(item: tuple[str, Any]) -> tuple[int, list[tuple[str, np.ndarray]]]:
        our_name, source = item
        if our_name not in measured:
            return quant.convert_source(our_name, source, checkpoint)
        array = source.build([checkpoint.get(n) for n in source.hf_names])
        tensors = list(quant.convert(our_name, array))
        with lock:
            change.add(array, quant.dequantize_stored(tensors, array.shape[-1]))
        return array.size, tensors

    lock = threading.Lock()
    converted = _ordered_map(convert, weight_map.items(), workers=os.cpu_count() or 1)
    for size, tensors in tqdm(
        converted,
        total=len(weight_map),
        desc="Converting weights",
        unit="tensor",
        disable=opts.quiet,
    ):
        for i, (name, stored) in enumerate(tensors):
            want = next(expected, None)
            if want is None or want["name"] != name or list(stored.shape) != want["shape"]:
                raise ValueError(
                    f"weight {name} {list(stored.shape)} does not fit the model, which expects "
                    f"{want and (want['name'], want['shape'])}; is config.json from the same "
                    "model as the weights?"
                )
            # The model parameters count once, with the first tensor they are stored as.
            writer.add(name, stored, logical_size=size if i == 0 else 0)
    leftover = [p["name"] for p in expected]
    if leftover:
        raise ValueError(f"no weights were converted for: {leftover}")
    writer.finish()
    return change


def default_quantization(checkpoint: HFCheckpoint | GGUFCheckpoint) -> str:
    """`gguf` for a GGUF file (its weights as the file stores them), else `q0f32`."""
    return "gguf" if isinstance(checkpoint, GGUFCheckpoint) else "q0f32"


def _ordered_map(func, items, workers: int) -> Iterator:
    """`map(func, items)` on a thread pool (numpy releases the GIL while quantizing), in
    order, with at most `2 * workers` results held at once to bound memory."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(func, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _generation_defaults(gen: dict[str, Any]) -> dict[str, Any]:
    """The model's `generation_config.json` where it sets a value, else `DEFAULTS`."""
    defaults = {k: DEFAULTS[k] for k in GENERATION_DEFAULT_KEYS}
    for key in ("temperature", "top_p", "top_k", "repetition_penalty"):
        if gen.get(key) is not None:
            defaults[key] = gen[key]
    if gen.get("max_new_tokens"):
        defaults["max_tokens"] = gen["max_new_tokens"]
    return defaults


def _special_token_ids(hf_config: dict[str, Any], gen: dict[str, Any]) -> dict[str, Any]:
    ids = {k: hf_config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    ids.update({k: gen[k] for k in ids if gen.get(k) is not None})
    return ids


def open_checkpoint(path: Path) -> HFCheckpoint | GGUFCheckpoint:
    """A Hugging Face model directory, or a single `.gguf` file."""
    if path.suffix == ".gguf" and not path.is_dir():
        return GGUFCheckpoint(path)
    return HFCheckpoint(path)


def _chat_template(out_dir: Path) -> str | None:
    path = out_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) else None


def _chat_config(
    checkpoint: HFCheckpoint | GGUFCheckpoint,
    model_path: Path,
    model_config: dict[str, Any],
    quant: Quantization,
    target: str,
    lib_name: str,
    conv_template: str | None,
    max_batch_size: int,
    tokenizer_files: list[str],
    out_dir: Path,
) -> ChatConfig:
    hf_config, gen = checkpoint.config, checkpoint.generation_config
    fields = {
        "artifact_format_version": ARTIFACT_FORMAT_VERSION,
        "builder": f"mlc {__version__}",
        "tvm_version": tvm.__version__,
        "model_type": hf_config["model_type"],
        "quantization": quant.name,
        "quantization_scheme": quant.describe(),
        "model_config": model_config,
        "vocab_size": model_config["vocab_size"],
        "context_window_size": model_config["context_window_size"],
        "prefill_chunk_size": model_config["prefill_chunk_size"],
        "max_batch_size": max_batch_size,
        **_generation_defaults(gen),
        "conv_template": conv_template,
        "chat_template": _chat_template(out_dir),
        "tokenizer_files": tokenizer_files,
        **_special_token_ids(hf_config, gen),
        "model_lib": lib_name,
        "target": target,
        "source_model": str(model_path),
    }
    return ChatConfig.from_dict(fields, "the chat config being built")


def _replace_dir(staging: Path, final_dir: Path) -> None:
    """Move the finished build into place, replacing an older build of the same name."""
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{time.time_ns()}")
        final_dir.rename(old)
        staging.rename(final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final_dir)
