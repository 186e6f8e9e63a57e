"""Perplexity of a build on a text, measured as llama.cpp's `llama-perplexity` does, and the KL
divergence of its next-token distributions from a reference build's.

The method (llama.cpp `tools/perplexity/perplexity.cpp`, `perplexity()`): the whole text is
tokenized once, BOS first when the model adds one, and cut into `n_tokens // ctx` chunks of
`ctx` tokens (the rest is dropped). Each chunk is evaluated alone, from an empty KV cache, with
its first token replaced by BOS when the model adds one. Only its second half is scored: for
each position j in [ctx/2, ctx-1), the negative log-likelihood (NLL) of token j+1 under the
logits at j, which is ctx/2 - 1 tokens per chunk. Perplexity is exp(mean NLL) over every scored
token. Everything after the logits is float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .chat_config import ChatConfig
from .chat_module import load_tokenizer, read_tokenizer_config
from .compiled_model import CompiledModel

# Called once the chunks are known (0 done) and after each: (chunks done, chunks, perplexity).
ChunkCallback = Callable[[int, int, float], None]


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    tokens: int  # the scored tokens: ctx/2 - 1 per chunk
    chunks: int
    ctx: int
    kl_mean: float | None = None  # mean KL(P_reference || P_this) over the scored positions
    top1_agreement: float | None = None  # share of them where both builds' argmax agree

    def to_dict(self) -> dict[str, Any]:
        """The fields, without the KL ones when no reference was given."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def summary(self, text_name: str, reference: str | None = None) -> str:
        line = (
            f"perplexity {self.perplexity:.2f} over {self.tokens} tokens in {self.chunks} "
            f"chunks of {self.ctx} ({text_name})"
        )
        if self.kl_mean is not None and self.top1_agreement is not None:
            line += (
                f"\nKL against {reference}: mean {self.kl_mean:.4g}, "
                f"top-1 agreement {100 * self.top1_agreement:.1f} %"
            )
        return line


def read_text(path: Path) -> str:
    """The file's text as UTF-8, byte for byte (no newline translation, as llama.cpp reads)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err})") from err
    if not text:
        raise ValueError(f"the text file {path} is empty")
    return text


def adds_bos(model_dir: Path, bos_token_id: int | None, tokenizer: Tokenizer) -> bool:
    """Whether the model puts BOS before a text (llama.cpp's `add_bos`): `add_bos_token` of
    `tokenizer_config.json` where it is set, else whether the tokenizer itself adds BOS."""
    if bos_token_id is None:
        return False
    flag = read_tokenizer_config(model_dir).get("add_bos_token")
    if isinstance(flag, bool):
        return flag
    with_special = tokenizer.encode("a", add_special_tokens=True).ids
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    return with_special[:1] == [bos_token_id] and plain[:1] != [bos_token_id]


def check_ctx(ctx: int, config: ChatConfig, model_dir: Path) -> None:
    if ctx < 4 or ctx % 2:
        raise ValueError(
            f"--ctx must be even and at least 4 (positions ctx/2 .. ctx-2 of each chunk are "
            f"scored), not {ctx}"
        )
    if ctx > config.context_window_size:
        raise ValueError(
            f"--ctx {ctx} exceeds the context window of {model_dir} "
            f"({config.context_window_size} tokens); use --ctx {config.context_window_size} "
            "or less"
        )


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log P over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(reference_logprobs: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """KL(P_reference || P) per row, from log-probabilities."""
    return (np.exp(reference_logprobs) * (reference_logprobs - logprobs)).sum(axis=-1)


class ScoredBuild:
    """A build loaded for scoring: its compiled model, tokenizer and BOS rule."""

    def __init__(self, model_dir: Path, device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.engine = CompiledModel(self.model_dir, device=device)
        self.tokenizer = load_tokenizer(self.model_dir)
        bos = self.engine.chat_config.bos_token_id
        # The BOS id when the model adds one, else None.
        self.bos_token_id = bos if adds_bos(self.model_dir, bos, self.tokenizer) else None

    def tokenize(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids if self.bos_token_id is None else [self.bos_token_id, *ids]

    def chunk(self, ids: list[int], index: int, ctx: int) -> np.ndarray:
        """Tokens [index*ctx, (index+1)*ctx), the first one BOS when the model adds BOS."""
        tokens = np.array(ids[index * ctx : (index + 1) * ctx], dtype=np.int32)
        if self.bos_token_id is not None:
            tokens[0] = self.bos_token_id
        return tokens

    def scored_logprobs(self, tokens: np.ndarray) -> np.ndarray:
        """Evaluate `tokens` from an empty KV cache; log P at the scored positions
        [ctx/2, ctx-1), float64."""
        ctx = tokens.size
        self.engine.reset()
        logits = self.engine.prefill(tokens, all_logits=True)
        return log_softmax(logits[ctx // 2 : ctx - 1])


def perplexity(
    model_dir: Path,
    text: str,
    ctx: int = 512,
    chunks: int | None = None,
    device: str = "cpu",
    kl_against: Path | None = None,
    on_chunk: ChunkCallback | None = None,
) -> PerplexityResult:
    """Perplexity of the build in `model_dir` on `text` in chunks of `ctx` tokens (at most
    `chunks` of them); with `kl_against`, also the mean KL divergence of its next-token
    distributions from that reference build's, and their top-1 agreement."""
    model_dir = Path(model_dir)
    config = ChatConfig.load(model_dir)
    check_ctx(ctx, config, model_dir)
    if chunks is not None and chunks < 1:
        raise ValueError(f"--chunks must be at least 1, not {chunks}")
    if kl_against is not None:
        kl_against = Path(kl_against)
        other_config = ChatConfig.load(kl_against)
        if other_config.vocab_size != config.vocab_size:
            raise ValueError(
                f"{kl_against} has a vocabulary of {other_config.vocab_size} tokens and "
                f"{model_dir} one of {config.vocab_size}: KL divergence needs the same "
                "tokenizer and vocabulary"
            )
        check_ctx(ctx, other_config, kl_against)

    build = ScoredBuild(model_dir, device)
    ids = build.tokenize(text)
    if len(ids) < ctx:
        raise ValueError(
            f"the text tokenizes to {len(ids)} tokens, fewer than one chunk of --ctx {ctx} "
            f"needs ({ctx}); give a longer text or a smaller --ctx"
        )
    reference = None
    if kl_against is not None:
        reference = ScoredBuild(kl_against, device)
        _check_same_tokens(reference, build, ids, text)
    n_chunks = len(ids) // ctx if chunks is None else min(chunks, len(ids) // ctx)
    return score_chunks(build, ids, ctx, n_chunks, reference, on_chunk)


def score_chunks(
    build: ScoredBuild,
    ids: list[int],
    ctx: int,
    n_chunks: int,
    reference: ScoredBuild | None = None,
    on_chunk: ChunkCallback | None = None,
) -> PerplexityResult:
    """Perplexity of `build` over the first `n_chunks` chunks of `ctx` tokens of `ids` (the
    text's tokens, BOS first where the model adds it), and with `reference`, the KL divergence
    from it."""
    first = ctx // 2
    nll = 0.0
    kl = 0.0
    same_top = 0
    count = 0
    if on_chunk is not None:
        on_chunk(0, n_chunks, float("nan"))
    for i in range(n_chunks):
        tokens = build.chunk(ids, i, ctx)
        logprobs = build.scored_logprobs(tokens)
        targets = tokens[first + 1 :]
        nll -= float(logprobs[np.arange(targets.size), targets].sum())
        count += targets.size
        if reference is not None:
            reference_logprobs = reference.scored_logprobs(tokens)
            kl += float(kl_divergence(reference_logprobs, logprobs).sum())
            same_top += int((reference_logprobs.argmax(axis=-1) == logprobs.argmax(axis=-1)).sum())
        if on_chunk is not None:
            on_chunk(i + 1, n_chunks, float(np.exp(nll / count)))
    return PerplexityResult(
        perplexity=float(np.exp(nll / count)),
        tokens=count,
        chunks=n_chunks,
        ctx=ctx,
        kl_mean=kl / count if reference is not None else None,
        top1_agreement=same_top / count if reference is not None else None,
    )


def _check_same_tokens(
    reference: ScoredBuild, build: ScoredBuild, ids: list[int], text: str
) -> None:
    """Both builds must see the same chunks: the same token ids and BOS rule."""
    problem = None
    if reference.bos_token_id != build.bos_token_id:
        problem = (
            f"BOS {reference.bos_token_id} vs {build.bos_token_id} (None: the model adds none)"
        )
    else:
        other = reference.tokenize(text)
        if other != ids:
            at = next(
                (i for i, (a, b) in enumerate(zip(other, ids, strict=False)) if a != b),
                min(len(other), len(ids)),
            )
            problem = f"{len(other)} vs {len(ids)} tokens, first difference at token {at}"
    if problem is not None:
        raise ValueError(
            f"{reference.model_dir} and {build.model_dir} tokenize the text differently "
            f"({problem}); KL divergence needs the same tokenizer"
        )
