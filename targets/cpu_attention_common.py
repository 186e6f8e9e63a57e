"""What our CPU attention kernels share: the attention variant they compute, AVX2-wide dot
products, and the online softmax over a block of keys.

Every kernel runs the (sequence, KV head) pairs in parallel, reads each K and V row once for all
the query heads that share it (grouped-query attention), visits only the keys a query sees, and
keeps an online softmax per block of `BLOCK` rows, so that each exponential is computed once per
score. Output and log-sum-exp (base 2) per query head, as the paged KV cache expects.

The variant (sliding window, score soft-capping) is a model constant the model stamps on the
cache's kernels as function attributes (see `models/layers.py: annotate_attention_kernels`).
Which layers slide is per layer, and the only per-layer value the cache passes to a kernel is
`sm_scale`: a sliding layer passes `-sm_scale`.
"""

from __future__ import annotations

import dataclasses
import math

from tvm import tirx
from tvm.script import tirx as T

LOG2E = math.log2(math.e)
LANES = 8  # one AVX2 register of float32
BLOCK = 16  # keys per online-softmax step
# Attribute names on the cache's kernels (set by models/layers.py).
WINDOW_ATTR = "mlc.attention_window"
SOFTCAP_ATTR = "mlc.attention_softcap"


@dataclasses.dataclass(frozen=True)
class AttentionVariant:
    """`window`: a query at position p of a sliding layer sees keys at positions > p - window
    (0: no sliding layers). `softcap`: scores become `softcap * tanh(score / softcap)` (0: none).
    """

    window: int = 0
    softcap: float = 0.0

    @classmethod
    def of(cls, func: tirx.PrimFunc) -> AttentionVariant:
        attrs = func.attrs or {}
        return cls(int(attrs.get(WINDOW_ATTR, 0)), float(attrs.get(SOFTCAP_ATTR, 0.0)))

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

    def first_key(self, position, sm_scale):
        """The first key index a query at `position` (counted in the same index space as the
        keys) sees: 0, or the window's start in a sliding layer (`sm_scale` < 0)."""
        if not self.window:
            return 0
        start = T.max(position - (self.window - 1), 0)
        return T.if_then_else(sm_scale < T.float32(0), start, 0)


PLAIN = AttentionVariant()


class PagedRows:
    """Key/value rows of one sequence and KV head in the cache's pages
    `[page, K|V, head, row in page, dim]`; `seq_offset` maps a row to its slot (TVM's own
    sliding mode moves them)."""

    def __init__(self, pages, page_values, begin, head, page_size: int, seq_offset):
        self.pages, self.page_values, self.begin = pages, page_values, begin
        self.head, self.page_size, self.seq_offset = head, page_size, seq_offset

    def load(self, kind: int, row, c):
        """Lanes c·LANES .. of the key (`kind` 0) or value (1) in `row`."""
        offset = self.seq_offset(row)
        page = self.page_values[self.begin + offset // self.page_size]
        return self.pages[page, kind, self.head, offset % self.page_size, lanes(c)]


class RaggedRows:
    """Key/value rows of one sequence and KV head in contiguous K and V `[row, head, dim]`."""

    def __init__(self, k, v, first, head):
        self.k, self.v, self.first, self.head = k, v, first, head

    def load(self, kind: int, row, c):
        return (self.k if kind == 0 else self.v)[self.first + row, self.head, lanes(c)]


def dot(q, g, head_dim: int, rows, row):
    """q[g] · the key in `row` of `rows`, with LANES-wide partial sums and then one horizontal
    sum."""
    chunks = [
        q[g, lanes(c)] * T.Cast(f"float32x{LANES}", rows.load(0, row, c))
        for c in range(head_dim // LANES)
    ]
    while len(chunks) > 1:
        chunks = [a + b for a, b in zip(chunks[::2], chunks[1::2], strict=False)] + (
            [chunks[-1]] if len(chunks) % 2 else []
        )
    parts = [T.Shuffle([chunks[0]], [i]) for i in range(LANES)]
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def lanes(c: int):
    """Index of lanes c·LANES .. (c+1)·LANES."""
    return T.Ramp(c * LANES, 1, LANES)


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
def attend(q, o, s, m, denom, top, lo, hi, rows, variant, group, head_dim):
    """Fold the keys in rows `lo .. hi` of `rows` into the online softmax of `group` query
    heads: per block of BLOCK keys, the scores, then the weighted values."""
    for c in T.serial(T.max(hi - lo + BLOCK - 1, 0) // BLOCK):
        n: T.let[T.int32] = T.min(BLOCK, hi - lo - c * BLOCK)
        for r in T.serial(n):
            for g in T.serial(group):
                s[g, r] = variant.score(dot(q, g, head_dim, rows, lo + c * BLOCK + r))
        online_softmax(s, o, m, denom, top, n, group, head_dim)
        for r in T.serial(n):
            for g in T.serial(group):
                for ch in T.serial(head_dim // LANES):
                    o[g, lanes(ch)] = o[g, lanes(ch)] + T.Broadcast(s[g, r], LANES) * T.Cast(
                        f"float32x{LANES}", rows.load(1, lo + c * BLOCK + r, ch)
                    )
