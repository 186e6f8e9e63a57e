"""The compiler pass that turns a model's generic KV-cache creation into the target's cache.

Models emit `mlc.create_paged_kv_cache_generic` with a `KVCacheSpec` (models/kv_cache.py).
This pass builds TVM's TIR paged KV cache for the target in its place and decides, from the
spec's `AttentionFacts` and the preset, how the attention variant is computed:

- where the preset's kernels compute it (`TargetPreset.computes_attention_variant`), the
  cache's kernels are stamped with `mlc.attention_window`, `mlc.attention_softcap` and
  `mlc.attention_alibi`, and each sliding layer passes its `sm_scale` negated, the only
  per-layer signal the cache hands its kernels (targets/cpu_attention_common.py);
- elsewhere the kernels attend to every key without capping, so `mlc build` keeps the context
  inside the window (see `fit_context_to_attention`), and ALiBi is refused.

On GPU targets the cache's merge of partial attention results is ours (`gpu_merge_state.py`).
"""

from __future__ import annotations

import warnings

import tvm
from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend.nn.llm.kv_cache import TIRPagedKVCache
from tvm.target import Target

from mlc.models.kv_cache import GENERIC_KV_CACHE, AttentionFacts, KVCacheSpec

from .base import TargetPreset
from .cpu_attention_common import ALIBI_ATTR, SOFTCAP_ATTR, WINDOW_ATTR
from .gpu_merge_state import replace_merge_state

CREATE_FUNC = "create_paged_kv_cache"
ATTENTION_CALL = "vm.builtin.attention_kv_cache_attention_with_fused_qkv"


def fit_context_to_attention(
    preset: TargetPreset, facts: AttentionFacts, head_dim: int, context: int, chunk: int
) -> tuple[int, int]:
    """(context window, prefill chunk) the build may use with this preset's kernels: inside
    the sliding window where they cannot slide. Refuses ALiBi where they cannot add it."""
    if preset.computes_attention_variant(head_dim):
        return context, chunk
    if facts.alibi:
        raise ValueError(
            "ALiBi attention is computed by our CPU attention kernels only (head_dim a "
            f"multiple of 8, here {head_dim}): build this model for --target llvm"
        )
    if facts.softcap:
        warnings.warn(
            f"attention soft-capping ({facts.softcap}) is not applied: the {preset.name} "
            "target's attention kernels cannot do it; logits differ slightly from the reference",
            stacklevel=2,
        )
    window = facts.sliding_window
    if window:
        return min(context, window), min(chunk, window)
    return context, chunk


def dispatch_kv_cache_creation(preset: TargetPreset, target: Target) -> tvm.transform.Pass:
    """Replace the generic `create_paged_kv_cache` with the target's (see the module doc)."""

    @tvm.transform.module_pass(opt_level=0, name="DispatchKVCacheCreation")
    def _dispatch(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        if CREATE_FUNC not in {g.name_hint for g in mod.get_global_vars()}:
            return mod
        func = mod[CREATE_FUNC]
        dims, spec = _generic_call(func)
        variant = preset.computes_attention_variant(spec.head_dim)
        rest = tvm.IRModule(
            {g: f for g, f in mod.functions.items() if g.name_hint != CREATE_FUNC},
            attrs=mod.attrs,
        )
        bb = rx.BlockBuilder(rest)
        before = {g.name_hint for g in rest.get_global_vars()}
        with bb.function(CREATE_FUNC, params=list(func.params), attrs=dict(func.attrs or {})):
            cache = _tir_cache(spec, dims, target)
            bb.emit_func_output(bb.emit(cache._expr, "paged_kv_cache"))
        out = bb.finalize()
        if target.kind.name != "llvm":
            replace_merge_state(out, spec.num_attention_heads, spec.head_dim, spec.dtype)
        if variant:
            _stamp_kernels(out, before, spec.attention)
            if spec.attention.sliding_window and spec.attention.sliding_layers:
                out = _negate_sliding_scales(out, set(spec.attention.sliding_layers))
        return out

    return _dispatch


def _generic_call(func: rx.Function) -> tuple[list[tirx.PrimExpr], KVCacheSpec]:
    calls = []

    def visit(expr) -> None:
        if (
            isinstance(expr, rx.Call)
            and isinstance(expr.args[0], rx.ExternFunc)
            and expr.args[0].global_symbol == GENERIC_KV_CACHE
        ):
            calls.append(expr)

    rx.analysis.post_order_visit(func.body, visit)
    if len(calls) != 1:
        raise ValueError(f"{CREATE_FUNC} must make one {GENERIC_KV_CACHE} call, found {len(calls)}")
    shape, spec = calls[0].args[1], calls[0].args[2]
    return list(shape.values), KVCacheSpec.from_json(str(spec.value))


def _tir_cache(spec: KVCacheSpec, dims: list[tirx.PrimExpr], target: Target) -> TIRPagedKVCache:
    max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, sliding = dims
    return TIRPagedKVCache(
        attn_kind="mha",
        max_batch_size=max_batch_size,
        max_total_seq_len=max_total_seq_len,
        prefill_chunk_size=prefill_chunk_size,
        page_size=page_size,
        support_sliding_window=sliding,
        layer_partition=rx.ShapeExpr([0, spec.num_hidden_layers]),
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        qk_head_dim=spec.head_dim,
        v_head_dim=spec.head_dim,
        mla_original_qk_head_dim=0,
        mla_original_v_head_dim=0,
        rope_mode=spec.rope_mode,
        rope_scale=spec.rope_scale,
        rope_theta=spec.rope_theta,
        rope_scaling=dict(spec.rope_scaling),
        rope_ext_factors=rx.prim_value(0),
        rotary_dim=spec.rotary_dim or spec.head_dim,
        enable_disaggregation=False,
        dtype=spec.dtype,
        target=target,
    )


def _stamp_kernels(mod: tvm.ir.IRModule, before: set[str], facts: AttentionFacts) -> None:
    """The attention variant as attributes of every kernel the cache added."""
    attrs: dict = {}
    if facts.sliding_window:
        attrs[WINDOW_ATTR] = int(facts.sliding_window)
    if facts.softcap:
        attrs[SOFTCAP_ATTR] = float(facts.softcap)
    if facts.alibi:
        attrs[ALIBI_ATTR] = [float(x) for x in facts.alibi]
    for gvar, func in list(mod.functions.items()):
        if attrs and isinstance(func, tirx.PrimFunc) and gvar.name_hint not in before:
            for key, value in attrs.items():
                func = func.with_attr(key, value)
            mod[gvar] = func


@rx.expr_functor.mutator
class _SlidingScales(rx.PyExprMutator):
    """Negate `sm_scale` in the attention calls of the sliding layers."""

    def __init__(self, mod: tvm.ir.IRModule, layers: set[int]):
        super().__init__(mod)
        self.layers = layers

    def visit_call_(self, call: rx.Call) -> rx.Expr:
        call = super().visit_call_(call)
        func = call.args[0] if call.args else None
        if not (isinstance(func, rx.ExternFunc) and func.global_symbol == ATTENTION_CALL):
            return call
        cache, layer, scale, qkv = call.args[1].fields
        if int(layer.value) not in self.layers:
            return call
        negated = rx.prim_value(-float(scale.value))
        args = [func, rx.Tuple([cache, layer, negated, qkv])]
        return rx.Call(call.op, args, call.attrs, call.ty_args)


def _negate_sliding_scales(mod: tvm.ir.IRModule, layers: set[int]) -> tvm.ir.IRModule:
    mutator = _SlidingScales(mod, layers)
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, rx.Function) and gvar.name_hint != CREATE_FUNC:
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()
