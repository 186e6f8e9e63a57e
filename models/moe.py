"""Mixture-of-experts MLP: a router picks `top_k` experts per token (the top of its softmax over
all experts, optionally renormalised), and only those experts' weights are read.

The experts' weights are stacked `[experts, out, in]`; each expert matmul gathers its rows by the
token's chosen expert ids, so a token costs `top_k` experts' weights, never all of them. The
router's top-k is a rank count (each expert's place among the token's probabilities), which
every target compiles without a sort.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from .base import WeightSource
from .layers import ACTIVATIONS


@dataclasses.dataclass
class MoEFields:
    """The expert layout of a mixture-of-experts config."""

    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    norm_topk_prob: bool  # renormalise the chosen experts' probabilities to sum to 1
    moe_layers: list[int]  # the layers whose MLP is the experts (the others stay dense)


def moe_fields(
    hf: dict[str, Any],
    model_type: str,
    num_layers: int,
    *,
    intermediate_key: str = "moe_intermediate_size",
) -> dict[str, Any]:
    """The `MoEFields` of a `config.json`; refuses what we cannot run, naming the field. The
    expert count is `num_experts` or `num_local_experts` (transformers 5 writes the latter)."""
    experts = hf.get("num_experts") or hf.get("num_local_experts")
    if not experts or int(experts) < 1:
        raise ValueError(f"{model_type}: config.json lacks 'num_experts' (the expert count)")
    top_k = int(hf.get("num_experts_per_tok", 2))
    if not 1 <= top_k <= int(experts):
        raise ValueError(f"{model_type}: num_experts_per_tok {top_k} is not in 1..{experts}")
    if hf.get("scoring_func", "softmax") != "softmax":
        raise ValueError(
            f"{model_type}: scoring_func {hf['scoring_func']!r} is not supported (softmax only)"
        )
    step = int(hf.get("decoder_sparse_step", 1) or 1)
    dense = set(hf.get("mlp_only_layers") or [])
    return dict(
        num_experts=int(experts),
        num_experts_per_tok=top_k,
        moe_intermediate_size=int(hf.get(intermediate_key) or hf["intermediate_size"]),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        moe_layers=[i for i in range(num_layers) if i not in dense and (i + 1) % step == 0],
    )


def route(probs: Tensor, top_k: int, normalize: bool) -> tuple[Tensor, Tensor]:
    """`(weights[tokens, top_k] float32, expert ids[tokens, top_k] int32)`: the `top_k` largest
    of each row of `probs[tokens, experts]`, largest first (ties to the lower id), as
    `torch.topk` gives them."""
    num_experts = int(probs.shape[1])

    def rank_of(p: te.Tensor) -> te.Tensor:
        other = te.reduce_axis((0, num_experts), name="other")

        def ahead(t, e):  # experts placed before e
            before = tirx.any(p[t, other] > p[t, e], tirx.all(p[t, other] == p[t, e], other < e))
            return te.sum(before.astype("int32"), axis=other)

        return te.compute(p.shape, ahead, name="expert_rank")

    rank = op.tensor_expr_op(rank_of, "expert_rank", [probs])

    def pick(p: te.Tensor, r: te.Tensor, what: str) -> te.Tensor:
        e = te.reduce_axis((0, num_experts), name="e")
        tokens = p.shape[0]
        if what == "ids":
            return te.compute(
                (tokens, top_k),
                lambda t, j: te.sum(tirx.if_then_else(r[t, e] == j, e, 0).astype("int32"), axis=e),
                name="expert_ids",
            )
        return te.compute(
            (tokens, top_k),
            lambda t, j: te.sum(tirx.if_then_else(r[t, e] == j, p[t, e], 0.0), axis=e),
            name="expert_weights",
        )

    ids = op.tensor_expr_op(lambda p, r: pick(p, r, "ids"), "expert_ids", [probs, rank])
    weights = op.tensor_expr_op(lambda p, r: pick(p, r, "w"), "expert_weights", [probs, rank])
    if normalize:
        weights = weights / op.sum(weights, axis=-1, keepdims=True)
    return weights, ids


def gather_matmul(x: Tensor, weight: Tensor, ids: Tensor, name: str) -> Tensor:
    """`out[t, j, n] = sum_r x[t, (j,) r] * weight[ids[t, j], n, r]` in float32: the rows of the
    expert each token chose in slot j. `x` is `[tokens, in]` (every slot reads the same input)
    or `[tokens, top_k, in]`."""

    def compute(x: te.Tensor, w: te.Tensor, ids: te.Tensor) -> te.Tensor:
        return gathered_rows(
            x,
            ids,
            int(w.shape[1]),
            int(w.shape[2]),
            name,
            lambda e, n, r: w[e, n, r].astype("float32"),
        )

    return op.tensor_expr_op(compute, name, [x, weight, ids])


def gathered_rows(x: te.Tensor, ids: te.Tensor, n_out: int, n_in: int, name: str, weight_value):
    """The compute of a gather matmul whose weight value `weight_value(expert, n, r)` (float32)
    may be read from a packed, quantized layout."""
    tokens, top_k = ids.shape
    r = te.reduce_axis((0, n_in), name="r")

    def value(t, j, n):
        xv = x[t, r] if len(x.shape) == 2 else x[t, j, r]
        return te.sum(xv.astype("float32") * weight_value(ids[t, j], n, r), axis=r)

    return te.compute((tokens, top_k, n_out), value, name=name)


class Experts(nn.Module):
    """The stacked weights `[experts, out, in]` of one projection of every expert; called with
    the tokens' expert ids it multiplies each token by its chosen experts only (float32 out).
    The quantization schemes swap it for a twin that reads packed weights."""

    def __init__(
        self, num_experts: int, out_features: int, in_features: int, dtype: str, name: str
    ):
        self.num_experts = num_experts
        self.out_features = out_features
        self.in_features = in_features
        self.kernel_name = name
        self.weight = nn.Parameter((num_experts, out_features, in_features), dtype)

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        return gather_matmul(x, self.weight, ids, self.kernel_name)


class SparseMoE(nn.Module):
    """`sum_j weight_j * down_j(act(gate_j(x)) * up_j(x))` over the token's `top_k` experts;
    with `shared_expert`, plus that expert scaled by `sigmoid(shared_gate(x))` (Qwen2-MoE).
    `config` is a decoder config with the `MoEFields`."""

    def __init__(self, config: Any, dtype: str, shared_expert: nn.Module | None = None):
        e, inter, hidden_size = config.num_experts, config.moe_intermediate_size, config.hidden_size
        self.top_k = config.num_experts_per_tok
        self.normalize = config.norm_topk_prob
        self.act = ACTIVATIONS[config.hidden_act]
        self.num_experts = e
        # The router `[routes, hidden]`; with a shared expert, its gate is one more row (a
        # one-row matmul of its own is left to LLVM, which vectorises it across tokens: see
        # `cpu_schedules`). Not a `.weight`: no quantization code touches it, since a routing
        # decision that rounding flips swaps whole experts (llama.cpp keeps it float too).
        routes = e + (1 if shared_expert is not None else 0)
        self.router = nn.Parameter((routes, hidden_size), dtype)
        self.experts_gate_up = Experts(e, 2 * inter, hidden_size, dtype, "experts_gate_up")
        self.experts_down = Experts(e, hidden_size, inter, dtype, "experts_down")
        self.shared_expert = shared_expert

    def forward(self, x: Tensor) -> Tensor:
        b, s, h = x.shape
        flat = op.reshape(x, (b * s, h))
        logits = op.matmul(flat, op.permute_dims(self.router), out_dtype="float32")
        if self.shared_expert is not None:
            logits, shared_gate = op.split(logits, [self.num_experts], axis=-1)
        probs = op.softmax(logits, axis=-1)
        weights, ids = route(probs, self.top_k, self.normalize)
        gate_up = self.experts_gate_up(flat, ids)
        gate, up = op.split(gate_up, 2, axis=-1)
        hidden = self.act(gate) * up
        down = self.experts_down(hidden, ids)
        out = op.sum(down * op.unsqueeze(weights, -1), axis=1)
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat).astype("float32") * op.sigmoid(shared_gate)
        return op.reshape(out.astype(x.dtype), (b, s, h))


def stacked(names: Sequence[Sequence[str]]) -> WeightSource:
    """`[experts, rows, in]`: expert e's row blocks `names[e]` (gate then up, or down alone)
    concatenated, the experts stacked."""
    flat = tuple(n for group in names for n in group)
    per = len(names[0])

    def combine(arrays: Sequence[np.ndarray]) -> np.ndarray:
        groups = [np.concatenate(arrays[i : i + per], axis=0) for i in range(0, len(arrays), per)]
        return np.stack(groups)

    return WeightSource(flat, combine)


def moe_weights(
    mapping: dict[str, WeightSource],
    layers: Sequence[int],
    num_experts: int,
    hf_mlp: str,
    names: tuple[str, str, str, str] = ("gate", "gate_proj", "up_proj", "down_proj"),
) -> dict[str, WeightSource]:
    """`mapping` (a Llama-style map) with the MLPs of `layers` replaced by experts, read from
    Hugging Face's per-expert tensors `model.layers.{i}.{hf_mlp}.experts.{e}.{gate|up|down}`
    and the router `{hf_mlp}.{router}` (`names`: router, gate, up, down)."""
    router, gate, up, down = names
    for i in layers:
        ours, hf = f"layers.{i}.mlp", f"model.layers.{i}.{hf_mlp}"
        for n in ("up_proj.weight", "down_proj.weight"):
            mapping.pop(f"{ours}.{n}", None)
        mapping[f"{ours}.router"] = WeightSource((f"{hf}.{router}.weight",))
        experts = f"{hf}.experts"
        mapping.update(
            {
                f"{ours}.{k}": v
                for k, v in _expert_weights(experts, num_experts, gate, up, down).items()
            }
        )
    return mapping


def _expert_weights(
    prefix: str, num_experts: int, gate: str, up: str, down: str
) -> dict[str, WeightSource]:
    """Our `experts_gate_up` / `experts_down` from Hugging Face's per-expert tensors
    `{prefix}.{e}.{gate|up|down}.weight`."""
    return {
        "experts_gate_up.weight": stacked(
            [
                (f"{prefix}.{e}.{gate}.weight", f"{prefix}.{e}.{up}.weight")
                for e in range(num_experts)
            ]
        ),
        "experts_down.weight": stacked(
            [(f"{prefix}.{e}.{down}.weight",) for e in range(num_experts)]
        ),
    }
