"""Prefix caching: the KV pages of prompts already prefilled, kept for later prompts that
start with the same tokens.

A sequence whose prompt shares a cached prefix is forked from it: the paged KV cache shares
the prefix's pages by reference, and the sequence prefills only the rest. Reuse never changes
an answer. A token's keys and values depend, in their last bits, on where the prefill chunks
started (attention merges the cached and the new part of a chunk by their log-sum-exps), so
only whole chunks of `prefill_chunk_size` counted from the prompt's start are kept, and a
prompt reuses whole chunks: its remaining chunks then start where its solo run's start, and
every logit equals that run's bit for bit. The reuse granularity is therefore the chunk size.

This module is the bookkeeping (which prefixes exist, which to evict, least recently used
first); the engine forks and frees the KV sequences it names.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

# KV sequence ids of cached prefixes, apart from requests' (`sequence._ids` counts from 1).
_prefix_ids = itertools.count(1 << 40)


def reusable_length(common: int, prompt_length: int, chunk: int) -> int:
    """How many of a prompt's tokens a cached prefix sharing its first `common` tokens saves:
    whole chunks, leaving at least the last prompt token to prefill (its logits are needed)."""
    return min(common, prompt_length - 1) // chunk * chunk


def exact_length(prompt_length: int, num_prefilled: int, chunk: int) -> int:
    """The prompt tokens a sequence holds exactly as any prompt starting with them would:
    those of its whole chunks, counted from the start, that it has prefilled."""
    return min(prompt_length, num_prefilled) // chunk * chunk


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.size, b.size)
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclasses.dataclass(eq=False)  # one entry is one KV sequence: compared by identity
class CachedPrefix:
    seq_id: int  # the KV cache's sequence holding it
    tokens: np.ndarray  # int32, a whole number of chunks
    pages: int  # KV pages holding them
    last_used: int


@dataclasses.dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    tokens_reused: int = 0
    entries: int = 0
    pages: int = 0  # held by cached prefixes (pages two prefixes share count twice)


class PrefixCache:
    """Cached prefixes in whole chunks of `chunk` tokens, on KV pages of `page_size`."""

    def __init__(self, chunk: int, page_size: int):
        self.chunk = chunk
        self.page_size = page_size
        self._entries: list[CachedPrefix] = []
        self._clock = itertools.count()
        self._stats = PrefixCacheStats()

    @property
    def pages(self) -> int:
        """Pages the cached prefixes hold at most (shared pages counted once per prefix)."""
        return sum(e.pages for e in self._entries)

    def stats(self) -> PrefixCacheStats:
        return dataclasses.replace(self._stats, entries=len(self._entries), pages=self.pages)

    def lookup(self, prompt: list[int] | np.ndarray) -> tuple[CachedPrefix | None, int]:
        """The cached prefix that saves `prompt` the most tokens, and how many (0: none)."""
        prompt = np.asarray(prompt, dtype=np.int32)
        best, best_length = None, 0
        for entry in self._entries:
            length = reusable_length(common_prefix(entry.tokens, prompt), prompt.size, self.chunk)
            if length > best_length:
                best, best_length = entry, length
        if best is not None:
            best.last_used = next(self._clock)
        return best, best_length

    def count_use(self, reused: int) -> None:
        """Record one admitted prompt and the tokens it took from the cache."""
        self._stats.lookups += 1
        self._stats.hits += reused > 0
        self._stats.tokens_reused += reused

    def covers(self, tokens: np.ndarray) -> bool:
        """Whether a cached prefix starts with `tokens` (it is then marked used)."""
        for entry in self._entries:
            if common_prefix(entry.tokens, tokens) == tokens.size:
                entry.last_used = next(self._clock)
                return True
        return False

    def add(self, seq_id: int, tokens: np.ndarray) -> list[int]:
        """Index a new cached prefix; returns the KV sequences of those it makes redundant
        (its own prefixes), now out of the index, for the caller to free."""
        tokens = np.asarray(tokens, dtype=np.int32)
        redundant = [e for e in self._entries if common_prefix(e.tokens, tokens) == e.tokens.size]
        self._entries = [e for e in self._entries if e not in redundant]
        pages = math.ceil(tokens.size / self.page_size)
        self._entries.append(CachedPrefix(seq_id, tokens, pages, next(self._clock)))
        return [e.seq_id for e in redundant]

    def evict(self, keep: CachedPrefix | None = None) -> int | None:
        """Take the least recently used prefix (other than `keep`) out of the index; returns
        its KV sequence for the caller to free, or None when there is none."""
        candidates = [e for e in self._entries if e is not keep]
        if not candidates:
            return None
        victim = min(candidates, key=lambda e: e.last_used)
        self._entries.remove(victim)
        return victim.seq_id

    def new_seq_id(self) -> int:
        return next(_prefix_ids)
