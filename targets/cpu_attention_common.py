"""What our CPU attention kernels share: the attention variant they compute, AVX2-wide dot
products, and the online softmax over chunks of keys.

Every kernel runs the (sequence, KV head) pairs in parallel, reads each K and V row once for all
the query heads that share it (grouped-query attention), visits only the keys a query sees, and
keeps an online softmax per chunk of up to `CHUNK` rows: every head's scores for the chunk, then
one rescaling of each head's running sums, then the weighted values, so that each exponential is
computed once per score and the softmax's serial steps are paid once per chunk, not per few
keys. A float16 cache's rows are converted to float32 once per row for all the heads
(`StagedRows`). Output and log-sum-exp (base 2) per query head, as the paged KV cache expects.

The variant (sliding window, score soft-capping, ALiBi) is a model constant, stamped on the
cache's kernels as function attributes by `kv_cache_dispatch.py` from the model's facts.
Which layers slide is per layer, and the only per-layer value the cache passes to a kernel is
`sm_scale`: a sliding layer passes `-sm_scale`.
"""

from __future__ import annotations

import dataclasses
import math

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .vector_math import exp2

LOG2E = math.log2(math.e)
LANES = 8  # one AVX2 register of float32: scores, softmax
WIDE = 16  # one AVX-512 register: the weighted values' chunks of a head
BLOCK = 16  # keys whose values are weighted together, held in L1
CHUNK = 8 * BLOCK  # keys per online-softmax step: the scores of every head, then the values
CACHE_LINE = 64  # bytes
# Blocks of keys prefetched ahead: a (sequence, head) walks its pages in 4 KB runs (one head's
# rows of a page), too short for the hardware prefetcher to stream; without it, decode
# attention over cold pages reads at about half the machine's bandwidth.
PREFETCH_AHEAD = 2
# Attribute names on the cache's kernels (set by models/layers.py).
WINDOW_ATTR = "mlc.attention_window"
SOFTCAP_ATTR = "mlc.attention_softcap"
ALIBI_ATTR = "mlc.attention_alibi"


@dataclasses.dataclass(frozen=True)
class AttentionVariant:
    """`window`: a query at position p of a sliding layer sees keys at positions > p - window
    (0: no sliding layers). `softcap`: scores become `softcap * tanh(score / softcap)` (0: none).
    `alibi`: per query head, the ALiBi slope (empty: none); see `AlibiBias`.
    """

    window: int = 0
    softcap: float = 0.0
    alibi: tuple[float, ...] = ()

    def __post_init__(self):
        if self.softcap and self.alibi:
            raise ValueError("attention soft-capping with ALiBi is not supported")

    @classmethod
    def of(cls, func: tirx.PrimFunc) -> AttentionVariant:
        attrs = func.attrs or {}
        return cls(
            int(attrs.get(WINDOW_ATTR, 0)),
            float(attrs.get(SOFTCAP_ATTR, 0.0)),
            tuple(float(x) for x in attrs.get(ALIBI_ATTR, ())),
        )

    def query_scale(self, sm_scale):
        """What queries are multiplied by: |sm_scale|, and log2(e) unless the score is capped
        first (then `score` applies it)."""
        scale = T.max(sm_scale, -sm_scale)
        return scale if self.softcap else scale * LOG2E

    def score(self, dot):
        """A base-2 score from q·k (q already times `query_scale`)."""
        if not self.softcap:
            return dot
        return T.tanh(dot * (1.0 / self.softcap)) * (self.softcap * LOG2E)

    def bias(self, first_head, first_position, sm_scale):
        """What the scores of query heads `first_head + g` get added, keys counted from
        `first_position`: an `AlibiBias`, or `NO_BIAS`."""
        if not self.alibi:
            return NO_BIAS
        return AlibiBias(self.alibi, first_head, first_position, self.query_scale(sm_scale))

    def first_key(self, position, sm_scale):
        """The first key index a query at `position` (counted in the same index space as the
        keys) sees: 0, or the window's start in a sliding layer (`sm_scale` < 0)."""
        if not self.window:
            return 0
        start = T.max(position - (self.window - 1), 0)
        # A product, not a select: LLVM would unswitch every loop below on the select.
        return start * T.Cast("int32", sm_scale < T.float32(0))


class NoBias:
    """Scores as they are."""

    def add(self, score, g, row):
        return score

    def add_lanes(self, scores, g, first):
        return scores


NO_BIAS = NoBias()


def round_to_bfloat16(x, lanes: int = 1):
    """x (float32) rounded to the nearest bfloat16, ties to even, kept as float32."""
    i32, f32 = ("int32", "float32") if lanes == 1 else (f"int32x{lanes}", f"float32x{lanes}")

    def const(value):
        return tirx.const(value, "int32") if lanes == 1 else T.Broadcast(T.int32(value), lanes)

    bits = T.reinterpret(i32, x)
    odd = T.bitwise_and(T.shift_right(bits, const(16)), const(1))
    rounded = T.bitwise_and(bits + const(0x7FFF) + odd, const(-65536))
    return T.reinterpret(f32, rounded)


class AlibiBias:
    """ALiBi as Falcon computes it in `transformers`: head h's score for the key at position p
    gets `bf16(bf16(slope_h) * bf16(p)) * sm_scale` added (the bias is made in bfloat16 there,
    and so are the slopes given here; a per-query constant would not change the softmax, so the
    key's absolute position is all that counts)."""

    def __init__(self, slopes: tuple[float, ...], first_head, first_position, scale):
        self.slopes, self.first_head = slopes, first_head
        self.first_position, self.scale = first_position, scale

    def slope(self, g):
        head = self.first_head + g
        value = T.float32(self.slopes[-1])
        for h in range(len(self.slopes) - 2, -1, -1):
            value = T.Select(head == h, T.float32(self.slopes[h]), value)
        return value

    def add(self, score, g, row):
        position = round_to_bfloat16(T.Cast("float32", self.first_position + row))
        return score + round_to_bfloat16(self.slope(g) * position) * self.scale

    def add_lanes(self, scores, g, first):
        ramp = T.Ramp(self.first_position + first, 1, LANES)
        position = round_to_bfloat16(T.Cast(f"float32x{LANES}", ramp), LANES)
        bias = round_to_bfloat16(broadcast(self.slope(g)) * position, LANES)
        return scores + bias * broadcast(self.scale)


PLAIN = AttentionVariant()


class _Rows:
    """Key/value rows of one sequence and KV head: `element(kind, row, d)` is element d of the
    key (`kind` 0) or value (1) in `row`, `d` an index or lanes; `dtype` their element type."""

    dtype: str

    def element(self, kind: int, row, d):
        raise NotImplementedError

    def load(self, kind: int, row, c):
        """Lanes c·LANES .. of the key (`kind` 0) or value (1) in `row`."""
        return self.element(kind, row, lanes(c))

    def prefetch(self, kind: int, row, d):
        return prefetch(self.element(kind, row, d))

    def line_elements(self) -> int:
        """Elements per cache line."""
        return CACHE_LINE // tvm.DataType(self.dtype).itemsize


class PagedRows(_Rows):
    """Rows in the cache's pages `[page, K|V, head, row in page, dim]`."""

    def __init__(self, pages, page_values, begin, head, page_size: int):
        self.pages, self.page_values, self.begin = pages, page_values, begin
        self.head, self.page_size, self.dtype = head, page_size, pages.dtype

    def element(self, kind: int, row, d):
        page = self.page_values[self.begin + row // self.page_size]
        return self.pages[page, kind, self.head, row % self.page_size, d]


class RaggedRows(_Rows):
    """Rows in contiguous K and V `[row, head, dim]`."""

    def __init__(self, k, v, first, head):
        self.k, self.v, self.first, self.head, self.dtype = k, v, first, head, k.dtype

    def element(self, kind: int, row, d):
        return (self.k if kind == 0 else self.v)[self.first + row, self.head, d]


class StagedRows(_Rows):
    """Rows `first ..` of a float16 (or other narrow) cache copied to a float32 scratch
    `stage[K|V, row, dim]` (`stage_rows`), so that each row is converted once for all the
    query heads that read it, not once per head."""

    def __init__(self, stage, first):
        self.stage, self.first, self.dtype = stage, first, "float32"

    def element(self, kind: int, row, d):
        return self.stage[kind, row - self.first, d]


def is_staged(rows: _Rows) -> bool:
    """Whether `rows` are converted to float32 through a scratch (`StagedRows`)."""
    return rows.dtype != "float32"


def prefetch(element):
    """Ask for the cache line holding `element` (a read, kept in every cache level)."""
    return T.call_llvm_intrin(
        "void", "llvm.prefetch.p0", T.address_of(element), T.int32(0), T.int32(3), T.int32(1)
    )


def tree(op, values: list):
    """`op` over `values`, as a balanced tree (shorter dependency chains than a left fold)."""
    while len(values) > 1:
        pairs = [op(a, b) for a, b in zip(values[::2], values[1::2], strict=False)]
        values = pairs + ([values[-1]] if len(values) % 2 else [])
    return values[0]


def lanes(c):
    """Index of lanes c·LANES .. (c+1)·LANES."""
    return chunk(c, LANES)


def broadcast(value, dtype: str = "float32"):
    """`value` (a number or a scalar expression) in every lane."""
    return T.Broadcast(T.Cast(dtype, value), LANES)


def horizontal(op, vector):
    """`op` over the lanes of `vector`: halves folded onto each other, then the one lane."""
    width = LANES
    while width > 1:
        width //= 2
        low = T.Shuffle([vector], list(range(width)))
        high = T.Shuffle([vector], list(range(width, 2 * width)))
        vector = op(low, high)
    return vector


def transpose_sums(vectors: list):
    """One vector whose lane r is the sum of the lanes of `vectors[r]` (LANES of them).

    Three levels of two shuffles and an add, each level halving the lanes per row (AVX2's
    unpcklps/unpckhps, unpcklpd/unpckhpd, then vperm2f128): 21 instructions for 8 sums,
    where one horizontal sum per row takes about 15 each.
    """
    assert LANES == 8 and len(vectors) == LANES
    levels = (
        ([0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]),  # 32-bit interleave
        ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]),  # 64-bit interleave
        ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]),  # 128-bit halves
    )
    for low, high in levels:
        vectors = [
            T.Shuffle([a, b], low) + T.Shuffle([a, b], high)
            for a, b in zip(vectors[::2], vectors[1::2], strict=True)
        ]
    return vectors[0]


def chunk_lanes(head_dim: int) -> int:
    """Lanes per chunk of a head in the weighted values: WIDE where the head splits into such
    chunks, else LANES (on AVX2 alone, LLVM splits a WIDE chunk into two registers). Each
    output element is summed over the rows in the same order either way."""
    return WIDE if head_dim % WIDE == 0 else LANES


def chunk(c, width: int):
    """Index of elements c·width .. (c+1)·width."""
    return T.Ramp(c * width, 1, width)


def partial_dot(q, g, head_dim: int, rows, row):
    """LANES partial sums of q[g] · the key in `row`: a chain of multiply-adds over the head's
    chunks (fused by LLVM; the rows beside it give the parallelism). Chunks of LANES, not
    WIDE: folding WIDE sums would round scores differently, and a float16 KV cache's outputs,
    on a coarse grid, then meet the int8 activation rounding's ties elsewhere (`q4a8_1` with
    `--kv-cache-dtype float16` moved 0.055 from `transformers` on a tiny model)."""
    total = q[g, lanes(0)] * T.Cast(f"float32x{LANES}", rows.load(0, row, 0))
    for c in range(1, head_dim // LANES):
        total = total + q[g, lanes(c)] * T.Cast(f"float32x{LANES}", rows.load(0, row, c))
    return total


def dot(q, g, head_dim: int, rows, row):
    """q[g] · the key in `row` of `rows`."""
    return horizontal(lambda a, b: a + b, partial_dot(q, g, head_dim, rows, row))


def dot_rows(q, g, head_dim: int, rows, first):
    """q[g] · the keys in rows first .. first + LANES - 1, as one vector of LANES scores."""
    return transpose_sums([partial_dot(q, g, head_dim, rows, first + r) for r in range(LANES)])


def exp2_lanes(x):
    """2^x for a float32 vector x <= 0 (softmax exponents), without a call per lane."""
    return exp2(x, LANES, nonpositive=True)


@T.macro
def online_softmax(s, o, m, denom, top, rows, num_heads, head_dim):
    """Fold a block of base-2 scores `s[g, :rows]` into each head's running maximum `m`,
    denominator `denom` and output `o`; `s` becomes the block's probabilities (unnormalised)."""
    for g in T.serial(num_heads):
        top[0] = m[g]
        for r in T.serial(rows):
            top[0] = T.max(top[0], s[g, r])
        for d in T.serial(head_dim):
            o[g, d] = o[g, d] * T.exp2(m[g] - top[0])
        denom[g] = denom[g] * T.exp2(m[g] - top[0])
        m[g] = top[0]
        for r in T.serial(rows):
            s[g, r] = T.exp2(s[g, r] - m[g])
            denom[g] = denom[g] + s[g, r]


@T.macro
def stage_rows(stage, rows, kind, first, count, head_dim):
    """Copy the keys (`kind` 0) or values (1) of rows `first .. first + count` to `stage`."""
    for r in T.unroll(count):
        for c in T.unroll(head_dim // LANES):
            stage[kind, r, lanes(c)] = T.Cast(f"float32x{LANES}", rows.load(kind, first + r, c))


def weighted_values(total, s, g, rows, first, offset, ch, width: int):
    """`total` plus the values of rows `first ..` (BLOCK of them; chunk ch of `width` lanes)
    weighted by head g's probabilities `s[g, offset ..]`: a chain of multiply-adds in row order
    (the head's other chunks give the parallelism)."""
    for r in range(BLOCK):
        value = T.Cast(f"float32x{width}", rows.element(1, first + r, chunk(ch, width)))
        total = total + T.Broadcast(s[g, offset + r], width) * value
    return total


@T.macro
def chunk_scores(q, s, stage, first, end, blocks, rows, variant, bias, group, head_dim):
    """Base-2 scores of every query head for the keys in rows `first ..` (`blocks` whole
    blocks of BLOCK) into `s[g, :]`, LANES rows at a time, each row group's K rows loaded (and
    converted, see `StagedRows`) once for all the heads; the rows PREFETCH_AHEAD blocks ahead
    are asked for meanwhile."""
    for i in T.serial(blocks * (BLOCK // LANES)):
        row: T.let[T.int32] = first + i * LANES
        ahead: T.let[T.int32] = row + PREFETCH_AHEAD * BLOCK
        if ahead + LANES <= end:
            for r in T.unroll(LANES):
                for line in T.unroll(head_dim // rows.line_elements()):
                    T.evaluate(rows.prefetch(0, ahead + r, line * rows.line_elements()))
                    T.evaluate(rows.prefetch(1, ahead + r, line * rows.line_elements()))
        keys = T.meta_var(StagedRows(stage, row) if is_staged(rows) else rows)
        if is_staged(rows):
            stage_rows(stage, rows, 0, row, LANES, head_dim)
        for g in T.serial(group):
            s[g, lanes(i)] = bias.add_lanes(
                variant.score(dot_rows(q, g, head_dim, keys, row)), g, row
            )


@T.macro
def chunk_softmax(s, o, m, denom, top, factor, acc, blocks, g, head_dim):
    """Fold head g's scores `s[g, :blocks * BLOCK]` into its running maximum `m`, denominator
    `denom` and output `o` (rescaled once per chunk); `s` becomes the chunk's probabilities
    (unnormalised). One vector accumulator `acc[h]` per row group h of a block."""
    groups = T.meta_var(BLOCK // LANES)
    for h in T.unroll(groups):
        acc[h, lanes(0)] = s[g, lanes(h)]
    for b in T.serial(1, blocks):
        for h in T.unroll(groups):
            acc[h, lanes(0)] = T.max(acc[h, lanes(0)], s[g, lanes(b * groups + h)])
    top[0] = T.max(m[g], horizontal(T.max, tree(T.max, [acc[h, lanes(0)] for h in range(groups)])))
    factor[0] = exp2(m[g] - top[0], 1, nonpositive=True)  # once, not a libm call per lane
    for d in T.vectorized(head_dim):
        o[g, d] = o[g, d] * factor[0]
    denom[g] = denom[g] * factor[0]
    m[g] = top[0]
    for h in T.unroll(groups):
        acc[h, lanes(0)] = broadcast(0.0)
    for b in T.serial(blocks):
        for h in T.unroll(groups):
            s[g, lanes(b * groups + h)] = exp2_lanes(
                s[g, lanes(b * groups + h)] - broadcast(top[0])
            )
            acc[h, lanes(0)] = acc[h, lanes(0)] + s[g, lanes(b * groups + h)]
    add = T.meta_var(lambda a, b: a + b)
    denom[g] = denom[g] + horizontal(add, tree(add, [acc[h, lanes(0)] for h in range(groups)]))


@T.macro
def chunk_values(o, s, stage, first, blocks, rows, group, head_dim):
    """Add each head's probability-weighted values of rows `first ..` to `o`, a block of BLOCK
    rows (held in L1, converted once if staged) at a time for all the heads."""
    width = T.meta_var(chunk_lanes(head_dim))
    for b in T.serial(blocks):
        row: T.let[T.int32] = first + b * BLOCK
        values = T.meta_var(StagedRows(stage, row) if is_staged(rows) else rows)
        if is_staged(rows):
            stage_rows(stage, rows, 1, row, BLOCK, head_dim)
        for g in T.serial(group):
            for ch in T.serial(head_dim // width):
                o[g, chunk(ch, width)] = weighted_values(
                    o[g, chunk(ch, width)], s, g, values, row, b * BLOCK, ch, width
                )


@T.macro
def attend(q, o, s, m, denom, top, lo, hi, rows, variant, bias, group, head_dim):
    """Fold the keys in rows `lo .. hi` of `rows` into the online softmax of `group` query
    heads: chunks of up to CHUNK keys (whole blocks of BLOCK) vectorised, scores first, then
    one softmax step per head, then the weighted values; a last partial block one score at a
    time. `s` holds CHUNK scores per head."""
    # Bound once: the callers' bounds are expressions that every row index would repeat.
    start: T.let[T.int32] = lo
    factor = T.decl_buffer((1,), "float32")  # a chunk's rescaling of the running sums
    acc = T.decl_buffer((BLOCK // LANES, LANES), "float32")  # a chunk's maximum, then sum
    stage = T.decl_buffer((2, BLOCK if is_staged(rows) else 1, head_dim), "float32")
    end: T.let[T.int32] = hi
    whole: T.let[T.int32] = T.max(end - start, 0) // BLOCK
    for c in T.serial((whole + CHUNK // BLOCK - 1) // (CHUNK // BLOCK)):
        first: T.let[T.int32] = start + c * CHUNK
        blocks: T.let[T.int32] = T.min(CHUNK // BLOCK, whole - c * (CHUNK // BLOCK))
        chunk_scores(q, s, stage, first, end, blocks, rows, variant, bias, group, head_dim)
        for g in T.serial(group):
            chunk_softmax(s, o, m, denom, top, factor, acc, blocks, g, head_dim)
        chunk_values(o, s, stage, first, blocks, rows, group, head_dim)
    tail: T.let[T.int32] = start + whole * BLOCK
    n: T.let[T.int32] = end - tail
    if n > 0:
        for r in T.serial(n):
            for g in T.serial(group):
                s[g, r] = bias.add(variant.score(dot(q, g, head_dim, rows, tail + r)), g, tail + r)
        online_softmax(s, o, m, denom, top, n, group, head_dim)
        for r in T.serial(n):
            for g in T.serial(group):
                for ch in T.serial(head_dim // LANES):
                    o[g, lanes(ch)] = o[g, lanes(ch)] + T.Broadcast(s[g, r], LANES) * T.Cast(
                        f"float32x{LANES}", rows.load(1, tail + r, ch)
                    )
