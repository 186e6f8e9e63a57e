"""`gguf`: a GGUF file's weights as the file stores them, each tensor in its own format.

Every Linear and Embedding weight, and every stack of a mixture's experts, stored in a block
format our kernels compute (`FORMATS`: `ggml_blocks`' Q4_0 … Q8_0 and `kquant_blocks`' Q2_K …
Q6_K) keeps its blocks, bits unchanged; every other tensor (norms, biases, F32/F16/BF16
weights, block formats without a kernel yet) is stored as float32, which holds their values
exactly. A fused weight (q/k/v, gate/up) keeps its blocks when its parts share one format;
one whose parts are in different block formats keeps each run of parts in one format as a
tensor of its own (`PartedBlockLinear`; not for `vulkan`); any other is stored as float32. The
model's activations are float32. On the CPU the 32-value formats, `Q4_K`, `Q5_K` and `Q6_K`
multiply int8 activations; on GPU targets every format is decoded inside a float32 reduction
(`for_target`), and for `webgpu` the K-quants' byte tensors are stored as uint32 words (WGSL
has no 8-bit storage).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from tvm.relax.frontend import nn

from mlc.models.base import concat_rows
from mlc.models.moe import Experts

from .base import CPU_TARGETS, Quantization
from .fidelity import FLOAT_TYPES, source_types
from .ggml_blocks import FORMATS as LEGACY_FORMATS
from .ggml_blocks import BlockEmbedding, BlockExperts, BlockLinear, PartedBlockLinear
from .kquant_blocks import K_FORMATS

# Every block format kept as the file stores it.
FORMATS = {**LEGACY_FORMATS, **K_FORMATS}


@dataclasses.dataclass(frozen=True)
class GGUFNative(Quantization):
    # Once bound to a file: each parameter's ggml types in the file (sorted), and the block
    # format of those kept in blocks.
    file_types: tuple[tuple[str, tuple[str, ...]], ...] = ()
    formats: tuple[tuple[str, str], ...] = ()
    # The fused weights whose parts are kept in different block formats: each run of source
    # tensors in one format as (format, tensors, rows), in the fused weight's row order.
    parts: tuple[tuple[str, tuple[tuple[str, int, int], ...]], ...] = ()
    # The target preset the kernels are for: the CPUs' (llvm, arm64) multiply int8 activations
    # with the 32-value formats; GPU targets decode every format inside float32 reductions.
    target: str = "llvm"

    def for_target(self, target: str) -> GGUFNative:
        return dataclasses.replace(self, target=target)

    @property
    def int8_activations(self) -> bool:
        return self.target in CPU_TARGETS

    @property
    def keeps_parts(self) -> bool:
        """Whether fused weights with parts in different formats keep them (`vulkan` stores
        them as float32: clspv, its compiler, crashed on the concatenation's kernel)."""
        return self.target != "vulkan"

    def for_checkpoint(self, checkpoint: Any, weight_map: dict[str, Any]) -> GGUFNative:
        if not hasattr(checkpoint, "block_rows"):
            raise ValueError(
                f"--quantization {self.name} keeps a GGUF file's own formats, and "
                f"{getattr(checkpoint, 'path', checkpoint)} is not a GGUF file; choose a code "
                "that quantizes, e.g. --quantization q4a8_1 (CPU) or q4f16_1 (GPU)"
            )
        file_types, kept, parted = {}, {}, {}
        for ours, source in weight_map.items():
            types = tuple(sorted(source_types(checkpoint, source)))
            file_types[ours] = types
            # A layer's experts stack whole rows of each expert (`models.moe.stacked`).
            expert = ".experts_" in ours
            rows_only = source.combine is None or source.combine is concat_rows or expert
            keepable = (
                all(t in FORMATS for t in types)
                and ours.endswith(".weight")
                and rows_only
                and all(checkpoint.block_rows(h) is not None for h in source.hf_names)
            )
            if keepable and len(types) == 1:
                kept[ours] = types[0]
            elif keepable and source.combine is concat_rows and not expert and self.keeps_parts:
                parted[ours] = _runs_of_formats(checkpoint, source.hf_names)
        return dataclasses.replace(
            self,
            file_types=tuple(file_types.items()),
            formats=tuple(kept.items()),
            parts=tuple(parted.items()),
        )

    @property
    def quantizes_experts(self) -> bool:
        """Expert stacks keep the file's blocks, as the other weights do."""
        return True

    @property
    def tensor_formats(self) -> list[tuple[str, str]]:
        """(parameter, how it is stored): its block format, its parts' formats (`Q4_K+Q6_K`),
        or float32 from the file's types."""
        kept = dict(self.formats)
        kept.update({name: "+".join(fmt for fmt, *_ in runs) for name, runs in self.parts})
        return [
            (name, kept.get(name) or f"float32 (from {'+'.join(types)})")
            for name, types in self.file_types
        ]

    def describe(self) -> dict:
        groups: dict[str, Counter] = {}
        for name, fmt in self.tensor_formats:
            groups.setdefault(re.sub(r"\.\d+\.", ".*.", name), Counter())[fmt] += 1
        return {
            **super().describe(),
            # The 32-value formats' bits are moved into the int8 kernels' order; the version
            # changes with that order, so a library refuses weights stored in another.
            "storage": "each weight in the GGUF file's own block format, bits unchanged "
            "(moved: layout 4, Q5 fifth bits in the int8 kernels' order, Q4_K/Q5_K/Q6_K "
            "nibbles in the int8 kernels' words, Q6_K high bits as two bit planes; webgpu: "
            "K-quant bytes in uint32 words)",
            "tensor_formats": {group: dict(counts) for group, counts in groups.items()},
            "activations": "int8 per token and group of 32 into the Linears of the 32-value "
            "formats, Q4_K, Q5_K and Q6_K"
            if self.int8_activations
            else "float32: every format decoded inside float32 reductions",
            # The blocks' scales are float16: WebGPU kernels need `shader-f16` to read them.
            "reads_float16": bool(self.formats),
        }

    def summary(self) -> list[str]:
        """One build-log line per stored format: how many tensors; and lines naming the
        quantized formats stored as float32 for want of a kernel, and the fused weights whose
        parts differ in format."""
        counts = Counter(fmt for _, fmt in self.tensor_formats)
        lines = [f"{count} tensors as {fmt}" for fmt, count in sorted(counts.items())]
        kept = {**dict(self.formats), **dict(self.parts)}
        unkept = [types for name, types in self.file_types if name not in kept]
        no_kernel = sorted({types[0] for types in unkept if len(types) == 1} - FLOAT_TYPES)
        if no_kernel:
            lines.append(
                f"{', '.join(no_kernel)} have no kernel here yet: those tensors are stored as "
                "float32 (exact, but several times larger and slower than in the file); "
                "--quantization q4a8_1 is smaller and faster, and lossy"
            )
        mixed = sum(len(types) > 1 for types in unkept)
        if mixed:
            lines.append(
                f"{mixed} fused weights (q/k/v, gate/up) have parts in different formats: "
                "stored as float32 (exact)"
            )
        return lines

    def stored_format(self, name: str):
        """The block format `name` as this target stores it: for `webgpu` the K-quants keep
        their bytes in uint32 words."""
        fmt = FORMATS[name]
        if self.target == "webgpu" and hasattr(fmt, "byte_words"):
            return dataclasses.replace(fmt, byte_words=True)
        return fmt

    def quantize_model(self, model: nn.Module) -> nn.Module:
        formats = {name: self.stored_format(fmt) for name, fmt in self.formats}
        parts = {
            name: [(self.stored_format(fmt), rows) for fmt, _, rows in runs]
            for name, runs in self.parts
        }
        keep = _KeepBlocks(formats, parts, self.model_dtype, self.int8_activations)
        return keep.visit("", model)

    def convert_source(
        self, name: str, source: Any, checkpoint: Any
    ) -> tuple[int, list[tuple[str, np.ndarray]]]:
        runs = dict(self.parts).get(name)
        if runs is not None:
            return _convert_parts(name, runs, source, checkpoint, self.stored_format)
        fmt = dict(self.formats).get(name)
        if fmt is None:
            return super().convert_source(name, source, checkpoint)
        blocks = source.build([checkpoint.get_blocks(h) for h in source.hf_names])
        blocks = blocks.reshape(-1, *blocks.shape[-2:])  # experts: their rows one after another
        return _stored_blocks(name.removesuffix(".weight"), self.stored_format(fmt), blocks)

    def convert(self, name: str, array: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(self.model_dtype, copy=False)
        yield name, array


def _runs_of_formats(checkpoint: Any, hf_names) -> tuple[tuple[str, int, int], ...]:
    """A fused weight's source tensors as runs of one format: (format, tensors, rows)."""
    runs: list[tuple[str, int, int]] = []
    for h in hf_names:
        fmt, rows = checkpoint.tensor_type(h), len(checkpoint.block_rows(h))
        if runs and runs[-1][0] == fmt:
            runs[-1] = (fmt, runs[-1][1] + 1, runs[-1][2] + rows)
        else:
            runs.append((fmt, 1, rows))
    return tuple(runs)


def _stored_blocks(prefix: str, fmt, blocks: np.ndarray) -> tuple[int, list]:
    """(values, stored tensors `{prefix}.{key}`) of GGUF blocks `[rows, blocks, bytes]` kept in
    format `fmt`."""
    stored = fmt.from_ggml_blocks(blocks)
    size = blocks.shape[0] * blocks.shape[1] * fmt.block_size
    return size, [(f"{prefix}.{key}", array) for key, array in stored.items()]


def _convert_parts(
    name: str, runs, source: Any, checkpoint: Any, stored_format
) -> tuple[int, list[tuple[str, np.ndarray]]]:
    """A parted fused weight's stored tensors: `{prefix}.parts.{i}.{key}` for each run."""
    prefix, names = name.removesuffix(".weight"), list(source.hf_names)
    out, size = [], 0
    for i, (fmt, count, _rows) in enumerate(runs):
        blocks = np.concatenate([checkpoint.get_blocks(h) for h in names[:count]], axis=0)
        names = names[count:]
        part_size, tensors = _stored_blocks(f"{prefix}.parts.{i}", stored_format(fmt), blocks)
        size, out = size + part_size, out + tensors
    return size, out


class _KeepBlocks(nn.Mutator):
    """Replaces each Linear, Embedding and Experts whose weight keeps its blocks with its block
    twin, and each fused Linear kept in parts with a `PartedBlockLinear`."""

    def __init__(self, formats: dict[str, Any], parts: dict, dtype: str, int8: bool):
        self.formats, self.parts, self.dtype, self.int8 = formats, parts, dtype, int8

    def visit_module(self, name: str, node: nn.Module):
        fmt = self.formats.get(f"{name}.weight")
        int8 = self.int8
        parts = self.parts.get(f"{name}.weight")
        if parts is not None and isinstance(node, nn.Linear):
            return PartedBlockLinear(
                parts, node.in_features, node.bias is not None, self.dtype, int8
            )
        if fmt is not None and isinstance(node, Experts):
            return BlockExperts(fmt, node, int8)
        if fmt is not None and isinstance(node, nn.Linear):
            bias = node.bias is not None
            return BlockLinear(fmt, node.in_features, node.out_features, bias, self.dtype, int8)
        if fmt is not None and isinstance(node, nn.Embedding):
            return BlockEmbedding(fmt, node.num, node.dim, self.dtype, int8)
        return self.visit(name, node)
