"""Lower a causal LM to a Relax IRModule, stamp it with its metadata and compile it."""

from __future__ import annotations

import json
from typing import Any

import tvm
from tvm import relax
from tvm.relax.frontend import nn

from mlc.pipeline import relax_pipeline
from mlc.runtime.artifact import METADATA_FUNC
from mlc.targets import TargetPreset, get_target
from mlc.targets.kv_cache_dispatch import dispatch_kv_cache_creation


def export_model(
    model: nn.Module, target: tvm.target.Target, preset: TargetPreset | None = None
) -> tuple[tvm.ir.IRModule, list[tuple[str, nn.Parameter]]]:
    """The model's exported functions, with the target's KV cache and attention kernels in
    place of the model's generic ones, and its parameters in calling order. `preset` defaults
    to the one named like the target's kind."""
    preset = preset or get_target(target.kind.name)
    with target:
        mod, params = model.export_tvm(spec=model.get_default_spec())
    return dispatch_kv_cache_creation(preset, target)(mod), params


def attach_shape_bounds(
    mod: tvm.ir.IRModule, prefill_chunk_size: int, max_batch_size: int
) -> tvm.ir.IRModule:
    """Upper bounds for symbolic dims, so memory planning can preallocate every buffer."""
    bounds = {
        "seq_len": prefill_chunk_size,
        # Logit positions in one prefill: every token of a chunk (perplexity, scoring).
        "num_seqs": prefill_chunk_size,
        "batch_size": max_batch_size,
    }
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and gvar.name_hint in ("embed", "prefill", "decode"):
            func = func.with_attr("tir_var_upper_bound", bounds)
            func = func.with_attr("tir_non_negative_var", list(bounds))
            mod[gvar] = func
    return mod


def attach_metadata(mod: tvm.ir.IRModule, metadata: dict[str, Any]) -> tvm.ir.IRModule:
    """A `_metadata()` function returning the JSON the runtime checks at load time."""
    func = relax.Function([], tvm.ir.StringImm(json.dumps(metadata)), is_pure=True)
    mod[METADATA_FUNC] = func.with_attr("global_symbol", METADATA_FUNC)
    return mod


def compile_module(
    mod: tvm.ir.IRModule, preset: TargetPreset, target: tvm.target.Target
) -> tvm.runtime.Executable:
    with preset.compiling(target):
        return relax.build(
            mod,
            target,
            relax_pipeline=relax_pipeline(preset, target),
            system_lib=preset.system_lib or None,
        )
