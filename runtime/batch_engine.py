"""Continuous batching: many sequences share one model and its paged KV cache.

One engine thread loops: admit waiting sequences (first come, first served) while the batch and
the KV cache have room, run one prefill step, then one batched decode step over every sequence
that is generating. A finished or cancelled sequence leaves the batch and frees its KV pages
before the next step.

Batch invariance: a sequence's tokens are those of its run alone (`CompiledModel.prefill` then
`decode`, the same chunk size), whatever else is in the batch. The kernels compute each row
the same way at any number of rows; what is left is attention during prefill, which sees a
token's keys as two parts (cached, new in this call) merged by their log-sum-exps, so its last
bits depend on where a chunk starts. The prefill step therefore feeds each sequence in pieces
of exactly `prefill_chunk_size` tokens counted from the start of the feed (the prompt, or a span
a grammar forces), as a solo prefill cuts it, and never splits a piece to fill the step: pieces
are taken in arrival order while they fit (the oldest always does, so no prompt stalls the
others for more than a piece). And the cache attends to a call whose pieces are all one token
long in one pass over each token's keys (its decode kernel), to any other call in two merged
parts, so a step takes either only one-token pieces or none, as a solo run would.

Admission reserves the pages a sequence can ever need (prompt + `max_tokens`, capped at the
context window), so a running sequence never runs out of KV cache and nothing is preempted.

With prefix caching (`prefix_cache.py`) a finished sequence leaves the whole prefill chunks of
its prompt in the cache, and an admitted prompt that starts with cached chunks is forked from
them and prefills only the rest. Cached prefixes use pages no sequence has reserved; they are
evicted, least recently used first, when an admission or a new prefix needs the room.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time

import numpy as np

from .compiled_model import PAGE_SIZE, CompiledModel
from .prefix_cache import CachedPrefix, PrefixCache, exact_length
from .sequence import Sequence, SequenceOutput
from .speculative import draft_room, drafter_for, next_budget


class EngineOverloaded(RuntimeError):
    """The waiting queue is full: retry later."""


class EngineShuttingDown(EngineOverloaded):
    """The engine takes no new sequences."""


@dataclasses.dataclass
class EngineStats:
    """A snapshot for `/metrics`."""

    num_waiting: int
    num_running: int
    kv_pages_total: int
    kv_pages_used: int
    kv_pages_reserved: int
    prefill_tokens: int
    decode_tokens: int
    prefill_steps: int
    decode_steps: int
    decode_seconds: float
    prefill_seconds: float
    prefix_cache_lookups: int = 0  # admitted prompts
    prefix_cache_hits: int = 0  # ... that reused cached tokens
    prefix_tokens_reused: int = 0
    prefix_cache_entries: int = 0
    prefix_cache_pages: int = 0  # held by cached prefixes (shared pages once per prefix)
    kv_pages_shared: int = 0  # whole pages running sequences read from cached prefixes
    speculative_passes: int = 0  # decode steps that verified drafts
    draft_tokens: int = 0  # speculative guesses verified
    accepted_draft_tokens: int = 0  # of them, those that joined answers


class BatchEngine:
    """Schedules sequences on a `CompiledModel` built with `max_batch_size` > 1."""

    def __init__(
        self,
        model: CompiledModel,
        max_queue: int = 256,
        queue_timeout: float = 60.0,
        prefix_cache: bool | None = None,
        speculative: str | None = None,
        num_draft_tokens: int = 8,
    ):
        """`prefix_cache`: keep and reuse prompts' KV prefixes (None: where the model can).
        `speculative`: a drafter (`runtime/speculative.py`) whose guesses each decode step
        verifies, up to `num_draft_tokens` per sequence."""
        if speculative is not None and model.no_chains is not None:
            raise ValueError(
                f"{model.model_dir.name} cannot decode speculatively ({model.no_chains}): "
                "serve it without --speculative"
            )
        if speculative == "draft-model":
            raise ValueError(
                "the batching engine drafts with prompt-lookup only; draft-model speculation "
                "runs in ChatModule and mlc bench"
            )
        self.drafter = None if speculative is None else drafter_for(speculative)
        if not 1 <= num_draft_tokens <= 64:
            raise ValueError(f"num_draft_tokens must be in 1..64, not {num_draft_tokens}")
        self.num_draft_tokens = num_draft_tokens
        if prefix_cache and not model.shares_prefixes:
            raise ValueError(
                f"{model.model_dir.name} cannot share KV prefixes ({model.no_prefix_sharing}): "
                "serve it without the prefix cache (--no-prefix-cache)"
            )
        if prefix_cache is None:
            prefix_cache = model.shares_prefixes
        self.model = model
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.max_batch_size = model.max_batch_size
        # One page stays spare: TVM's cache keeps one for itself.
        self.kv_pages_total = model.num_available_pages() - 1
        self._kv_pages_used = 0  # written by the engine thread, which alone touches the cache
        self._waiting: collections.deque[tuple[float, Sequence]] = collections.deque()
        self._running: list[Sequence] = []
        self._reserved = 0
        # Changed on the engine thread only, its index under `_cond` (`stats` reads it).
        self.prefix_cache = (
            PrefixCache(model.prefill_chunk_size, PAGE_SIZE) if prefix_cache else None
        )
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._counters = collections.Counter()
        self._seconds = collections.Counter()
        self._thread = threading.Thread(target=self._loop, name="mlc-batch-engine", daemon=True)
        self._thread.start()

    # --- called from other threads -------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        """Queue a sequence; raises `EngineOverloaded` when the queue is full or closing."""
        with self._cond:
            if not self._accepting:
                raise EngineShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise EngineOverloaded(f"the queue is full ({self.max_queue} requests waiting)")
            self._waiting.append((time.monotonic(), seq))
            self._cond.notify()

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence; its KV pages are freed before the next step."""
        with self._cond:
            seq.cancelled = True
            waiting = [entry for entry in self._waiting if entry[1] is seq]
            for entry in waiting:
                self._waiting.remove(entry)
            self._cond.notify()
        if waiting:
            seq.fail("abort", "cancelled", "cancelled")

    def stats(self) -> EngineStats:
        with self._cond:
            cache = self.prefix_cache.stats() if self.prefix_cache is not None else None
            shared = sum(seq.num_reused // PAGE_SIZE for seq in self._running)
            return EngineStats(
                num_waiting=len(self._waiting),
                num_running=len(self._running),
                kv_pages_total=self.kv_pages_total,
                kv_pages_used=self._kv_pages_used,
                kv_pages_reserved=self._reserved,
                prefill_tokens=self._counters["prefill_tokens"],
                decode_tokens=self._counters["decode_tokens"],
                prefill_steps=self._counters["prefill_steps"],
                decode_steps=self._counters["decode_steps"],
                prefill_seconds=self._seconds["prefill"],
                decode_seconds=self._seconds["decode"],
                prefix_cache_lookups=cache.lookups if cache else 0,
                prefix_cache_hits=cache.hits if cache else 0,
                prefix_tokens_reused=cache.tokens_reused if cache else 0,
                prefix_cache_entries=cache.entries if cache else 0,
                prefix_cache_pages=cache.pages if cache else 0,
                kv_pages_shared=shared,
                speculative_passes=self._counters["speculative_passes"],
                draft_tokens=self._counters["draft_tokens"],
                accepted_draft_tokens=self._counters["accepted_draft_tokens"],
            )

    def shutdown(self, timeout: float = 30.0) -> None:
        """Refuse new sequences, let running and queued ones finish for up to `timeout`
        seconds, then end the rest with an error. Calling it again is harmless."""
        with self._cond:
            self._accepting = False
            self._cond.notify()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._waiting and not self._running:
                    break
            time.sleep(0.05)
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    # --- the engine thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._waiting or self._running):
                    self._cond.wait()
                if self._stop:
                    break
            try:
                busy = self._step()
            except Exception as err:  # a failed forward pass ends its batch, not the server
                self._end_running(f"generation failed: {err}", "internal")
                busy = True
            if not busy:  # the queue head cannot be admitted yet: wait for a change or timeout
                with self._cond:
                    self._cond.wait(0.05)
        with self._cond:
            waiting = [seq for _, seq in self._waiting]
            self._waiting.clear()
        message = "the server shut down before the request finished"
        self._end_running(message, "overloaded")
        for seq in waiting:
            seq.fail("error", message, "overloaded")

    def _end_running(self, message: str, kind: str) -> None:
        for seq in list(self._running):
            try:
                self._release(seq, keep_prefix=False)  # its pages may hold a failed step
            except Exception:  # the sequence is gone from the cache already
                with self._cond:
                    if seq in self._running:
                        self._running.remove(seq)
                        self._reserved -= _pages(seq.max_kv_tokens)
            seq.fail("error", message, kind)

    def _step(self) -> bool:
        """One scheduling step; False when there was nothing to run."""
        self._admit()
        for seq in [s for s in self._running if s.cancelled]:
            self._release(seq)
            seq.fail("abort", "cancelled", "cancelled")
        prefilling = [s for s in self._running if not s.prefill_done]
        if prefilling:
            self._prefill(prefilling)
        decoding = [s for s in self._running if s.pending_token is not None]
        if decoding:
            self._decode(decoding)
        for seq in [s for s in self._running if s.finish_reason is not None]:
            self._release(seq)
        return bool(self._running or prefilling or decoding)

    def _record_kv_use(self) -> None:
        self._kv_pages_used = self.kv_pages_total + 1 - self.model.num_available_pages()

    def _admit(self) -> None:
        """Move waiting sequences into the batch in arrival order while they fit."""
        admitted: list[Sequence] = []
        expired: list[Sequence] = []
        evicted: list[int] = []
        with self._cond:
            now = time.monotonic()
            while self._waiting:
                since, seq = self._waiting[0]
                if seq.cancelled:
                    self._waiting.popleft()
                    expired.append(seq)
                    continue
                pages = _pages(seq.max_kv_tokens)
                room = len(self._running) < self.max_batch_size
                if room and self._reserved + pages <= self.kv_pages_total:
                    evicted += self._evict_for(pages, self._match(seq)[0])
                    self._waiting.popleft()
                    self._reserved += pages
                    self._running.append(seq)
                    admitted.append(seq)
                elif now - since > self.queue_timeout:
                    self._waiting.popleft()
                    expired.append(seq)
                else:
                    break  # the head waits for room; those behind it keep their order
        for seq_id in evicted:
            self.model.remove_sequence(seq_id)
        for seq in admitted:
            self._start(seq)
            seq.on_output(SequenceOutput())
        for seq in expired:
            if seq.cancelled:
                seq.fail("abort", "cancelled", "cancelled")
            else:
                seq.fail(
                    "error",
                    f"no room in the batch or the KV cache for {self.queue_timeout:g} s",
                    "overloaded",
                )

    def _match(self, seq: Sequence) -> tuple[CachedPrefix | None, int]:
        if self.prefix_cache is None:
            return None, 0
        return self.prefix_cache.lookup(seq.prompt_ids)

    def _evict_for(self, pages: int, keep: CachedPrefix | None = None) -> list[int]:
        """Take cached prefixes (least recently used first, `keep` last) out of the index
        until the reserved pages, `pages` more and the cached prefixes fit the KV cache;
        returns their KV sequences, to free."""
        cache = self.prefix_cache
        evicted: list[int] = []
        while cache is not None and self._reserved + pages + cache.pages > self.kv_pages_total:
            victim = cache.evict(keep)
            if victim is None and keep is not None:
                victim, keep = cache.evict(), None
            if victim is None:
                break
            evicted.append(victim)
        return evicted

    def _start(self, seq: Sequence) -> None:
        """Give an admitted sequence its KV sequence: forked from the cached prefix that
        saves it the most prefill, or empty."""
        entry, reused = self._match(seq)
        if entry is not None:
            self.model.fork_sequence(entry.seq_id, seq.seq_id, reused)
            seq.num_prefilled = seq.num_reused = reused
        else:
            self.model.add_sequence(seq.seq_id)
        if self.prefix_cache is not None:
            self.prefix_cache.count_use(reused)
        seq.draft_budget = self.num_draft_tokens

    def _prefill(self, prefilling: list[Sequence]) -> None:
        batch = take_pieces(prefilling, self.model.prefill_chunk_size)
        start = time.perf_counter()
        logits = self.model.forward_prefill([s.seq_id for s, _ in batch], [c for _, c in batch])
        self._seconds["prefill"] += time.perf_counter() - start
        self._record_kv_use()  # before any token goes out: a client then sees its pages
        self._counters["prefill_steps"] += 1
        for (seq, chunk), row in zip(batch, logits, strict=True):
            seq.num_prefilled += chunk.size
            self._counters["prefill_tokens"] += chunk.size
            if seq.prefill_done:
                _append_logits(seq, row)

    def _decode(self, decoding: list[Sequence]) -> None:
        drafts = self._drafts(decoding) if self.drafter is not None else None
        if drafts is not None:
            self._verify(decoding, drafts)
            return
        start = time.perf_counter()
        tokens = [s.pending_token for s in decoding]
        logits = self.model.forward_decode([s.seq_id for s in decoding], tokens)
        self._seconds["decode"] += time.perf_counter() - start
        self._record_kv_use()
        self._counters["decode_steps"] += 1
        self._counters["decode_tokens"] += len(decoding)
        for seq, row in zip(decoding, logits, strict=True):
            _append_logits(seq, row)

    def _drafts(self, decoding: list[Sequence]) -> list[list[int]] | None:
        """Each sequence's guesses after its pending token, within its draft budget, its
        `max_tokens`, the chain its KV sequence may take, and the step's prefill chunk (shared
        in arrival order); None where no sequence has any, or none can lead a chain pass."""
        assert self.drafter is not None
        left = self.model.prefill_chunk_size - len(decoding)
        drafts: list[list[int]] = []
        for seq in decoding:
            chain_room = self.model.chain_room(seq.seq_id) - 1  # after the pending token
            room = min(draft_room(seq.generation, seq.draft_budget, chain_room), left)
            guess = (
                self.drafter.propose([*seq.prompt_ids, *seq.generated], room) if room > 0 else []
            )
            drafts.append(guess)
            left -= len(guess)
        if not any(drafts) or not any(self.model.can_lead_chains(s.seq_id) for s in decoding):
            return None
        return drafts

    def _verify(self, decoding: list[Sequence], drafts: list[list[int]]) -> None:
        """One decode step that feeds each sequence its pending token and its drafts as a
        chain (`CompiledModel.forward_chains`) and keeps what its generation steps pick."""
        start = time.perf_counter()
        chains = [
            np.asarray([s.pending_token, *d], dtype=np.int32)
            for s, d in zip(decoding, drafts, strict=True)
        ]
        ids = [s.seq_id for s in decoding]
        rows = self.model.forward_chains(ids, chains)
        kept = [_append_chain(seq, r, d) for seq, r, d in zip(decoding, rows, drafts, strict=True)]
        self.model.keep_chains(ids, kept)
        self._seconds["decode"] += time.perf_counter() - start
        self._record_kv_use()
        self._counters["decode_steps"] += 1
        self._counters["decode_tokens"] += sum(kept)
        self._counters["speculative_passes"] += 1
        self._counters["draft_tokens"] += sum(len(d) for d in drafts)
        self._counters["accepted_draft_tokens"] += sum(kept) - len(decoding)
        for seq, d, k in zip(decoding, drafts, kept, strict=True):
            if d:
                seq.draft_budget = next_budget(
                    seq.draft_budget, len(d), k - 1, self.num_draft_tokens
                )

    def _release(self, seq: Sequence, keep_prefix: bool = True) -> None:
        """Take a sequence out of the batch and free its KV pages now (with prefix caching,
        but for the whole chunks of its prompt, kept as a cached prefix)."""
        if keep_prefix and self.prefix_cache is not None:
            self._keep_prefix(seq)
        self.model.remove_sequence(seq.seq_id)
        with self._cond:
            self._running.remove(seq)
            self._reserved -= _pages(seq.max_kv_tokens)
        self._record_kv_use()

    def _keep_prefix(self, seq: Sequence) -> None:
        cache = self.prefix_cache
        assert cache is not None
        length = exact_length(len(seq.prompt_ids), seq.num_prefilled, cache.chunk)
        tokens = np.asarray(seq.prompt_ids[:length], dtype=np.int32)
        if length == 0 or cache.covers(tokens):
            return
        pages = _pages(length)
        with self._cond:  # `seq` still holds its reservation: no new page is needed yet
            evicted = self._evict_for(pages)
            fits = self._reserved + pages + cache.pages <= self.kv_pages_total
        for seq_id in evicted:
            self.model.remove_sequence(seq_id)
        if fits:
            prefix_id = cache.new_seq_id()
            self.model.fork_sequence(seq.seq_id, prefix_id, length)
            with self._cond:
                redundant = cache.add(prefix_id, tokens)
            for seq_id in redundant:
                self.model.remove_sequence(seq_id)


def take_pieces(prefilling: list[Sequence], piece_size: int) -> list[tuple[Sequence, np.ndarray]]:
    """One prefill step: the next piece of each sequence, in arrival order, while they fit in
    `piece_size` tokens; whole pieces only, and one-token pieces apart from longer ones (see the
    module's docstring)."""
    budget = piece_size
    batch: list[tuple[Sequence, np.ndarray]] = []
    for seq in prefilling:
        if budget == 0:
            break
        start = seq.num_prefilled
        piece = np.asarray(seq.feed_ids[start : start + piece_size], dtype=np.int32)
        single = batch[0][1].size == 1 if batch else piece.size == 1
        if piece.size <= budget and (piece.size == 1) == single:
            batch.append((seq, piece))
            budget -= piece.size
    return batch


def _append_logits(seq: Sequence, logits: np.ndarray) -> None:
    """Sample for one sequence; a failure ends that sequence only, not its batch-mates."""
    try:
        seq.append_logits(logits)
    except Exception as err:
        seq.fail("error", f"sampling failed: {err}", "internal")


def _append_chain(seq: Sequence, rows: np.ndarray, drafts: list[int]) -> int:
    """`Sequence.append_chain`; a failure ends that sequence only (keeping its pending
    token's place)."""
    try:
        return seq.append_chain(rows, drafts)
    except Exception as err:
        seq.fail("error", f"sampling failed: {err}", "internal")
        return 1


def _pages(num_tokens: int) -> int:
    return max(1, math.ceil(num_tokens / PAGE_SIZE))
