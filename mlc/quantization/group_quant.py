"""Symmetric group quantization along K, packed into uint32 words ("NK" layout).

For a weight `W[N, K]`, group size `G` and `max_int = 2^(bits-1) - 1`:
`scale = max(|w|) / max_int` over each group of G consecutive values of a row,
`q = clamp(round(w / scale) + max_int, 0, 2 * max_int)`, and element j of a word sits in bits
`j*bits .. j*bits+bits-1`. Dequantized: `w' = (q - max_int) * scale`. K is zero-padded to a
multiple of G (padding dequantizes to 0 and is never read by the kernels).

The kernels never materialise `w'`: the Linear layer is one `dequantize_matmul` kernel whose
reduction reads the packed words and scales directly, the embedding dequantizes only the
rows it looks up, and a mixture of experts' stacked weights `[experts, N, K]` are quantized
row by row alike and read, dequantized, only for the experts each token chose.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from mlc.models.moe import Experts, gathered_rows

from .base import Quantization

STORAGE_DTYPE = "uint32"
STORAGE_BITS = 32


@dataclasses.dataclass(frozen=True)
class GroupQuantization(Quantization):
    bits: int = 4
    group_size: int = 32
    scale_dtype: str = "float16"

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def elems_per_word(self) -> int:
        return STORAGE_BITS // self.bits

    def __post_init__(self) -> None:
        if self.group_size % self.elems_per_word:
            raise ValueError(f"{self.name}: group size must be a multiple of values per word")

    def describe(self) -> dict:
        return {
            **super().describe(),
            "bits": self.bits,
            "group_size": self.group_size,
            "scale_dtype": self.scale_dtype,
            "storage": f"{STORAGE_DTYPE}, {self.elems_per_word} values per word, NK",
            "quantized": "every Linear weight, the experts, the token embedding and the LM head",
        }

    # --- numpy: build-time packing and the reference dequantization ------------------------

    def padded_k(self, k: int) -> int:
        return math.ceil(k / self.group_size) * self.group_size

    @property
    def quantizes_experts(self) -> bool:
        return True

    def quantize_weight(self, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`W[N, K]` → (`q_weight: uint32[N, Kp / per_word]`, `q_scale: [N, Kp / G]`); stacked
        experts `[E, N, K]` row by row, keeping the expert axis."""
        if weight.ndim == 3:
            q_weight, q_scale = self.quantize_weight(weight.reshape(-1, weight.shape[-1]))
            lead = weight.shape[:2]
            return q_weight.reshape(*lead, -1), q_scale.reshape(*lead, -1)
        n, k = weight.shape
        kp = self.padded_k(k)
        w = np.zeros((n, kp), dtype=np.float32)
        w[:, :k] = weight
        groups = w.reshape(n, kp // self.group_size, self.group_size)
        scale = (np.abs(groups).max(axis=-1) / self.max_int).astype(self.scale_dtype)
        # Quantize with the stored (rounded) scale, so that w' is the nearest grid point.
        divisor = scale.astype(np.float32)[..., None]
        divisor = np.where(divisor == 0, 1.0, divisor)
        q = np.clip(np.round(groups / divisor) + self.max_int, 0, 2 * self.max_int)
        return self.pack(q.reshape(n, kp).astype(np.uint32)), scale

    def stored_word(self, word, words: int):
        """Where logical word `word` (values `word * per_word ...`) of a `words`-word row is
        stored: in place here; a scheme whose kernel wants another order overrides this.
        Takes a numpy index array or a TIR expression."""
        return word

    def pack(self, q: np.ndarray) -> np.ndarray:
        """uint values `[N, Kp]` → words `[N, Kp / per_word]`, least significant first."""
        n, kp = q.shape
        per_word = self.elems_per_word
        lanes = q.reshape(n, kp // per_word, per_word).astype(np.uint32)
        shifts = (np.arange(per_word, dtype=np.uint32) * self.bits)[None, None, :]
        logical = np.bitwise_or.reduce(lanes << shifts, axis=-1).astype(np.uint32)
        words = np.empty_like(logical)
        words[:, self.stored_word(np.arange(logical.shape[1]), logical.shape[1])] = logical
        return words

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """Inverse of `pack`: words `[N, W]` → values `[N, W * per_word]`."""
        words = words[:, self.stored_word(np.arange(words.shape[1]), words.shape[1])]
        per_word = self.elems_per_word
        shifts = (np.arange(per_word, dtype=np.uint32) * self.bits)[None, None, :]
        mask = np.uint32((1 << self.bits) - 1)
        values = (words[..., None] >> shifts) & mask
        return values.reshape(words.shape[0], -1)

    def dequantize_weight(self, q_weight: np.ndarray, q_scale: np.ndarray, k: int) -> np.ndarray:
        """`w'` as float32 `[N, K]` (or `[E, N, K]`): the weights the quantized model really
        computes with."""
        if q_weight.ndim == 3:
            flat = self.dequantize_weight(
                q_weight.reshape(-1, q_weight.shape[-1]), q_scale.reshape(-1, q_scale.shape[-1]), k
            )
            return flat.reshape(*q_weight.shape[:2], k)
        q = self.unpack(q_weight).astype(np.float32) - self.max_int
        scale = np.repeat(q_scale.astype(np.float32), self.group_size, axis=1)
        return (q * scale)[:, :k]

    def convert(self, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        if is_quantized_param(name, array) or is_expert_param(name, array):
            q_weight, q_scale = self.quantize_weight(array.astype(np.float32))
            prefix = name.removesuffix(".weight")
            yield f"{prefix}.q_weight", q_weight
            yield f"{prefix}.q_scale", q_scale
        elif np.issubdtype(array.dtype, np.floating):
            yield name, array.astype(self.model_dtype)
        else:
            yield name, array

    def dequantize_stored(self, tensors: list[tuple[str, np.ndarray]], k: int) -> np.ndarray:
        if len(tensors) == 2:
            stored = {name.rsplit(".", 1)[-1]: array for name, array in tensors}
            return self.dequantize_weight(stored["q_weight"], stored["q_scale"], k)
        return super().dequantize_stored(tensors, k)

    # --- the model rewrite -----------------------------------------------------------------

    def quantize_model(self, model: nn.Module) -> nn.Module:
        return _SwapLayers(self).visit("", model)

    # --- tensor expressions used by the quantized layers -----------------------------------

    def packed_params(
        self, rows: int, k: int, experts: int | None = None
    ) -> tuple[nn.Parameter, nn.Parameter]:
        """The `q_weight` and `q_scale` parameters of a quantized `[rows, k]` weight (of
        `[experts, rows, k]` stacked experts)."""
        kp = self.padded_k(k)
        lead = (rows,) if experts is None else (experts, rows)
        return (
            nn.Parameter((*lead, kp // self.elems_per_word), STORAGE_DTYPE),
            nn.Parameter((*lead, kp // self.group_size), self.scale_dtype),
        )

    def packed_value(self, q_weight: te.Tensor, n, k) -> tirx.PrimExpr:
        """The unsigned stored value `q[n, k]` as float32, read from the packed words; `n` is
        a row, or an `(expert, row)` pair of stacked experts."""
        row = n if isinstance(n, tuple) else (n,)
        words = int(q_weight.shape[-1])
        word = q_weight[(*row, self.stored_word(k // self.elems_per_word, words))]
        shift = ((k % self.elems_per_word) * self.bits).astype(STORAGE_DTYPE)
        q = (word >> shift) & tirx.const((1 << self.bits) - 1, STORAGE_DTYPE)
        return q.astype("float32")

    def dequantize_value(self, q_weight: te.Tensor, q_scale: te.Tensor, n, k) -> tirx.PrimExpr:
        """`w'[n, k]` in float32, read straight from the packed words; `n` as in
        `packed_value`."""
        row = n if isinstance(n, tuple) else (n,)
        scale = q_scale[(*row, k // self.group_size)].astype("float32")
        q = self.packed_value(q_weight, n, k)
        return (q - tirx.const(self.max_int, "float32")) * scale


def is_quantized_param(name: str, array: np.ndarray) -> bool:
    """Every 2-D `.weight` in our models belongs to a Linear or an Embedding."""
    return name.endswith(".weight") and array.ndim == 2


def is_expert_param(name: str, array: np.ndarray) -> bool:
    """Every 3-D `.weight` in our models is a projection of stacked experts (`models.moe`)."""
    return name.endswith(".weight") and array.ndim == 3


class GroupQuantizedLinear(nn.Module):
    """`y = x @ W'^T (+ bias)` as one kernel that dequantizes inside the reduction."""

    def __init__(
        self, scheme: GroupQuantization, in_features: int, out_features: int, bias: bool, dtype: str
    ):
        self.scheme = scheme
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = dtype
        self.q_weight, self.q_scale = scheme.packed_params(out_features, in_features)
        self.bias = nn.Parameter((out_features,), dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        out = dequantize_matmul(
            self.scheme,
            x,
            self.q_weight,
            self.q_scale,
            self.in_features,
            self.out_features,
            self.dtype,
        )
        return out + self.bias if self.bias is not None else out


class GroupQuantizedEmbedding(nn.Module):
    """Token embedding that dequantizes only the rows looked up; also the tied LM head."""

    def __init__(self, scheme: GroupQuantization, num: int, dim: int, dtype: str):
        self.scheme = scheme
        self.num = num
        self.dim = dim
        self.dtype = dtype
        self.q_weight, self.q_scale = scheme.packed_params(num, dim)

    def forward(self, ids: Tensor) -> Tensor:
        scheme, dim, dtype = self.scheme, self.dim, self.dtype

        def lookup(q_weight: te.Tensor, q_scale: te.Tensor, ids: te.Tensor) -> te.Tensor:
            return te.compute(
                (*ids.shape, dim),
                lambda *i: scheme.dequantize_value(q_weight, q_scale, ids[i[:-1]], i[-1]).astype(
                    dtype
                ),
                name="dequantize_take",
            )

        return op.tensor_expr_op(lookup, "dequantize_take", [self.q_weight, self.q_scale, ids])

    def lm_head_forward(self, x: Tensor) -> Tensor:
        return dequantize_matmul(
            self.scheme, x, self.q_weight, self.q_scale, self.dim, self.num, self.dtype
        )


class GroupQuantizedExperts(nn.Module):
    """Stacked experts' packed weights; each token's chosen experts are dequantized inside
    the gather matmul's reduction (float32 out), the others never read."""

    def __init__(self, scheme: GroupQuantization, experts: Experts):
        self.scheme = scheme
        self.out_features, self.in_features = experts.out_features, experts.in_features
        self.kernel_name = experts.kernel_name
        self.q_weight, self.q_scale = scheme.packed_params(
            experts.out_features, experts.in_features, experts=experts.num_experts
        )

    def forward(self, x: Tensor, ids: Tensor) -> Tensor:
        scheme, name = self.scheme, self.kernel_name
        n_out, n_in = self.out_features, self.in_features

        def compute(x: te.Tensor, ids: te.Tensor, q_weight: te.Tensor, q_scale: te.Tensor):
            return gathered_rows(
                x,
                ids,
                n_out,
                n_in,
                name,
                lambda e, n, r: scheme.dequantize_value(q_weight, q_scale, (e, n), r),
            )

        return op.tensor_expr_op(compute, name, [x, ids, self.q_weight, self.q_scale])


def dequantize_matmul(
    scheme: GroupQuantization,
    x: Tensor,
    q_weight: Tensor,
    q_scale: Tensor,
    k: int,
    n: int,
    dtype: str,
) -> Tensor:
    """`x[..., K] @ W'[N, K]^T`, accumulated in float32, returned in `dtype`."""

    def compute(x: te.Tensor, q_weight: te.Tensor, q_scale: te.Tensor) -> te.Tensor:
        r = te.reduce_axis((0, k), name="k")
        acc = te.compute(
            (*x.shape[:-1], n),
            lambda *i: te.sum(
                x[(*i[:-1], r)].astype("float32")
                * scheme.dequantize_value(q_weight, q_scale, i[-1], r),
                axis=r,
            ),
            name="dequantize_matmul",
        )
        if dtype == "float32":
            return acc
        return te.compute(acc.shape, lambda *i: acc[i].astype(dtype), name="cast")

    return op.tensor_expr_op(compute, "dequantize_matmul", [x, q_weight, q_scale])


class _SwapLayers(nn.Mutator):
    """Replaces every `nn.Linear`, `nn.Embedding` and `Experts` with its quantized twin (by
    default the group-quantized ones; other schemes pass their own layer classes)."""

    def __init__(
        self,
        scheme: GroupQuantization,
        linear: type[nn.Module] = GroupQuantizedLinear,
        embedding: type[nn.Module] = GroupQuantizedEmbedding,
        experts: type[nn.Module] = GroupQuantizedExperts,
    ):
        self.scheme, self.linear, self.embedding = scheme, linear, embedding
        self.experts = experts

    def visit_module(self, name: str, node: nn.Module):
        dtype = self.scheme.model_dtype
        if isinstance(node, nn.Linear):
            bias = node.bias is not None
            return self.linear(self.scheme, node.in_features, node.out_features, bias, dtype)
        if isinstance(node, Experts):
            return self.experts(self.scheme, node)
        if isinstance(node, nn.Embedding):
            return self.embedding(self.scheme, node.num, node.dim, dtype)
        return self.visit(name, node)
