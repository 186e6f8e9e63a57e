"""Cost of grammar-constrained decoding on a built model: decode speed with a JSON Schema
against plain decoding in the same run, and the first-token latency a schema adds (compiled
cold, then from the compiler's cache).

    python benchmarks/structured_output.py [MODEL_DIR] [--runs 5] [--tokens 128]

Without MODEL_DIR: the embedded default, built into dist/ on first use.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mlc import ChatModule, GenerationConfig

PROMPT = "List the names of thirty animals."
# Long enough that every run ends at the token budget, not at the end of the document.
SCHEMA = {
    "type": "object",
    "properties": {
        "animals": {
            "type": "array",
            "items": {"type": "string", "maxLength": 40},
            "minItems": 100,
            "maxItems": 100,
        }
    },
    "required": ["animals"],
    "additionalProperties": False,
}


def decode_rate(cm: ChatModule, config: GenerationConfig) -> tuple[float, int, int]:
    """Decode tokens/s of one answer, its answer tokens and the tokens the grammar forced."""
    cm.reset_chat()
    cm.generate(PROMPT, config)
    stats = cm.last_stats
    return stats.decode_tokens_per_s, stats.decode_tokens, stats.forced_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    if args.model is None:
        from mlc.default_model import default_model_dir

        args.model = default_model_dir()
    cm = ChatModule(str(args.model))
    fmt = {"type": "json_schema", "schema": SCHEMA}

    start = time.perf_counter()
    cm._constraint(GenerationConfig(response_format=fmt).resolved({}))
    cold = time.perf_counter() - start  # xgrammar import, vocabulary, schema compilation
    start = time.perf_counter()
    cm._constraint(GenerationConfig(response_format=fmt).resolved({}))
    warm = time.perf_counter() - start

    plain = GenerationConfig(temperature=0, max_tokens=args.tokens)
    constrained = GenerationConfig(temperature=0, max_tokens=args.tokens, response_format=fmt)
    decode_rate(cm, plain)  # warm-up
    rows = []
    for _ in range(args.runs):  # interleaved: drift on a shared machine hits both alike
        rows.append((decode_rate(cm, plain), decode_rate(cm, constrained)))
    plain_rates = [p[0] for p, _ in rows]
    json_rates = [c[0] for _, c in rows]
    ratios = [c[0] / p[0] for p, c in rows]
    tokens = rows[-1][1][1]
    forced = rows[-1][1][2]
    print(f"model: {args.model}")
    print(
        f"schema setup: first {cold * 1e3:.1f} ms (xgrammar import and vocabulary included), "
        f"cached {warm * 1e3:.2f} ms"
    )
    print(f"plain decode tok/s: {' / '.join(f'{r:.1f}' for r in plain_rates)}")
    print(
        f"JSON Schema decode tok/s: {' / '.join(f'{r:.1f}' for r in json_rates)} "
        f"({tokens} tokens, {forced} forced)"
    )
    print(
        f"ratio per run: {' / '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
