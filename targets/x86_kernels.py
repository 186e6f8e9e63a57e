"""Hand-written x86 (AVX2) kernels for the kernel kinds the quantization schemes name.

`q4a8_matmul`: `y[rows, N] = Σ_g sw[n, g] · xs[g] · Σ q[n, k] · xq[k] + Σ_g sw[n, g] · xc[g]` (with
per-group minima `m`, `Q4_1`: `+ Σ_g m[n, g] · xc[g]` instead of the last term) with
4-bit unsigned weights packed 8 per uint32 (5-bit: a fifth bit per value from `q_high`, set on
top of each nibble) and int8 activations, both in the layouts of
`mlc.quantization.int8_activations`. A block of 16 groups is four 64-byte loads of weights
(word j of each group), each split into low and high nibbles (the even and odd values) and
multiplied with the contiguous activations by `vpdpbusd` (AVX512-VNNI, 512-bit; on AVX2
`vpmaddubsw` + `vpmaddwd`, 256-bit halves), which leaves group g's integer sum in lane g: the 16
sums are converted and scaled at once.
Groups after the whole blocks go in pairs, reduced with scalar lane sums. Output rows are split
into tiles over the cores; a tile's weights stay in cache while every row of `x` passes, four
tokens at a time.

Each has a generic form (`generic=True`): the integer dot products in plain integer arithmetic,
the rest unchanged, which any CPU's LLVM lowers to the same bits (the `arm64` target's kernels).

`quantize_activations`: the same arithmetic as the portable kernel (absmax, `127 / absmax`,
round to nearest even, the zero-point term), eight lanes at a time, one token per core, each
group written straight into the kernel layout.
"""

from __future__ import annotations

import dataclasses
import functools

import tvm
from tvm import tirx
from tvm.script import tirx as T

from mlc.quantization.int8_activations import (
    ACT_MAX,
    BLOCK,
    BLOCK_GROUPS,
    BLOCK_WORDS,
    GROUP,
    KERNEL_ATTR,
    Q4A8_GATHER_MATMUL,
    Q4A8_MATMUL,
    QUANTIZE_ACTIVATIONS,
    block_offset,
)
from mlc.quantization.kquant_nibbles import SUPER_BLOCK

TILE_N = 16
# Scratch ints per output: a pair's or a group's 8 partial sums, then (from PART_DOTS) the dot
# products of the groups after the whole blocks.
PART_DOTS = 8


@dataclasses.dataclass(frozen=True)
class Gather:
    """A mixture's expert matmul: `experts` stacked weights, `top_k` slots per token, and
    whether the slots of a token share its activations (`shared`, the gate/up input)."""

    experts: int
    top_k: int
    shared: bool


# The micro-kernel: the outputs of 4 tokens x 2 weight rows at a time, so a block's weights are
# loaded and unpacked once for 4 tokens and a token's activations loaded once for 2 rows
# (the tile shapes measured are in docs/performance.md). Each
# output is still summed alone, block after block, so a prompt's rows equal decode steps' bit
# for bit (a test checks it): the int8 activations downstream would round a 1-ulp difference.
TOKENS, ROWS = 4, 2
# Scratch buffers are declared in "global" scope: TVM puts small global allocations on the
# stack, where LLVM keeps them in registers, but serves "local" ones on the CPU with
# TVMBackendAllocWorkspace, whose pointer LLVM must assume aliases the weights (slower).

_MADD_UBSW = "llvm.x86.avx2.pmadd.ub.sw"
_MADD_WD = "llvm.x86.avx2.pmadd.wd"
_DPBUSD = "llvm.x86.avx512.vpdpbusd.256"  # AVX512-VNNI with AVX512VL
_DPBUSD_512 = "llvm.x86.avx512.vpdpbusd.512"
_PSIGN = "llvm.x86.avx2.psign.b"
# The instruction sets the kernels are written for: AVX2, AVX512-VNNI, and plain integer
# arithmetic (any CPU: the same exact integer sums, the same float order, so the same bits).
AVX2, VNNI, GENERIC = "avx2", "avx512-vnni", "generic"


def _u8(value: int, lanes: int):
    return T.Broadcast(T.uint8(value), lanes)


def _fifth_bits(high, by, lanes: int, bit: int = 4):
    """Bytes `0x10` where a 5-bit value's fifth bit is set: lane l of `high` (uint32x`lanes`, a
    group's `q_high` word) shifted right by lane l of `by` (`2j + p` for word j's low or high
    nibbles, `int8_activations.high_bit`) leaves the bits of that word's four bytes at bit 0 of
    each byte; as uint8x(4 · lanes), moved to `bit` (5: `Q6_K`'s sixth bits, bytes `0x20`)."""
    ones = T.Broadcast(T.uint32(0x01010101), lanes)
    bits = T.bitwise_and(T.shift_right(high, by), ones)
    moved = T.shift_left(bits, T.Broadcast(T.uint32(bit), lanes))
    return T.reinterpret(f"uint8x{4 * lanes}", moved)


def _high_bits(high, by, lanes: int):
    """What goes on top of the nibbles: `high` a buffer-read `q_high` vector (5-bit), or the
    pair of fifth- and sixth-bit vectors (6-bit, `Q6_K`), shifted as `_fifth_bits` says."""
    if isinstance(high, tuple):
        return T.bitwise_or(_fifth_bits(high[0], by, lanes), _fifth_bits(high[1], by, lanes, 5))
    return _fifth_bits(high, by, lanes)


def _shift(amount: int, lanes: int):
    return T.Broadcast(T.uint32(amount), lanes)


def _word_shifts(p: int):
    """uint32x4 `2j + p` for words j = 0..3 of a group."""
    return T.Ramp(T.uint32(p), T.uint32(2), 4)


def _dot4(a, b, lanes: int):
    """int32x`lanes`: lane l is the exact sum of the products of bytes 4l .. 4l+3 of `a` and
    `b` (what `vpmaddubsw` + `vpmaddwd` and `vpdpbusd` compute), in plain integer arithmetic
    that any CPU's LLVM lowers."""
    count = 4 * lanes
    products = T.Cast(f"int32x{count}", a) * T.Cast(f"int32x{count}", b)
    parts = [T.Shuffle([products], list(range(byte, count, 4))) for byte in range(4)]
    return (parts[0] + parts[1]) + (parts[2] + parts[3])


def _word_dot(acc, w, x_even, x_odd, isa: str, fifth=None):
    """`acc` + the int32x8 sums of 32 weight bytes' low nibbles times `x_even` and high nibbles
    times `x_odd` (four products per lane each); `fifth`: the (low, high) nibbles' high bits
    (`_high_bits`: the fifth, or the fifth and sixth) set on top, for 5- and 6-bit weights."""
    lo = T.bitwise_and(w, _u8(15, 32))
    hi = T.bitwise_and(T.shift_right(w, _u8(4, 32)), _u8(15, 32))
    if fifth is not None:
        lo, hi = T.bitwise_or(lo, fifth[0]), T.bitwise_or(hi, fifth[1])
    if isa == GENERIC:
        return acc + (_dot4(lo, x_even, 8) + _dot4(hi, x_odd, 8))
    if isa == VNNI:  # vpdpbusd: u8 x s8, four products summed into each int32 lane, accumulating
        acc = T.call_llvm_pure_intrin("int32x8", _DPBUSD, acc, lo, x_even)
        return T.call_llvm_pure_intrin("int32x8", _DPBUSD, acc, hi, x_odd)
    even = T.call_llvm_pure_intrin("int16x16", _MADD_UBSW, lo, x_even)
    odd = T.call_llvm_pure_intrin("int16x16", _MADD_UBSW, hi, x_odd)
    return acc + T.call_llvm_pure_intrin(
        "int32x8", _MADD_WD, even + odd, T.Broadcast(T.int16(1), 16)
    )


def _signed_dot(acc, w, x, isa: str):
    """`acc` + the int32x8 sums of 32 signed weight bytes times 32 int8 activations (four
    products per lane): `|w|` times `x` with the sign of `w` (`vpsignb`), unsigned by signed as
    the instructions multiply; `|-128|` is 128 as an unsigned byte, and a pair of products stays
    within int16 (2 · 128 · 127)."""
    if isa == GENERIC:
        return acc + _dot4(w, x, 8)
    magnitude = T.reinterpret("uint8x32", T.call_llvm_pure_intrin("int8x32", _PSIGN, w, w))
    signed_x = T.call_llvm_pure_intrin("int8x32", _PSIGN, x, w)
    if isa == VNNI:
        return T.call_llvm_pure_intrin("int32x8", _DPBUSD, acc, magnitude, signed_x)
    pairs = T.call_llvm_pure_intrin("int16x16", _MADD_UBSW, magnitude, signed_x)
    return acc + T.call_llvm_pure_intrin("int32x8", _MADD_WD, pairs, T.Broadcast(T.int16(1), 16))


def _bytes(qw, n, word):
    """32 signed weight bytes: 8 words from `word` (`Q8_0`)."""
    return T.reinterpret("int8x32", qw[n, T.Ramp(word, 1, 8)])


def _pair_dot_8(qw, xq, n, i, pair, isa: str = AVX2, qh=None):
    """`_pair_dot` for byte weights stored in the activations' own layout."""
    acc = _signed_dot(
        T.Broadcast(T.int32(0), 8), _bytes(qw, n, pair * 16), xq[i, T.Ramp(pair * 64, 1, 32)], isa
    )
    return _signed_dot(acc, _bytes(qw, n, pair * 16 + 8), xq[i, T.Ramp(pair * 64 + 32, 1, 32)], isa)


def _single_dot_8(qw, xq, n, i, group, isa: str = AVX2, qh=None):
    """`_single_dot` for byte weights."""
    x = xq[i, T.Ramp(group * GROUP, 1, 32)]
    return _signed_dot(T.Broadcast(T.int32(0), 8), _bytes(qw, n, group * 8), x, isa)


def _block_sums_8(qw, xq, n, i, block, isa: str = AVX2, qh=None):
    """`_block_sums` for byte weights: the block's 512 bytes in eight 64-byte spans, each the
    same span of `xq`; bytes 4g .. 4g+3 of a span belong to group g."""
    halves = []
    for h in range(2):
        acc = T.Broadcast(T.int32(0), 8)
        for c in range(8):
            w = _bytes(qw, n, block * (BLOCK // 4) + 16 * c + 8 * h)
            acc = _signed_dot(acc, w, xq[i, T.Ramp(block * BLOCK + 64 * c + 32 * h, 1, 32)], isa)
        halves.append(acc)
    return T.Shuffle(halves, list(range(16)))


def _high_words(qh, n, at):
    """The `q_high` words at `at` (an index or a Ramp) of row n: one vector, or with 6-bit
    weights (`qh` the pair of fifth- and sixth-bit buffers) a pair, as `_high_bits` takes."""
    if isinstance(qh, tuple):
        return tuple(bits[n, at] for bits in qh)
    return qh[n, at]


def _pair_dot(qw, xq, n, i, pair, isa: str = AVX2, qh=None):
    """int32x8: lanes 0-3 partial sums of the pair's first group, lanes 4-7 of the second
    (words 0-3 of each; 6-bit: lanes 0-1 and 4-5 a group's first half-run, 2-3 and 6-7 its
    second); `qh`: the groups' fifth bits (and sixth: a pair of buffers)."""
    w = T.reinterpret("uint8x32", qw[n, T.Ramp(pair * 8, 1, 8)])
    even_x, odd_x = xq[i, T.Ramp(pair * 64, 1, 32)], xq[i, T.Ramp(pair * 64 + 32, 1, 32)]
    fifth = None
    if qh is not None:
        words = [_high_words(qh, n, 2 * pair + g) for g in range(2)]
        if isinstance(qh, tuple):
            high = tuple(
                T.Shuffle([T.Broadcast(g[b], 4) for g in words], list(range(8))) for b in (0, 1)
            )
        else:
            high = T.Shuffle([T.Broadcast(g, 4) for g in words], list(range(8)))
        fifth = tuple(
            _high_bits(high, T.Shuffle([_word_shifts(p)] * 2, list(range(8))), 8) for p in (0, 1)
        )
    return _word_dot(T.Broadcast(T.int32(0), 8), w, even_x, odd_x, isa, fifth)


def _single_dot(qw, xq, n, i, group, isa: str = AVX2, qh=None):
    """int32x8 partial sums of one unpaired group (layout: 16 even values, then 16 odd);
    `qh`: its fifth bits."""
    w = T.reinterpret("uint8x16", qw[n, T.Ramp(group * 4, 1, 4)])
    lo = T.bitwise_and(w, _u8(15, 16))
    hi = T.bitwise_and(T.shift_right(w, _u8(4, 16)), _u8(15, 16))
    if qh is not None:
        high = T.Broadcast(qh[n, group], 4)
        lo = T.bitwise_or(lo, _fifth_bits(high, _word_shifts(0), 4))
        hi = T.bitwise_or(hi, _fifth_bits(high, _word_shifts(1), 4))
    q = T.Shuffle([lo, hi], list(range(32)))
    if isa == GENERIC:
        return _dot4(q, xq[i, T.Ramp(group * GROUP, 1, 32)], 8)
    p = T.call_llvm_pure_intrin("int16x16", _MADD_UBSW, q, xq[i, T.Ramp(group * GROUP, 1, 32)])
    return T.call_llvm_pure_intrin("int32x8", _MADD_WD, p, T.Broadcast(T.int16(1), 16))


def _block_sums(qw, xq, n, i, block, isa: str = AVX2, qh=None):
    """int32x16: lane g holds the integer dot product of group g of `block` (AVX2: two halves
    of 8 groups, each word j's 32 bytes of weights against 32 even and 32 odd values); `qh`:
    the groups' fifth bits, one uint32 lane per group as the words. 6-bit weights (`qh` the
    pair of fifth- and sixth-bit buffers): a pair, each group's sums over its first half-run
    (words 0-1) and over its second (words 2-3)."""
    six = isinstance(qh, tuple)
    halves = [[], []]
    for h in range(2):
        accs = [T.Broadcast(T.int32(0), 8), T.Broadcast(T.int32(0), 8)]
        if qh is not None:
            high = _high_words(qh, n, T.Ramp(block * BLOCK_GROUPS + 8 * h, 1, 8))
        for j in range(4):
            w = T.reinterpret("uint8x32", qw[n, T.Ramp(block * BLOCK_WORDS + 16 * j + 8 * h, 1, 8)])
            even, odd = (block * BLOCK + block_offset(j, o) + 32 * h for o in (0, 1))
            x_even, x_odd = xq[i, T.Ramp(even, 1, 32)], xq[i, T.Ramp(odd, 1, 32)]
            fifth = None
            if qh is not None:
                fifth = tuple(_high_bits(high, _shift(2 * j + p, 8), 8) for p in (0, 1))
            sub = j // 2 if six else 0
            word_isa = GENERIC if isa == GENERIC else AVX2
            accs[sub] = _word_dot(accs[sub], w, x_even, x_odd, word_isa, fifth)
        for sub in range(2):
            halves[sub].append(accs[sub])
    sums = tuple(T.Shuffle(parts, list(range(16))) for parts in halves)
    return sums if six else sums[0]


def _block_sums_512(qw, xq, n, i, block, isa: str = VNNI, qh=None):
    """`_block_sums` on 512-bit registers (AVX512-VNNI `vpdpbusd`): word j of the 16 groups at
    once, the even words and the odd words in two accumulators (two short dependency chains;
    6-bit: each half-run's words in one); the sums are exact integers, so the result is the
    AVX2 one."""
    six = isinstance(qh, tuple)
    chains = [T.Broadcast(T.int32(0), 16), T.Broadcast(T.int32(0), 16)]
    if qh is not None:
        high = _high_words(qh, n, T.Ramp(block * BLOCK_GROUPS, 1, 16))
    for j in range(4):
        w = T.reinterpret("uint8x64", qw[n, T.Ramp(block * BLOCK_WORDS + 16 * j, 1, 16)])
        lo = T.bitwise_and(w, _u8(15, 64))
        hi = T.bitwise_and(T.shift_right(w, _u8(4, 64)), _u8(15, 64))
        if qh is not None:
            lo = T.bitwise_or(lo, _high_bits(high, _shift(2 * j, 16), 16))
            hi = T.bitwise_or(hi, _high_bits(high, _shift(2 * j + 1, 16), 16))
        even, odd = (block * BLOCK + block_offset(j, o) for o in (0, 1))
        x_even, x_odd = xq[i, T.Ramp(even, 1, 64)], xq[i, T.Ramp(odd, 1, 64)]
        chain = j // 2 if six else j % 2
        acc = T.call_llvm_pure_intrin("int32x16", _DPBUSD_512, chains[chain], lo, x_even)
        chains[chain] = T.call_llvm_pure_intrin("int32x16", _DPBUSD_512, acc, hi, x_odd)
    return tuple(chains) if six else chains[0] + chains[1]


def _fma(a, b, c):
    """`a · b + c` rounded once, as one LLVM intrinsic: fast-math may reassociate or contract
    `+` and `*` differently in differently shaped code, never across this."""
    return T.call_llvm_pure_intrin(str(a.ty), "llvm.fma", a, b, c)


def _fence(value):
    """`value`, which fast-math may not reassociate with what comes before or after it."""
    return T.call_llvm_pure_intrin(str(value.ty), "llvm.arithmetic.fence", value)


def _reduce_add(start, vector, lanes: int):
    """`start` + the lanes of `vector`, halving it (lane i plus lane i + lanes/2) until one
    lane is left, each step fenced. A fast-math reduction would be free to sum the lanes in
    any order, and LLVM picks the order by context: on AVX2 (two registers per 16 floats) it
    summed the outputs of the 4-token micro-kernel otherwise than a lone token's."""
    while lanes > 1:
        lanes //= 2
        low = T.Shuffle([vector], list(range(lanes)))
        high = T.Shuffle([vector], list(range(lanes, 2 * lanes)))
        vector = _fence(low + high)
    return _fence(start + vector)


def _consecutive(first, u):
    """Row u of rows that follow `first` (a `micro` row picker)."""
    return first + u


def _listed(rows, u):
    """Row u of the rows listed in buffer `rows` (a `micro` row picker)."""
    return rows[u]


def _lanes_sum(buf, base, lanes):
    """The integer sum of `lanes` elements (exact in any order)."""
    total = buf[base]
    for lane in range(1, lanes):
        total = total + buf[base + lane]
    return total


@functools.lru_cache(maxsize=128)  # immutable IR: parsed once per process
def q4a8_matmul_avx2(
    n: int,
    k_padded: int,
    scale_dtype: str,
    vnni: bool = False,
    has_min: bool = False,
    weight_bits: int = 4,
    gather: Gather | None = None,
    generic: bool = False,
    k_scales: bool = False,
) -> tirx.PrimFunc:
    """The kernel for `[n, k_padded]` weights; `generic` computes the integer dot products in
    plain integer arithmetic (for CPUs other than x86: the same bits); `vnni` uses
    AVX512-VNNI's `vpdpbusd` for the
    integer dot products where the CPU has it (512-bit registers for 4-bit blocks); `has_min`
    takes a per-group minimum (`Q4_1`, `Q5_1`) that weights `xc`; `weight_bits` 8 takes signed
    bytes in the activations' layout (`Q8_0`), 5 the nibbles with their fifth bits (`q_high`,
    `Q5_0`/`Q5_1`). With `gather`, the kernel of a mixture's experts (`q4a8_gather_matmul`):
    each (token, slot) multiplies the rows of the expert `ids` names, one output at a time (the
    lone-token path), so that a prompt's slots equal decode's. With `k_scales`, the scales and
    minima are a K-quant's (`Q4_K`, `Q5_K`; `kquant_nibbles`): each run's 6-bit `sc` and `m`
    as bytes, times its super-block's `d` and `-dmin` from `qd` (float16, two per 256
    values), so a run's scale is `d · sc` and its minimum `-dmin · m`, exact in float32.
    `weight_bits` 6 is `Q6_K` (with `k_scales`, no minima): the nibbles with fifth and sixth
    bits (`qh`, and the sixth in the minima's place), each group's two half-runs of 16 summed
    apart, `sw · (dot · xs + xc)` for each with its own `xc` (two per group: the activations'
    half-run sums times `-32 · xs`) and its int8 scale (`qs`, two per group) times the
    super-block's `d` (`qd`, one per 256 values)."""
    six = weight_bits == 6
    if k_scales and (has_min == six or k_padded % SUPER_BLOCK):
        raise ValueError("K-quant scales take whole super-blocks, with minima (except Q6_K)")
    if six and not k_scales:
        raise ValueError("6-bit weights are Q6_K's, with K-quant scales")
    groups = k_padded // GROUP
    words = k_padded // (4 if weight_bits == 8 else 8)
    blocks = groups // BLOCK_GROUPS
    tail_pairs = (groups - blocks * BLOCK_GROUPS) // 2
    single = groups % 2 == 1
    tiles = (n + TILE_N - 1) // TILE_N
    if weight_bits == 8:
        block_sums, pair_dot, single_dot = _block_sums_8, _pair_dot_8, _single_dot_8
    else:
        block_sums = _block_sums_512 if vnni and not generic else _block_sums
        pair_dot, single_dot = _pair_dot, _single_dot
    isa = GENERIC if generic else VNNI if vnni else AVX2
    lanes = BLOCK_GROUPS
    sums = 2 * groups if six else groups  # activation sums `xc`: per group, or half-run
    five = weight_bits == 5

    def fifth(qh, qm):
        """The high bits' buffers for the dot products: the fifth bits (5-bit), the fifth and
        the sixth (6-bit: these in the minima's place), or None."""
        return (qh, qm) if six else qh if five else None

    def scales(qs, qm, qd, row, first, count: int):
        """The scales and minima (float32 x `count`) of groups `first` .. `first + count`:
        stored; or, with `k_scales`, the runs' 6-bit values times their super-blocks' `d` and
        `-dmin` (a block of 16 groups spans two super-blocks)."""
        vector = f"float32x{count}"
        groups_at = T.Ramp(first, 1, count)
        sw = T.Cast(vector, qs[row, groups_at])
        m = T.Cast(vector, qm[row, groups_at]) if has_min else None
        if not k_scales:
            return sw, m

        def per_super_block(which: int):
            runs = SUPER_BLOCK // GROUP
            parts = [
                T.Broadcast(T.Cast("float32", qd[row, 2 * (first // runs + s) + which]), runs)
                for s in range(count // runs)
            ]
            if len(parts) == 1:
                return parts[0]
            return T.Shuffle(parts, list(range(count)))

        # Fenced: fast-math would otherwise fold `d` into the products that follow, in one
        # order for the 4-token micro-kernel and in another for a lone token.
        return _fence(sw * per_super_block(0)), _fence(m * -per_super_block(1))

    def six_scales(qs, qd, row, first, count: int):
        """6-bit: the scales (float32 x `count`) of the first and of the second half-runs of
        groups `first` .. `first + count`, their int8 bytes times their super-blocks' `d`."""
        raw = T.reinterpret(f"int8x{2 * count}", qs[row, T.Ramp(2 * first, 1, 2 * count)])
        both = T.Cast(f"float32x{2 * count}", raw)
        runs = SUPER_BLOCK // GROUP
        parts = [
            T.Broadcast(T.Cast("float32", qd[row, first // runs + s]), runs)
            for s in range(count // runs)
        ]
        d = parts[0] if len(parts) == 1 else T.Shuffle(parts, list(range(count)))
        halves = (T.Shuffle([both], list(range(h, 2 * count, 2))) for h in (0, 1))
        return tuple(_fence(half * d) for half in halves)

    def six_value(s, dots, xs, xc, i, first, count: int, acc):
        """`acc` + each group's two half-runs' `s · (dot · xs + xc)`, lane by lane (groups
        `first` .. `first + count`), fenced as `block_value`."""
        vector = f"float32x{count}"
        xs_at = xs[i, T.Ramp(first, 1, count)]
        both = xc[i, T.Ramp(2 * first, 1, 2 * count)]
        for h in range(2):
            xc_at = T.Shuffle([both], list(range(h, 2 * count, 2)))
            dot = T.Cast(vector, dots[h])
            acc = _fence(_fma(s[h], _fma(dot, xs_at, xc_at), acc))
        return acc

    def block_value(qw, qs, qm, qh, qd, xq, xs, xc, row, i, b, acc):
        """`acc` + `sw · (dot · xs + xc)` for each of the block's groups, lane by lane (with
        minima: `acc + m · xc + sw · (dot · xs)`). The sum is fenced: fast-math reassociated
        the chain over the blocks differently in the 4-token micro-kernel than for a lone
        token on AVX2, 1 ulp apart."""
        groups_at = T.Ramp(b * BLOCK_GROUPS, 1, lanes)
        if six:
            dots = block_sums(qw, xq, row, i, b, isa, fifth(qh, qm))
            s = six_scales(qs, qd, row, b * BLOCK_GROUPS, lanes)
            return six_value(s, dots, xs, xc, i, b * BLOCK_GROUPS, lanes, acc)
        sw, m = scales(qs, qm, qd, row, b * BLOCK_GROUPS, lanes)
        dot = T.Cast(f"float32x{lanes}", block_sums(qw, xq, row, i, b, isa, fifth(qh, qm)))
        if has_min:
            return _fence(_fma(sw, dot * xs[i, groups_at], _fence(_fma(m, xc[i, groups_at], acc))))
        return _fence(_fma(sw, _fma(dot, xs[i, groups_at], xc[i, groups_at]), acc))

    def tail_value(qs, qm, xs, xc, row, i, group, dot, acc):
        sw = T.Cast("float32", qs[row, group])
        if has_min:
            m = T.Cast("float32", qm[row, group])
            with_min = _fence(_fma(m, xc[i, group], acc))
            return _fence(_fma(sw, T.Cast("float32", dot) * xs[i, group], with_min))
        return _fence(_fma(sw, _fma(T.Cast("float32", dot), xs[i, group], xc[i, group]), acc))

    tail_groups = groups - blocks * BLOCK_GROUPS

    def tail_lanes(qs, qm, qd, xs, xc, row, i, part, acc):
        """`acc` + each trailing group's `sw · (dot · xs + xc)` (with minima: `acc + m · xc +
        sw · (dot · xs)`), one lane per group, fenced as `block_value`."""
        count = tail_groups
        groups_at = T.Ramp(blocks * BLOCK_GROUPS, 1, count)
        if six:
            halves = (part[T.Ramp(PART_DOTS + h * count, 1, count)] for h in (0, 1))
            s = six_scales(qs, qd, row, blocks * BLOCK_GROUPS, count)
            return six_value(s, tuple(halves), xs, xc, i, blocks * BLOCK_GROUPS, count, acc)
        sw, m = scales(qs, qm, qd, row, blocks * BLOCK_GROUPS, count)
        dot = T.Cast(f"float32x{count}", part[T.Ramp(PART_DOTS, 1, count)])
        if has_min:
            with_min = _fence(_fma(m, xc[i, groups_at], acc))
            return _fence(_fma(sw, dot * xs[i, groups_at], with_min))
        return _fence(_fma(sw, _fma(dot, xs[i, groups_at], xc[i, groups_at]), acc))

    @T.macro
    def finish_row(qw, qs, qm, qh, qd, xq, xs, xc, y, acc, base, part, tail, row, i, y_row, y_col):
        """The groups after the whole blocks, then the output value of (i, row), written to
        `y[y_row, y_col]`. Two or more such groups are summed like a block's: their integer
        dot products gathered in `part[8:]`, then scaled and added lane by lane into the
        output's block lanes (a serial chain of scalar steps was the slow part of rows that
        are not whole blocks, such as an expert's 384 values)."""
        if tail_groups >= 2:
            for p in range(tail_pairs):
                pair = blocks * BLOCK_GROUPS // 2 + p
                part[T.Ramp(0, 1, 8)] = pair_dot(qw, xq, row, i, pair, isa, fifth(qh, qm))
                if six:  # each group's half-runs apart: after the first halves, the second
                    part[PART_DOTS + 2 * p] = _lanes_sum(part, 0, 2)
                    part[PART_DOTS + 2 * p + 1] = _lanes_sum(part, 4, 2)
                    part[PART_DOTS + tail_groups + 2 * p] = _lanes_sum(part, 2, 2)
                    part[PART_DOTS + tail_groups + 2 * p + 1] = _lanes_sum(part, 6, 2)
                else:
                    part[PART_DOTS + 2 * p] = _lanes_sum(part, 0, 4)
                    part[PART_DOTS + 2 * p + 1] = _lanes_sum(part, 4, 4)
            if single:
                part[T.Ramp(0, 1, 8)] = single_dot(qw, xq, row, i, groups - 1, isa, fifth(qh, qm))
                part[PART_DOTS + tail_groups - 1] = _lanes_sum(part, 0, 8)
            acc[T.Ramp(base, 1, tail_groups)] = tail_lanes(
                qs, qm, qd, xs, xc, row, i, part, acc[T.Ramp(base, 1, tail_groups)]
            )
            y[y_row, y_col] = _reduce_add(T.float32(0), acc[T.Ramp(base, 1, lanes)], lanes)
        else:
            tail[0] = T.float32(0)
            if single:
                part[T.Ramp(0, 1, 8)] = single_dot(qw, xq, row, i, groups - 1, isa, fifth(qh, qm))
                tail[0] = tail_value(
                    qs, qm, xs, xc, row, i, groups - 1, _lanes_sum(part, 0, 8), tail[0]
                )
            y[y_row, y_col] = _reduce_add(tail[0], acc[T.Ramp(base, 1, lanes)], lanes)

    @T.macro
    def micro(
        qw, qs, qm, qh, qd, xq, xs, xc, y, acc, part, tail, xi, r0, tokens, rows, yi, c0, pick
    ):
        """Outputs of `tokens` tokens and `rows` weight rows from r0, block by block, so each
        block's weights are loaded and unpacked once for all the tokens and each token's
        activations once for all the rows. Token u is row `pick(xi, u)` of x and its outputs
        row `pick(yi, u)` of `y`, from column c0 (`_consecutive` rows from a first one, or
        `_listed` in a buffer). Every output is summed in the same order whatever the tile,
        so a prompt's rows equal decode steps' bit for bit."""
        for o in T.unroll(tokens * rows):
            acc[T.Ramp(o * lanes, 1, lanes)] = T.Broadcast(T.float32(0), lanes)
        for b in range(blocks):
            for o in T.unroll(tokens * rows):
                acc[T.Ramp(o * lanes, 1, lanes)] = block_value(
                    qw,
                    qs,
                    qm,
                    qh,
                    qd,
                    xq,
                    xs,
                    xc,
                    r0 + o % rows,
                    pick(xi, o // rows),
                    b,
                    acc[T.Ramp(o * lanes, 1, lanes)],
                )
        for o in T.unroll(tokens * rows):
            finish_row(
                qw,
                qs,
                qm,
                qh,
                qd,
                xq,
                xs,
                xc,
                y,
                acc,
                o * lanes,
                part,
                tail,
                r0 + o % rows,
                pick(xi, o // rows),
                pick(yi, o // rows),
                c0 + o % rows,
            )

    @T.macro
    def matmul(qw, qs, qm, qh, qd, var_xq, var_xs, var_xc, var_y):
        batch = T.int64()
        seq = T.int64()
        xq_in = T.match_buffer(var_xq, (batch, seq, k_padded), "int8")
        xs_in = T.match_buffer(var_xs, (batch, seq, groups), "float32")
        xc_in = T.match_buffer(var_xc, (batch, seq, sums), "float32")
        y_out = T.match_buffer(var_y, (batch, seq, n), "float32")
        # The (batch, seq) tokens as one axis of rows, over the same memory.
        rows = T.meta_var(batch * seq)
        xq = T.decl_buffer((rows, k_padded), "int8", data=xq_in.data)
        xs = T.decl_buffer((rows, groups), "float32", data=xs_in.data)
        xc = T.decl_buffer((rows, sums), "float32", data=xc_in.data)
        y = T.decl_buffer((rows, n), "float32", data=y_out.data)
        for tile in T.parallel(tiles):
            acc = T.decl_buffer((TOKENS * ROWS * lanes,), "float32", scope="global")
            part = T.decl_buffer((PART_DOTS + BLOCK_GROUPS,), "int32", scope="global")
            tail = T.decl_buffer((1,), "float32", scope="global")
            # Whole tiles take TOKENS tokens x ROWS rows at a time; the tokens left over, and
            # every token of the last, partial tile, go row by row.
            whole: T.let[T.bool] = tile * TILE_N + TILE_N <= n
            if whole:
                for i in range(rows // TOKENS):
                    for t in range(TILE_N // ROWS):
                        r0 = T.meta_var(tile * TILE_N + t * ROWS)
                        i0 = T.meta_var(i * TOKENS)
                        micro(
                            qw, qs, qm, qh, qd, xq, xs, xc, y, acc, part, tail,
                            i0, r0, TOKENS, ROWS, i0, r0, _consecutive,
                        )  # fmt: skip
            grouped = T.meta_var(T.if_then_else(whole, rows // TOKENS * TOKENS, T.int64(0)))
            for i in range(grouped, rows):
                for t in range(T.min(TILE_N, n - tile * TILE_N)):
                    r = T.meta_var(tile * TILE_N + t)
                    micro(
                        qw, qs, qm, qh, qd, xq, xs, xc, y, acc, part, tail,
                        i, r, 1, 1, i, r, _consecutive,
                    )  # fmt: skip

    if not five and not six:

        @T.prim_func
        def q4a8_matmul(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            qw: T.Buffer((n, words), "uint32"),
            qs: T.Buffer((n, groups), scale_dtype),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            matmul(qw, qs, qs, qs, qs, var_xq, var_xs, var_xc, var_y)

        @T.prim_func
        def q4a8_matmul_with_min(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            qw: T.Buffer((n, words), "uint32"),
            qs: T.Buffer((n, groups), scale_dtype),
            qm: T.Buffer((n, groups), scale_dtype),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            matmul(qw, qs, qm, qs, qs, var_xq, var_xs, var_xc, var_y)

    if five:

        @T.prim_func
        def q5a8_matmul(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            qw: T.Buffer((n, words), "uint32"),
            qs: T.Buffer((n, groups), scale_dtype),
            qh: T.Buffer((n, groups), "uint32"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            matmul(qw, qs, qs, qh, qs, var_xq, var_xs, var_xc, var_y)

        @T.prim_func
        def q5a8_matmul_with_min(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            qw: T.Buffer((n, words), "uint32"),
            qs: T.Buffer((n, groups), scale_dtype),
            qm: T.Buffer((n, groups), scale_dtype),
            qh: T.Buffer((n, groups), "uint32"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            matmul(qw, qs, qm, qh, qs, var_xq, var_xs, var_xc, var_y)

    if k_scales and gather is None:
        super_blocks = k_padded // SUPER_BLOCK

        if six:

            @T.prim_func
            def q6a8_matmul_k_scales(
                var_xq: T.handle,
                var_xs: T.handle,
                var_xc: T.handle,
                qw: T.Buffer((n, words), "uint32"),
                qs: T.Buffer((n, 2 * groups), "uint8"),
                qd: T.Buffer((n, super_blocks), "float16"),
                qh: T.Buffer((n, groups), "uint32"),
                q6: T.Buffer((n, groups), "uint32"),
                var_y: T.handle,
            ):
                T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
                matmul(qw, qs, q6, qh, qd, var_xq, var_xs, var_xc, var_y)

            return q6a8_matmul_k_scales

        @T.prim_func
        def q4a8_matmul_k_scales(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            qw: T.Buffer((n, words), "uint32"),
            qs: T.Buffer((n, groups), "uint8"),
            qm: T.Buffer((n, groups), "uint8"),
            qd: T.Buffer((n, 2 * super_blocks), "float16"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            matmul(qw, qs, qm, qs, qd, var_xq, var_xs, var_xc, var_y)

        @T.prim_func
        def q5a8_matmul_k_scales(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            qw: T.Buffer((n, words), "uint32"),
            qs: T.Buffer((n, groups), "uint8"),
            qm: T.Buffer((n, groups), "uint8"),
            qd: T.Buffer((n, 2 * super_blocks), "float16"),
            qh: T.Buffer((n, groups), "uint32"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            matmul(qw, qs, qm, qh, qd, var_xq, var_xs, var_xc, var_y)

        return q5a8_matmul_k_scales if five else q4a8_matmul_k_scales

    if gather is not None:
        experts, top_k = gather.experts, gather.top_k
        slots_per_row = top_k if gather.shared else 1
        # 6-bit: two scales per group, one `d` per super-block, the sixth bits as the minima.
        scales_per_row = 2 * groups if six else groups
        minima_dtype = "uint32" if six else scale_dtype
        k_scales_per_row = k_padded // SUPER_BLOCK * (1 if six else 2)

    @T.macro
    def gather_matmul(qw3, qs3, qm3, qh3, qd3, var_xq, var_xs, var_xc, var_ids, var_y):
        tokens = T.int64()
        ids_in = T.match_buffer(var_ids, (tokens, top_k), "int32")
        # The activations `[1, tokens, k]` (a row per token, shared by its slots) or
        # `[tokens, top_k, k]` (a row per slot).
        outer = T.int64()
        inner = T.int64()
        xq_in = T.match_buffer(var_xq, (outer, inner, k_padded), "int8")
        xs_in = T.match_buffer(var_xs, (outer, inner, groups), "float32")
        xc_in = T.match_buffer(var_xc, (outer, inner, sums), "float32")
        y_out = T.match_buffer(var_y, (tokens, top_k, n), "float32")
        x_rows = T.meta_var(outer * inner)
        xq = T.decl_buffer((x_rows, k_padded), "int8", data=xq_in.data)
        xs = T.decl_buffer((x_rows, groups), "float32", data=xs_in.data)
        xc = T.decl_buffer((x_rows, sums), "float32", data=xc_in.data)
        slots = T.meta_var(tokens * top_k)
        ids = T.decl_buffer((slots,), "int32", data=ids_in.data)
        y = T.decl_buffer((slots, n), "float32", data=y_out.data)
        # Every expert's rows one after another: expert e's row r is row e · n + r.
        qw = T.decl_buffer((experts * n, words), "uint32", data=qw3.data)
        qs = T.decl_buffer((experts * n, scales_per_row), scale_dtype, data=qs3.data)
        qm = T.decl_buffer((experts * n, groups), minima_dtype, data=qm3.data)
        if five or six:
            qh = T.decl_buffer((experts * n, groups), "uint32", data=qh3.data)
        else:
            qh = qs  # not read
        if k_scales:
            qd = T.decl_buffer((experts * n, k_scales_per_row), "float16", data=qd3.data)
        else:
            qd = qs  # not read
        # The slots in order of their experts (a counting sort, stable): expert e's slots are
        # order[first[e]:first[e + 1]], so a tile's rows of an expert are read from memory once
        # and unpacked once for every TOKENS of its slots.
        order = T.decl_buffer((slots,), "int32", scope="global")
        first = T.decl_buffer((experts + 1,), "int32", scope="global")
        cursor = T.decl_buffer((experts,), "int32", scope="global")
        for e in range(experts + 1):
            first[e] = 0
        for s in range(slots):
            first[ids[s] + 1] = first[ids[s] + 1] + 1
        for e in range(experts):
            first[e + 1] = first[e + 1] + first[e]
            cursor[e] = first[e]
        for s in range(slots):
            order[cursor[ids[s]]] = T.Cast("int32", s)
            cursor[ids[s]] = cursor[ids[s]] + 1
        for tile in T.parallel(tiles):
            acc = T.decl_buffer((TOKENS * ROWS * lanes,), "float32", scope="global")
            part = T.decl_buffer((PART_DOTS + BLOCK_GROUPS,), "int32", scope="global")
            tail = T.decl_buffer((1,), "float32", scope="global")
            # The x rows and the y rows of the TOKENS slots taken together.
            x_sel = T.decl_buffer((TOKENS,), "int64", scope="global")
            y_sel = T.decl_buffer((TOKENS,), "int64", scope="global")
            whole: T.let[T.bool] = tile * TILE_N + TILE_N <= n
            for e in range(experts):
                begin = T.meta_var(first[e])
                grouped = T.meta_var(T.if_then_else(whole, (first[e + 1] - begin) // TOKENS, 0))
                base = T.meta_var(T.Cast("int64", e) * n)
                for q in range(grouped):
                    for u in range(TOKENS):
                        slot = T.meta_var(T.Cast("int64", order[begin + q * TOKENS + u]))
                        x_sel[u] = slot // slots_per_row
                        y_sel[u] = slot
                    for t in range(TILE_N // ROWS):
                        r = T.meta_var(tile * TILE_N + t * ROWS)
                        row = T.meta_var(base + T.Cast("int64", r))
                        micro(
                            qw, qs, qm, qh, qd, xq, xs, xc, y, acc, part, tail,
                            x_sel, row, TOKENS, ROWS, y_sel, r, _listed,
                        )  # fmt: skip
                for rest in range(begin + grouped * TOKENS, first[e + 1]):
                    s = T.meta_var(T.Cast("int64", order[rest]))
                    x_row = T.meta_var(s // slots_per_row)
                    for t in range(T.min(TILE_N, n - tile * TILE_N)):
                        r = T.meta_var(tile * TILE_N + t)
                        row = T.meta_var(base + T.Cast("int64", r))
                        micro(
                            qw, qs, qm, qh, qd, xq, xs, xc, y, acc, part, tail,
                            x_row, row, 1, 1, s, r, _consecutive,
                        )  # fmt: skip

    if gather is not None and k_scales:
        super_blocks = k_padded // SUPER_BLOCK

        if six:

            @T.prim_func
            def q6a8_gather_matmul_k_scales(
                var_xq: T.handle,
                var_xs: T.handle,
                var_xc: T.handle,
                var_ids: T.handle,
                qw3: T.Buffer((experts, n, words), "uint32"),
                qs3: T.Buffer((experts, n, 2 * groups), "uint8"),
                qd3: T.Buffer((experts, n, super_blocks), "float16"),
                qh3: T.Buffer((experts, n, groups), "uint32"),
                q63: T.Buffer((experts, n, groups), "uint32"),
                var_y: T.handle,
            ):
                T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
                gather_matmul(qw3, qs3, q63, qh3, qd3, var_xq, var_xs, var_xc, var_ids, var_y)

            return q6a8_gather_matmul_k_scales

        @T.prim_func
        def q4a8_gather_matmul_k_scales(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            var_ids: T.handle,
            qw3: T.Buffer((experts, n, words), "uint32"),
            qs3: T.Buffer((experts, n, groups), "uint8"),
            qm3: T.Buffer((experts, n, groups), "uint8"),
            qd3: T.Buffer((experts, n, 2 * super_blocks), "float16"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            gather_matmul(qw3, qs3, qm3, qs3, qd3, var_xq, var_xs, var_xc, var_ids, var_y)

        @T.prim_func
        def q5a8_gather_matmul_k_scales(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            var_ids: T.handle,
            qw3: T.Buffer((experts, n, words), "uint32"),
            qs3: T.Buffer((experts, n, groups), "uint8"),
            qm3: T.Buffer((experts, n, groups), "uint8"),
            qd3: T.Buffer((experts, n, 2 * super_blocks), "float16"),
            qh3: T.Buffer((experts, n, groups), "uint32"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            gather_matmul(qw3, qs3, qm3, qh3, qd3, var_xq, var_xs, var_xc, var_ids, var_y)

        return q5a8_gather_matmul_k_scales if five else q4a8_gather_matmul_k_scales

    if gather is not None and not five:

        @T.prim_func
        def q4a8_gather_matmul(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            var_ids: T.handle,
            qw3: T.Buffer((experts, n, words), "uint32"),
            qs3: T.Buffer((experts, n, groups), scale_dtype),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            gather_matmul(qw3, qs3, qs3, qs3, qs3, var_xq, var_xs, var_xc, var_ids, var_y)

        @T.prim_func
        def q4a8_gather_matmul_with_min(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            var_ids: T.handle,
            qw3: T.Buffer((experts, n, words), "uint32"),
            qs3: T.Buffer((experts, n, groups), scale_dtype),
            qm3: T.Buffer((experts, n, groups), scale_dtype),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            gather_matmul(qw3, qs3, qm3, qs3, qs3, var_xq, var_xs, var_xc, var_ids, var_y)

        return q4a8_gather_matmul_with_min if has_min else q4a8_gather_matmul

    if gather is not None:

        @T.prim_func
        def q5a8_gather_matmul(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            var_ids: T.handle,
            qw3: T.Buffer((experts, n, words), "uint32"),
            qs3: T.Buffer((experts, n, groups), scale_dtype),
            qh3: T.Buffer((experts, n, groups), "uint32"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            gather_matmul(qw3, qs3, qs3, qh3, qs3, var_xq, var_xs, var_xc, var_ids, var_y)

        @T.prim_func
        def q5a8_gather_matmul_with_min(
            var_xq: T.handle,
            var_xs: T.handle,
            var_xc: T.handle,
            var_ids: T.handle,
            qw3: T.Buffer((experts, n, words), "uint32"),
            qs3: T.Buffer((experts, n, groups), scale_dtype),
            qm3: T.Buffer((experts, n, groups), scale_dtype),
            qh3: T.Buffer((experts, n, groups), "uint32"),
            var_y: T.handle,
        ):
            T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
            gather_matmul(qw3, qs3, qm3, qh3, qs3, var_xq, var_xs, var_xc, var_ids, var_y)

        return q5a8_gather_matmul_with_min if has_min else q5a8_gather_matmul
    if five:
        return q5a8_matmul_with_min if has_min else q5a8_matmul
    return q4a8_matmul_with_min if has_min else q4a8_matmul


@functools.lru_cache(maxsize=128)  # immutable IR: parsed once per process
def quantize_activations_avx2(
    k: int, sum_factor: float = -7.0, halves: bool = False
) -> tirx.PrimFunc:
    """float32 `x[batch, seq, k]` → (`xq` int8 `[.., Kp]` in the kernel layout, `xs`, and
    `xc = sum_factor · xs · Σ xq`: per group, or with `halves` per half-group of 16, two per
    group)."""
    groups = (k + GROUP - 1) // GROUP
    sums = 2 * groups if halves else groups
    span = GROUP // 2 if halves else GROUP  # values per sum
    k_padded = groups * GROUP
    whole = k // GROUP  # groups with all values inside k; a last partial one is zero-padded
    in_blocks = groups // BLOCK_GROUPS * BLOCK_GROUPS  # groups stored block-transposed
    paired = groups // 2 * 2  # then pair-interleaved groups up to here, then one single

    def value(x, r, index):
        return T.if_then_else(index < k, x[r, T.min(index, k - 1)], T.float32(0))

    @T.macro
    def quantize_group(x, xs, xc, r, g, q, lanes, total, full: bool):
        """Group g of row r: `xs`, `xc`, and its 32 int8 values in natural order into `q`."""
        if full:
            lanes[T.Ramp(0, 1, 8)] = T.max(
                T.max(
                    T.fabs(x[r, T.Ramp(g * GROUP, 1, 8)]), T.fabs(x[r, T.Ramp(g * GROUP + 8, 1, 8)])
                ),
                T.max(
                    T.fabs(x[r, T.Ramp(g * GROUP + 16, 1, 8)]),
                    T.fabs(x[r, T.Ramp(g * GROUP + 24, 1, 8)]),
                ),
            )
        else:
            for u in range(8):
                lanes[u] = T.float32(0)
            for e in range(GROUP):
                lanes[e % 8] = T.max(lanes[e % 8], T.fabs(value(x, r, g * GROUP + e)))
        lanes[0] = T.max(
            T.max(T.max(lanes[0], lanes[1]), T.max(lanes[2], lanes[3])),
            T.max(T.max(lanes[4], lanes[5]), T.max(lanes[6], lanes[7])),
        )
        lanes[1] = T.if_then_else(
            lanes[0] > T.float32(0), T.float32(ACT_MAX) / lanes[0], T.float32(0)
        )
        xs[r, g] = lanes[0] / T.float32(ACT_MAX)
        for u in range(4):
            if full:
                q[T.Ramp(8 * u, 1, 8)] = T.Cast(
                    "int8x8",
                    T.round(x[r, T.Ramp(g * GROUP + 8 * u, 1, 8)] * T.Broadcast(lanes[1], 8)),
                )
            else:
                for e in range(8):
                    q[8 * u + e] = T.Cast(
                        "int8", T.round(value(x, r, g * GROUP + 8 * u + e) * lanes[1])
                    )
        for part in range(GROUP // span):
            total[0] = 0
            for e in range(span):
                total[0] = total[0] + T.Cast("int32", q[part * span + e])
            at = g * (GROUP // span) + part
            xc[r, at] = T.float32(sum_factor) * xs[r, g] * T.Cast("float32", total[0])

    @T.macro
    def store_blocked(xq, r, g, q):
        """Word j of group g: its even values, then its odd, at lane g % 8 of the block."""
        for j in range(4):
            for odd in range(2):
                position = BLOCK * (g // BLOCK_GROUPS) + 4 * (g % BLOCK_GROUPS)
                xq[r, T.Ramp(position + block_offset(j, odd), 1, 4)] = q[T.Ramp(8 * j + odd, 2, 4)]

    @T.macro
    def store_paired(xq, r, g, q):
        for odd in range(2):
            position = 2 * GROUP * (g // 2) + 16 * (g % 2) + 32 * odd
            xq[r, T.Ramp(position, 1, 16)] = q[T.Ramp(odd, 2, 16)]

    @T.macro
    def store_single(xq, r, g, q):
        for odd in range(2):
            xq[r, T.Ramp(g * GROUP + 16 * odd, 1, 16)] = q[T.Ramp(odd, 2, 16)]

    @T.prim_func(s_tir=True)  # a root block: passes that look for reshapes expect one
    def quantize_activations(var_x: T.handle, var_xq: T.handle, var_xs: T.handle, var_xc: T.handle):
        T.func_attr({"tir.noalias": True, "tir.is_scheduled": True})
        batch = T.int64()
        seq = T.int64()
        x_in = T.match_buffer(var_x, (batch, seq, k), "float32")
        xq_out = T.match_buffer(var_xq, (batch, seq, k_padded), "int8")
        xs_out = T.match_buffer(var_xs, (batch, seq, groups), "float32")
        xc_out = T.match_buffer(var_xc, (batch, seq, sums), "float32")
        with T.sblock("root"):
            T.reads()
            T.writes()
            rows = T.meta_var(batch * seq)
            x = T.decl_buffer((rows, k), "float32", data=x_in.data)
            xq = T.decl_buffer((rows, k_padded), "int8", data=xq_out.data)
            xs = T.decl_buffer((rows, groups), "float32", data=xs_out.data)
            xc = T.decl_buffer((rows, sums), "float32", data=xc_out.data)
            for r in T.parallel(rows):
                q = T.decl_buffer((GROUP,), "int8", scope="global")
                lanes = T.decl_buffer((8,), "float32", scope="global")
                total = T.decl_buffer((1,), "int32", scope="global")
                for g in range(min(whole, in_blocks)):
                    quantize_group(x, xs, xc, r, g, q, lanes, total, True)
                    store_blocked(xq, r, g, q)
                if whole < in_blocks:  # the partial group is the blocks' last
                    quantize_group(x, xs, xc, r, whole, q, lanes, total, False)
                    store_blocked(xq, r, whole, q)
                for g in range(in_blocks, min(whole, paired)):
                    quantize_group(x, xs, xc, r, g, q, lanes, total, True)
                    store_paired(xq, r, g, q)
                if in_blocks <= whole < paired:  # the partial group is the last of a pair
                    quantize_group(x, xs, xc, r, whole, q, lanes, total, False)
                    store_paired(xq, r, whole, q)
                if paired < groups:
                    quantize_group(x, xs, xc, r, groups - 1, q, lanes, total, whole == groups)
                    store_single(xq, r, groups - 1, q)

    return quantize_activations


def has_avx2(target: tvm.target.Target) -> bool:
    return target.kind.name == "llvm" and bool(
        tvm.target.codegen.target_has_features("avx2", target)
    )


def has_avx512_vnni(target: tvm.target.Target) -> bool:
    return has_avx2(target) and all(
        tvm.target.codegen.target_has_features(f, target)
        for f in ("avx512vnni", "avx512vl", "avx512bw")
    )


def use_x86_kernels(target: tvm.target.Target) -> tvm.transform.Pass:
    """Swap each portable kernel that has a hand-written x86 twin for that twin; on a CPU
    without AVX2 (64-bit ARM), for the twin's generic form, which gives the same bits."""
    generic = not has_avx2(target)
    vnni = not generic and has_avx512_vnni(target)

    @tvm.transform.module_pass(opt_level=0, name="UseX86Kernels")
    def swap(mod: tvm.ir.IRModule, _ctx) -> tvm.ir.IRModule:
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
                continue
            a = func.attrs
            # The hand-written kernels take [batch, seq, k] activations.
            if KERNEL_ATTR not in a or int(a["mlc.ndim"]) != 3:
                continue
            if a[KERNEL_ATTR] == Q4A8_MATMUL:
                n, k_padded = int(a["mlc.n"]), int(a["mlc.k_padded"])
                has_min = bool(a["mlc.has_min"])
                bits = int(a["mlc.weight_bits"])
                scale_dtype = str(a["mlc.scale_dtype"])
                k_scales = bool(a.get("mlc.k_scales", False))
                fast = q4a8_matmul_avx2(
                    n, k_padded, scale_dtype, vnni, has_min, bits, None, generic, k_scales
                )
            elif a[KERNEL_ATTR] == Q4A8_GATHER_MATMUL:
                n, k_padded = int(a["mlc.n"]), int(a["mlc.k_padded"])
                gather = Gather(int(a["mlc.experts"]), int(a["mlc.top_k"]), bool(a["mlc.shared"]))
                scale_dtype = str(a["mlc.scale_dtype"])
                has_min, bits = bool(a["mlc.has_min"]), int(a["mlc.weight_bits"])
                k_scales = bool(a.get("mlc.k_scales", False))
                fast = q4a8_matmul_avx2(
                    n, k_padded, scale_dtype, vnni, has_min, bits, gather, generic, k_scales
                )
            elif a[KERNEL_ATTR] == QUANTIZE_ACTIVATIONS and str(a["mlc.dtype"]) == "float32":
                halves = bool(a.get("mlc.halves", False))
                fast = quantize_activations_avx2(
                    int(a["mlc.k"]), float(a["mlc.sum_factor"]), halves
                )
            else:
                continue
            mod[gvar] = fast.with_attr("global_symbol", gvar.name_hint)
        return mod

    return swap
