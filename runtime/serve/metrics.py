"""Counters and latency histograms, rendered in the Prometheus text format for `/metrics`."""

from __future__ import annotations

import bisect
import collections
import threading

from ..batch_engine import EngineStats

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip([*self.buckets, float("inf")], self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        out += [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class ServerMetrics:
    """What the HTTP layer counts; the engine's own numbers come from `EngineStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.time_to_first_token = Histogram()
        self.request_latency = Histogram()

    def count_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def count_tokens(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def count_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def observe(self, first_token: float | None, total: float) -> None:
        with self._lock:
            if first_token is not None:
                self.time_to_first_token.observe(first_token)
            self.request_latency.observe(total)

    def render(self, engine: EngineStats) -> str:
        with self._lock:
            lines = [
                "# HELP mlc_requests_total HTTP requests by endpoint and status code.",
                "# TYPE mlc_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(
                    f'mlc_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}'
                )
            gauges = {
                "mlc_queue_length": (engine.num_waiting, "Requests waiting for a batch slot."),
                "mlc_running_sequences": (engine.num_running, "Sequences in the running batch."),
                "mlc_kv_cache_pages_total": (engine.kv_pages_total, "KV cache pages."),
                "mlc_kv_cache_pages_used": (engine.kv_pages_used, "KV cache pages holding tokens."),
                "mlc_kv_cache_pages_reserved": (
                    engine.kv_pages_reserved,
                    "KV cache pages reserved by running sequences.",
                ),
                "mlc_prefix_cache_entries": (
                    engine.prefix_cache_entries,
                    "Cached prompt prefixes held in the KV cache.",
                ),
                "mlc_prefix_cache_pages": (
                    engine.prefix_cache_pages,
                    "KV cache pages cached prefixes hold (pages two prefixes share count twice).",
                ),
                "mlc_kv_cache_pages_shared": (
                    engine.kv_pages_shared,
                    "KV cache pages running sequences read from cached prefixes.",
                ),
                "mlc_kv_cache_usage_ratio": (
                    engine.kv_pages_used / max(engine.kv_pages_total, 1),
                    "Fraction of KV cache pages in use.",
                ),
            }
            counters = {
                "mlc_prompt_tokens_total": (
                    self.prompt_tokens,
                    "Prompt tokens of finished requests.",
                ),
                "mlc_generation_tokens_total": (self.completion_tokens, "Generated tokens."),
                "mlc_cancelled_requests_total": (self.cancelled, "Requests cancelled by clients."),
                "mlc_prefill_tokens_total": (
                    engine.prefill_tokens,
                    "Tokens prefilled: prompts, and spans a grammar forced.",
                ),
                "mlc_decode_tokens_total": (engine.decode_tokens, "Tokens fed by decode steps."),
                "mlc_prefix_cache_queries_total": (
                    engine.prefix_cache_lookups,
                    "Admitted prompts looked up in the prefix cache.",
                ),
                "mlc_prefix_cache_hits_total": (
                    engine.prefix_cache_hits,
                    "Admitted prompts that reused a cached prefix.",
                ),
                "mlc_prefix_cache_tokens_reused_total": (
                    engine.prefix_tokens_reused,
                    "Prompt tokens taken from the prefix cache instead of prefilled.",
                ),
                "mlc_speculative_passes_total": (
                    engine.speculative_passes,
                    "Decode calls that verified speculative drafts.",
                ),
                "mlc_speculative_draft_tokens_total": (
                    engine.draft_tokens,
                    "Speculative draft tokens verified.",
                ),
                "mlc_speculative_accepted_tokens_total": (
                    engine.accepted_draft_tokens,
                    "Speculative draft tokens that joined answers.",
                ),
                "mlc_prefill_steps_total": (engine.prefill_steps, "Prefill calls."),
                "mlc_decode_steps_total": (engine.decode_steps, "Batched decode calls."),
                "mlc_prefill_seconds_total": (engine.prefill_seconds, "Time in prefill calls."),
                "mlc_decode_seconds_total": (engine.decode_seconds, "Time in decode calls."),
            }
            for kind, table in (("gauge", gauges), ("counter", counters)):
                for name, (value, help_text) in table.items():
                    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
                    lines.append(
                        f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
                    )
            for name, hist, help_text in (
                (
                    "mlc_time_to_first_token_seconds",
                    self.time_to_first_token,
                    "Time to first token.",
                ),
                ("mlc_request_latency_seconds", self.request_latency, "Request latency."),
            ):
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
                lines += hist.lines(name)
            return "\n".join(lines) + "\n"
