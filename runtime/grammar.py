"""Grammar-constrained decoding with xgrammar: JSON (any object, or one JSON Schema), regular
expressions and EBNF grammars.

`Grammars` belongs to one tokenizer: it compiles a request's constraint into token masks (each
compiled grammar cached by its source) and starts a `TokenConstraint` per answer, which masks the
logits before each sampling and follows the tokens the answer accepts.

xgrammar is an optional dependency (`pip install "mlc[grammar]"`); it imports PyTorch, which the
lean runtime processes otherwise keep out (see `mlc.lean_runtime`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .json_strings import ControlTokens, JsonStrings
from .utf8_mask import Utf8Mask, incomplete_tail

INSTALL_HINT = 'pip install "mlc[grammar]"'
_NAMES = {
    "json_object": "JSON grammar",
    "json_schema": "JSON schema",
    "regex": "regex",
    "ebnf": "grammar",
    "structural_tag": "tool call grammar",
}
# xgrammar's messages begin with "[time] file.cc:line: ".
_SOURCE_LOCATION = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


class GrammarUnavailable(RuntimeError):
    """xgrammar is not installed."""


class GrammarError(ValueError):
    """A constraint that does not compile (a bad schema, regex or grammar)."""


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What an answer must match: `kind` is "json_object", "json_schema", "regex", "ebnf" or
    "structural_tag" (xgrammar's); `source` the schema (canonical JSON), the regex, the grammar
    or the structural tag (JSON). `json_begins` says where JSON values begin in the answer (""
    at once), for `JsonStrings`."""

    kind: str
    source: str = ""
    json_begins: tuple[str, ...] = ()


def constraint_of(
    response_format: dict | None, grammar: str | None, regex: str | None
) -> Constraint | None:
    """The constraint a generation config asks for (at most one of the three), or None.

    `response_format` is `{"type": "text"}`, `{"type": "json_object"}` or
    `{"type": "json_schema", "schema": {...}}`.
    """
    asked = [
        name
        for name, v in (
            ("response_format", response_format),
            ("grammar", grammar),
            ("regex", regex),
        )
        if v is not None
    ]
    if len(asked) > 1:
        raise ValueError(f"give at most one of response_format, grammar and regex, not {asked}")
    if grammar is not None:
        return Constraint("ebnf", _text(grammar, "grammar"))
    if regex is not None:
        return Constraint("regex", _text(regex, "regex"))
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ValueError("response_format must be a dict such as {'type': 'json_object'}")
    kind = response_format.get("type")
    if kind not in RESPONSE_FORMAT_TYPES:
        raise ValueError(
            f"response_format type must be one of {RESPONSE_FORMAT_TYPES}, not {kind!r}"
        )
    allowed = {"type", "schema"} if kind == "json_schema" else {"type"}
    extra = sorted(set(response_format) - allowed)
    if extra:
        raise ValueError(f"response_format of type {kind!r} takes no {', '.join(extra)}")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json_object", json_begins=("",))
    schema = response_format.get("schema")
    if not isinstance(schema, dict):
        raise ValueError(
            "response_format of type 'json_schema' needs a 'schema' (a JSON Schema dict)"
        )
    return Constraint("json_schema", json.dumps(schema), ("",))


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def load_xgrammar():
    """xgrammar, imported on first use; `GrammarUnavailable` with the install command when it
    is missing."""
    if sys.modules.get("torch", False) is None:
        del sys.modules["torch"]  # lifted: xgrammar needs PyTorch (see mlc.lean_runtime)
    try:
        import xgrammar
    except ImportError as err:
        raise GrammarUnavailable(
            f"structured output (response_format, grammar, regex) needs xgrammar: {INSTALL_HINT}"
            f" ({err})"
        ) from err
    return xgrammar


class Grammars:
    """Compiled grammars for one tokenizer and one model vocabulary (which may be larger than the
    tokenizer's: padded rows are never allowed). Cheap to make: xgrammar is loaded and the
    vocabulary read on the first `start` (thread-safe)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_token_ids: Iterable[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(set(stop_token_ids))
        self._lock = threading.Lock()
        self._ready = False

    def _prepare(self) -> None:
        """Load xgrammar and describe the vocabulary to it, once."""
        with self._lock:
            if self._ready:
                return
            xgr = load_xgrammar()
            self._xgr = xgr
            vocab_size = self.vocab_size
            encoded = [""] * vocab_size
            for piece, index in self.tokenizer.get_vocab(with_added_tokens=True).items():
                if index < vocab_size:
                    encoded[index] = piece
            metadata = xgr.TokenizerInfo._detect_metadata_from_hf(self.tokenizer.to_str())
            info = xgr.TokenizerInfo(
                encoded,
                metadata["vocab_type"],
                vocab_size=vocab_size,
                stop_token_ids=self.stop_token_ids or None,
                add_prefix_space=metadata["add_prefix_space"],
            )
            # xgrammar's compiler caches what it compiled, keyed by the source (thread-safe).
            self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            self.pieces: list[bytes] = list(info.decoded_vocab[:vocab_size])
            self.pieces += [b""] * (vocab_size - len(self.pieces))
            self.control_tokens = ControlTokens(self.pieces)
            # xgrammar also takes byte sequences that are not UTF-8 (a surrogate's three bytes)
            # as characters: constrained answers stay valid UTF-8 by this mask.
            self.utf8 = Utf8Mask(self.pieces)
            self._ready = True

    def compile(self, constraint: Constraint):
        """The compiled grammar (the same source compiles once); `GrammarError` naming the
        problem when it does not compile."""
        self._prepare()
        compiler = self._compiler
        try:
            if constraint.kind == "json_object":
                # JSON mode as in OpenAI's API: an object (xgrammar's built-in JSON grammar
                # takes any value), compact, with any keys.
                return compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=False, strict_mode=False
                )
            if constraint.kind == "json_schema":
                # Compact JSON, no whitespace runs: every value the schema bounds ends.
                return compiler.compile_json_schema(
                    constraint.source, any_whitespace=False, strict_mode=True
                )
            if constraint.kind == "regex":
                return compiler.compile_regex(constraint.source)
            if constraint.kind == "structural_tag":
                return compiler.compile_structural_tag(constraint.source)
            return compiler.compile_grammar(constraint.source)
        except (RuntimeError, ValueError, TypeError) as err:
            lines = str(err).strip().splitlines() or [type(err).__name__]
            message = _SOURCE_LOCATION.sub("", lines[-1])
            raise GrammarError(
                f"the {_NAMES[constraint.kind]} does not compile: {message}"
            ) from err

    def start(self, constraint: Constraint, stop_token_ids: Iterable[int]) -> TokenConstraint:
        """A fresh constraint for one answer; it may end with one of `stop_token_ids` (none:
        the answer ends where the grammar does); `GrammarUnavailable` without xgrammar."""
        compiled = self.compile(constraint)
        stops = sorted(set(stop_token_ids))
        matcher = self._xgr.GrammarMatcher(
            compiled,
            override_stop_tokens=stops or None,
            terminate_without_stop_token=not stops,
        )
        strings = None
        if constraint.json_begins:
            strings = JsonStrings(self.control_tokens, constraint.json_begins)
        state = TokenConstraint(matcher, self.pieces, self.utf8, strings)
        if not state.allowed().any():
            raise GrammarError(f"the {_NAMES[constraint.kind]} admits no output at all")
        return state


class TokenConstraint:
    """One answer's grammar state: which tokens may come next, and the tokens accepted."""

    def __init__(
        self,
        matcher,
        pieces: list[bytes],
        utf8: Utf8Mask,
        json_strings: JsonStrings | None = None,
    ):
        self.matcher = matcher
        self.pieces = pieces  # each token's bytes
        self.vocab_size = len(pieces)
        self.utf8 = utf8
        self.json_strings = json_strings  # keeps raw control characters out of JSON strings
        self._tail = b""  # the answer's last, incomplete UTF-8 character
        self._bitmask = np.zeros((1, (self.vocab_size + 31) // 32), dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """A boolean mask over the vocabulary of the tokens allowed next."""
        allowed = self.utf8.allowed(self._tail).copy()
        if self.matcher.fill_next_token_bitmask(self._bitmask):
            bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
            allowed &= bits[: self.vocab_size].astype(bool)
        if self.json_strings is not None:
            forbidden = self.json_strings.forbidden()
            if forbidden is not None:
                allowed &= ~forbidden
        return allowed

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` (float, a copy) with every token the grammar forbids at -inf."""
        logits = np.array(logits, dtype=np.float32)
        allowed = self.allowed()
        if not allowed.any():
            raise RuntimeError("the grammar allows no next token")
        logits[: allowed.size][~allowed] = -np.inf
        logits[allowed.size :] = -np.inf
        return logits

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise RuntimeError(f"token {token} does not continue the grammar (a masking bug)")
        self._tail = incomplete_tail(self._tail + self.pieces[token])
        if self.json_strings is not None:
            self.json_strings.feed(self.pieces[token])

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar forces next (jump-forward), none when the model has a choice."""
        return self.matcher.find_jump_forward_tokens()

    @property
    def finished(self) -> bool:
        """The grammar is complete and has taken its end (a stop token, or none is needed)."""
        return self.matcher.is_terminated()
