"""Independent numpy references for the kernels whose math matters most: the quantized Linear
(dequantize, matmul, optional residual add, cast), RMSNorm, and decode attention over the paged
KV cache (its softmax). The kernel checker compares the device and the unscheduled TIR with
these too, computed in float64, so a kernel whose TIR definition is wrong fails even though its
GPU and CPU forms agree.

Kernels are recognised by the names TVM's fusion gives them and by their parameters' shapes;
an unrecognised kernel has no numpy reference (the checker says which ones had one).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from tvm import tirx

from mlc.quantization import get_quantization
from mlc.quantization.group_quant import GroupQuantization

from .kernel_case import KernelCase, is_buffer

MATMUL = re.compile(r"^(fused_)?dequantize_matmul\d*(_add\d*)?(_cast\d*)?$")
RMS_NORM = re.compile(r"^(fused_)?rms_norm\d*(_cast\d*)?$")
DECODE_ATTENTION = "batch_decode_paged_kv"


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the references need beyond a kernel's arguments."""

    rms_norm_eps: float
    quantization: GroupQuantization | None  # None: the Linear weights are not group-quantized

    @classmethod
    def of(cls, model_dir: Path, quantization: str) -> ModelFacts:
        """The facts of a Hugging Face model directory built at `quantization`."""
        config = json.loads((Path(model_dir) / "config.json").read_text())
        scheme = get_quantization(quantization)
        return cls(
            rms_norm_eps=float(config["rms_norm_eps"]),
            quantization=scheme if isinstance(scheme, GroupQuantization) else None,
        )


def kind(name: str) -> str | None:
    """Which numpy reference kernel `name` gets, if any: matmul, rms_norm, decode_attention."""
    if MATMUL.match(name):
        return "matmul"
    if RMS_NORM.match(name):
        return "rms_norm"
    return "decode_attention" if name == DECODE_ATTENTION else None


def numpy_reference(
    name: str, func: tirx.PrimFunc, case: KernelCase, facts: ModelFacts
) -> dict[str, np.ndarray] | None:
    """The output buffers of kernel `name` on `case`, computed in float64 by numpy (cast to the
    buffers' dtypes), or None where this module has no reference for it."""
    buffers = [p for p in func.params if is_buffer(p)]
    arrays = [case.arrays[b.name] for b in buffers]
    if MATMUL.match(name) and facts.quantization is not None and len(arrays) in (4, 5):
        x, weight, scale, *rest = arrays
        out = _linear(x, weight, scale, rest[0] if len(rest) == 2 else None, facts.quantization)
        return {buffers[-1].name: out.astype(arrays[-1].dtype)}
    if RMS_NORM.match(name) and len(arrays) == 3:
        x, weight, out = arrays
        x64 = x.astype(np.float64)
        norm = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + facts.rms_norm_eps)
        return {buffers[-1].name: (norm * weight.astype(np.float64)).astype(out.dtype)}
    if name == DECODE_ATTENTION:
        return _decode_attention(dict(zip([b.name for b in buffers], arrays, strict=True)), case)
    return None


def _linear(
    x: np.ndarray,
    weight: np.ndarray,
    scale: np.ndarray,
    residual: np.ndarray | None,
    scheme: GroupQuantization,
) -> np.ndarray:
    k = x.shape[-1]
    dense = scheme.dequantize_weight(weight, scale, k).astype(np.float64)  # [N, K]
    y = x.astype(np.float64) @ dense.T
    return y if residual is None else y + residual.astype(np.float64)


def _decode_attention(arrays: dict[str, np.ndarray], case: KernelCase) -> dict[str, np.ndarray]:
    """One query token per sequence attending to its pages: softmax(q·k · sm_scale) · v per
    query head, the KV head shared by each group of query heads; `lse` is the log2 of the
    softmax's denominator, as the cache's merge expects it."""
    q, pages = arrays["Q"].astype(np.float64), arrays["pages"].astype(np.float64)
    indptr, values = arrays["page_table_indptr"], arrays["page_table_values"]
    last_len = arrays["length_info"].reshape(-1)[: q.shape[0]]
    if int(case.scalars.get("rotary_mode", 0)) != 0:
        raise NotImplementedError("decode attention with RoPE inside the kernel")
    sm_scale = float(case.scalars["sm_scale"])
    page_size, group = pages.shape[3], q.shape[1] // pages.shape[2]
    out = np.zeros(q.shape)
    lse = np.zeros(q.shape[:2])
    for b in range(q.shape[0]):
        seq_pages = values[indptr[b] : indptr[b + 1]]
        length = (len(seq_pages) - 1) * page_size + int(last_len[b])
        keys = np.concatenate([pages[p, 0] for p in seq_pages], axis=1)[:, :length]
        vals = np.concatenate([pages[p, 1] for p in seq_pages], axis=1)[:, :length]
        for h in range(q.shape[1]):
            scores = keys[h // group] @ q[b, h] * sm_scale
            top = scores.max()
            weights = np.exp(scores - top)
            out[b, h] = weights @ vals[h // group] / weights.sum()
            lse[b, h] = (top + np.log(weights.sum())) / np.log(2)
    return {
        "output": out.astype(arrays["output"].dtype),
        "lse": lse.astype(arrays["lse"].dtype),
    }
