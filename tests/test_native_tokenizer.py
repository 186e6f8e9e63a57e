"""The native runtime's tokenizer (runtime/native/src/tokenizer.cc) against the `tokenizers`
library: `mlc-tokenize`, compiled here with g++ alone (no TVM), encodes and decodes the same
samples and tokenizer files as the web page's tokenizer.js is checked with, then the components
those files leave out, long inputs, refusals and speed."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizer_samples import (
    CONVERSATION,
    EXTRA_SAMPLES,
    LLAMA3_STYLE,
    TEXT,
    tokenizer_samples,
    tokenizer_variants,
)
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from mlc.testing.random_model import TINY_SETTINGS, make_tokenizer

NATIVE = Path(__file__).resolve().parents[1] / "runtime" / "native"
SOURCES = [
    NATIVE / "src" / f"{name}.cc"
    for name in ("json", "unicode", "regex", "tokenizer", "chat_format")
]

BYTES = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
PADDING = {  # to the longest of a batch: a single text is left as it is
    "strategy": "BatchLongest",
    "direction": "Right",
    "pad_to_multiple_of": None,
    "pad_id": 0,
    "pad_type_id": 0,
    "pad_token": "<unk>",
}
BEHAVIORS = ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]
# Split patterns for the regex engine, each match a piece of its own.
REGEXES = [
    r"x*xxx|\s*\s\s",  # backtracking down to the minimum count
    r"\w+?(?=\s)|[^\w]++",  # lazy, lookahead, possessive
    r"(?>\w+)(?!e)|e",  # atomic group
    r"^\w+|\w+$",  # line anchors
    r"(?i)[a-f]{2,3}|(?i:TH)E?",  # case-insensitive classes and literals, counted repeat
    r"(?:ab|a)(?:bc|c)+|\bw\w*",  # alternation order, repeated group, word boundary
    r"\d{2,}?|.{3}|[\p{P}\-]+",  # lazy count, dot, class
]
COMPONENT_SAMPLES = [
    "x  y\t\tz\n",
    "the THE The tHe them",
    "a1234567b ١٢³ 12.5",
    "xxaxx-bx axxxb xxx",
    "abcbc ac abbc. web wide\nline two\n",
    "say hello, hellothere _hello hello_ héllo",
    "x<|x|>  y  <|x|>\tz <|x|>",
    "a wor word",
    "  ",
    "___",
]


@pytest.fixture(scope="module")
def mlc_tokenize(tmp_path_factory) -> Path:
    assert shutil.which("g++") is not None, "the native tokenizer's test needs g++ (apt)"
    binary = tmp_path_factory.mktemp("native") / "mlc-tokenize"
    cmd = ["g++", "-std=c++17", "-O2", "-Wall", "-Wextra", f"-I{NATIVE / 'src'}"]
    cmd += [*map(str, SOURCES), str(NATIVE / "tools" / "mlc_tokenize.cc"), "-o", str(binary)]
    subprocess.run(cmd, check=True)
    return binary


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tokenizers")
    tiny = folder / "tiny.json"  # what `save_model` writes for our tiny test models
    make_tokenizer(TINY_SETTINGS["vocab_size"]).save(str(tiny))
    return tokenizer_variants(folder, tiny)


def run(binary: Path, path: Path, encode=(), decode=()) -> subprocess.CompletedProcess:
    request = json.dumps({"encode": list(encode), "decode": list(decode)})
    return subprocess.run(
        [str(binary), str(path)], input=request, capture_output=True, text=True, encoding="utf-8"
    )


def check(binary: Path, path: Path, samples: list[str], rng: random.Random) -> dict:
    """Encodes `samples` and decodes random ids with both; returns the native result."""
    reference = Tokenizer.from_file(str(path))
    size = reference.get_vocab_size()
    id_lists = [[rng.randrange(size) for _ in range(rng.randrange(1, 8))] for _ in range(200)]
    result = run(binary, path, samples, id_lists)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = [reference.encode(s, add_special_tokens=False).ids for s in samples]
    wrong = [(s, a, b) for s, a, b in zip(samples, out["ids"], expected, strict=True) if a != b]
    assert wrong == [], (path.name, wrong[:3])
    # Random ids cut characters apart: incomplete UTF-8 must decode to U+FFFD alike.
    decoded = [reference.decode(ids, skip_special_tokens=True) for ids in id_lists]
    assert out["text"] == decoded, path.name
    return out


def test_native_tokenizer_matches_the_tokenizers_library(mlc_tokenize, variants):
    samples = tokenizer_samples() + EXTRA_SAMPLES
    rng = random.Random(0)
    results = {name: check(mlc_tokenize, path, samples, rng) for name, path in variants.items()}
    # The byte fallback and the added tokens were exercised, not skipped.
    spm = Tokenizer.from_file(str(variants["sentencepiece-gguf"]))
    assert any(
        spm.id_to_token(i).startswith("<0x")
        for ids in results["sentencepiece-gguf"]["ids"]
        for i in ids
    )
    tiny = Tokenizer.from_file(str(variants["tiny"]))
    chatml = samples.index("<|im_start|>user\nhi<|im_end|>")
    assert results["tiny"]["ids"][chatml][0] == tiny.token_to_id("<|im_start|>")


def _with_pre_tokenizer(step: dict):
    def edit(spec: dict) -> None:
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [step, BYTES]}

    return edit


def _split(pattern: dict, behavior: str, invert: bool = False):
    step = {"type": "Split", "pattern": pattern, "behavior": behavior, "invert": invert}
    return _with_pre_tokenizer(step)


def _set(key: str, value):
    def edit(spec: dict) -> None:
        spec[key] = value

    return edit


def _merges_as_strings(spec: dict) -> None:
    spec["model"]["merges"] = [" ".join(pair) for pair in spec["model"]["merges"]]


def _ignore_merges(spec: dict) -> None:
    spec["model"]["ignore_merges"] = True


def _added_tokens(spec: dict) -> None:
    """Added tokens with each option; `wor` is normalized, so it is matched as normalized."""
    spec["normalizer"] = {"type": "Replace", "pattern": {"String": "o"}, "content": "0"}
    start = len(spec["model"]["vocab"])
    options = [
        ("hello", {"single_word": True}),
        ("<|x|>", {"lstrip": True, "rstrip": True}),
        ("wor", {"normalized": True}),
        ("_", {"special": True}),
    ]
    for i, (content, flags) in enumerate(options):
        token = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
        token |= {"special": False, "id": start + i, "content": content, **flags}
        spec["added_tokens"].append(token)


def _metaspace_first_after_normalizers(spec: dict) -> None:
    """Metaspace prepends to the piece that starts the input, as the normalizers align it."""
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Strip", "strip_left": True, "strip_right": False},
            {"type": "Replace", "pattern": {"Regex": "^ab"}, "content": "Q"},
            {"type": "Prepend", "prepend": "!"},
        ],
    }
    metaspace = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
    steps = [{"type": "Punctuation", "behavior": "Isolated"}, metaspace, BYTES]
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": steps}


COMPONENTS = {
    "whitespace": _with_pre_tokenizer({"type": "Whitespace"}),
    "whitespace-split": _with_pre_tokenizer({"type": "WhitespaceSplit"}),
    "digits": _with_pre_tokenizer({"type": "Digits", "individual_digits": False}),
    "digits-individual": _with_pre_tokenizer({"type": "Digits", "individual_digits": True}),
    "metaspace-always-split": _with_pre_tokenizer(
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    ),
    "metaspace-first-after-normalizers": _metaspace_first_after_normalizers,
    "metaspace-never": _with_pre_tokenizer(
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": True}
    ),
    **{
        f"punctuation-{b}": _with_pre_tokenizer({"type": "Punctuation", "behavior": b})
        for b in BEHAVIORS
    },
    **{f"split-{b}": _split({"Regex": r"\s+|\p{N}{1,2}|x"}, b) for b in BEHAVIORS},
    **{f"split-empty-matches-{b}": _split({"Regex": "l*"}, b) for b in BEHAVIORS},
    "split-inverted": _split({"Regex": r"(?i:the)\b|[^\s\p{L}]+"}, "Removed", invert=True),
    "split-string": _split({"String": "x"}, "MergedWithPrevious"),
    **{f"regex-{i}": _split({"Regex": pattern}, "Isolated") for i, pattern in enumerate(REGEXES)},
    "normalizers": _set(
        "normalizer",
        {
            "type": "Sequence",
            "normalizers": [
                {"type": "Strip", "strip_left": True, "strip_right": True},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Prepend", "prepend": "^"},
            ],
        },
    ),
    "byte-level-prefix-space": _set(
        "pre_tokenizer", {**BYTES, "add_prefix_space": True, "use_regex": True}
    ),
    "no-decoder": _set("decoder", None),
    "merges-as-strings": _merges_as_strings,
    "ignore-merges": _ignore_merges,
    "added-tokens": _added_tokens,
    "padding-to-the-longest": _set("padding", PADDING),
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_components_match_the_tokenizers_library(mlc_tokenize, variants, tmp_path, name):
    spec = json.loads(variants["tiny"].read_text())
    COMPONENTS[name](spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    check(
        mlc_tokenize,
        path,
        tokenizer_samples(60) + EXTRA_SAMPLES + COMPONENT_SAMPLES,
        random.Random(1),
    )


def test_subword_prefix_suffix_and_unknown_tokens(mlc_tokenize, tmp_path):
    """A WordPiece-like BPE: continuing_subword_prefix, end_of_word_suffix and an unknown token
    for what the vocabulary lacks (fused and not)."""
    samples = tokenizer_samples(60) + EXTRA_SAMPLES + COMPONENT_SAMPLES
    for fuse in (False, True):
        tokenizer = Tokenizer(
            models.BPE(
                unk_token="[UNK]",
                continuing_subword_prefix="##",
                end_of_word_suffix="</w>",
                fuse_unk=fuse,
            )
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["[UNK]"],
            continuing_subword_prefix="##",
            end_of_word_suffix="</w>",
            show_progress=False,
        )
        tokenizer.train_from_iterator(TEXT.read_text().splitlines()[:40], trainer)
        path = tmp_path / f"fuse-{fuse}.json"
        tokenizer.save(str(path))
        out = check(mlc_tokenize, path, samples, random.Random(2))
        unk = tokenizer.token_to_id("[UNK]")
        assert any(unk in ids for ids in out["ids"])


@pytest.mark.parametrize("name", ["tiny", "smollm2-llama3", "sentencepiece-gguf"])
def test_long_inputs_match_the_tokenizers_library(mlc_tokenize, variants, name):
    """A 100 KB word and runs of 10,000 spaces: no stack overflow, the same ids."""
    letters = np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz"), 100_000)
    samples = ["".join(letters), " " * 10_000, " " * 10_000 + "word", "7" * 20_000]
    check(mlc_tokenize, variants[name], samples, random.Random(3))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("normalizer", {"type": "NFKC"}, "the normalizer NFKC is not supported"),
        ("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True}, "decoder WordPiece"),
        (
            "pre_tokenizer",
            {"type": "Split", "pattern": {"Regex": "(?<=a)b"}, "behavior": "Isolated"},
            "regex '(?<=a)b'",
        ),
        ("pre_tokenizer", {"type": "BertPreTokenizer"}, "pre-tokenizer BertPreTokenizer"),
        ("truncation", {"max_length": 8, "strategy": "LongestFirst"}, "truncation is not"),
        ("padding", {**PADDING, "strategy": {"Fixed": 16}}, "padding is not"),
    ],
)
def test_unsupported_components_are_refused(mlc_tokenize, variants, tmp_path, key, value, message):
    spec = json.loads(variants["tiny"].read_text())
    spec[key] = value
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    result = run(mlc_tokenize, path, ["x"])
    assert result.returncode == 1 and result.stdout == ""
    assert str(path) in result.stderr and message in result.stderr, result.stderr


def test_bpe_dropout_is_refused(mlc_tokenize, variants, tmp_path):
    spec = json.loads(variants["tiny"].read_text())
    spec["model"]["dropout"] = 0.1
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    result = run(mlc_tokenize, path, ["x"])
    assert result.returncode == 1 and "BPE dropout is not supported" in result.stderr


def test_encode_speed(mlc_tokenize, variants):
    """SmolLM2's 49k vocabulary on about 2,000 tokens of English (the time to load the file,
    measured alone, is taken off)."""
    path = variants["smollm2-default"]
    text = TEXT.read_text()
    tokens = len(Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids)
    repeats = 10
    start = time.perf_counter()
    assert run(mlc_tokenize, path).returncode == 0
    load = time.perf_counter() - start
    start = time.perf_counter()
    assert run(mlc_tokenize, path, [text] * repeats).returncode == 0
    per_encode = (time.perf_counter() - start - load) / repeats
    print(f"\nnative encode, {tokens} tokens: {per_encode * 1e3:.1f} ms (load {load * 1e3:.0f} ms)")
    assert per_encode < 2


def test_native_chat_format_renders_as_the_python_templates(mlc_tokenize, variants):
    """`chat-format.json` rendered by the native runtime equals the template's own rendering:
    every built-in template, SmolLM2's Jinja template and a Llama-3-style trimming one."""
    from mlc.default_model import embedded_gguf
    from mlc.gguf.checkpoint import GGUFCheckpoint
    from mlc.runtime.chat_format import FORMAT_VERSION, turn_rules
    from mlc.runtime.chat_template import JinjaChatTemplate
    from mlc.runtime.conversation import TEMPLATES

    smollm2 = GGUFCheckpoint(embedded_gguf()).file.metadata["tokenizer.chat_template"]
    templates = {
        **TEMPLATES,
        "smollm2": JinjaChatTemplate(smollm2, {}),
        "llama3-style": JinjaChatTemplate(LLAMA3_STYLE, {"bos_token": "<|begin_of_text|>"}),
    }
    conversations = [CONVERSATION[:n] for n in (1, 3, 5)]
    roles = ["user", "assistant"]
    for name, template in templates.items():
        fmt = {
            "format_version": FORMAT_VERSION,
            **turn_rules(template),
            "add_bos": False,
            "bos_token_id": None,
            "stop_token_ids": [],
            "stop_str": [],
        }
        request = {"render": {"format": fmt, "conversations": conversations}}
        out = subprocess.run(
            [str(mlc_tokenize), str(variants["tiny"])],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            check=True,
        )
        expected = [
            template.render([{"role": roles[i % 2], "content": c} for i, c in enumerate(conv)])
            for conv in conversations
        ]
        assert json.loads(out.stdout)["rendered"] == expected, name
