"""`mlc perplexity` (llama.cpp's method) on a tiny model, against transformers in float64 with
the chunking written out index by index; KL divergence between builds; the command's output and
errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from reference import load_hf
from tokenizers import Tokenizer, processors

from mlc.cli import main
from mlc.runtime import CompiledModel
from mlc.runtime.perplexity import adds_bos, perplexity

GQA = {"num_key_value_heads": 2}
TEXT = (Path(__file__).parent / "data" / "public_domain.txt").read_text()
CTX = 64
CHUNKS = 4
BOS = 1  # the harness's `<s>`


@pytest.fixture(scope="module")
def builds(tiny_builds):
    """(Hugging Face dir, q0f32 build, q4f32_1 build) of the same tiny model."""
    hf_dir, q0 = tiny_builds.get("gqa", **GQA)
    _, q4 = tiny_builds.get("gqa", quantization="q4f32_1", **GQA)
    return hf_dir, q0, q4


@pytest.fixture(scope="module")
def hf_model(builds):
    return load_hf(builds[0])  # float64


def _ids(hf_dir: Path, bos: int | None = None) -> list[int]:
    tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    return ids if bos is None else [bos, *ids]


def _reference_nll(model, ids: list[int], ctx: int, n_chunks: int, **variant) -> list[float]:
    """llama.cpp's scoring by hand: chunk i is ids[i*ctx : (i+1)*ctx] (its first token BOS if
    `bos`), scored at positions j = ctx/2 .. ctx-2 on token j+1. `first` and `shift` make the
    wrong variants the comparison must tell apart."""
    import torch

    bos, first, shift = variant.get("bos"), variant.get("first", ctx // 2), variant.get("shift", 1)
    nll = []
    for i in range(n_chunks):
        chunk = ids[i * ctx : (i + 1) * ctx]
        if bos is not None:
            chunk = [bos, *chunk[1:]]
        with torch.no_grad():
            logits = model(torch.tensor([chunk])).logits[0].numpy()
        assert logits.dtype == np.float64
        for j in range(first, ctx - 1):
            row = logits[j]
            log_z = row.max() + np.log(np.exp(row - row.max()).sum())
            nll.append(log_z - row[chunk[j + shift]])
    return nll


def _ppl(nll: list[float]) -> float:
    return float(np.exp(np.mean(nll)))


@pytest.mark.parametrize("ctx", [CTX, 8])
def test_perplexity_matches_transformers_chunk_by_chunk(builds, hf_model, ctx):
    hf_dir, q0, _ = builds
    ids = _ids(hf_dir)
    result = perplexity(q0, TEXT, ctx=ctx, chunks=CHUNKS)
    nll = _reference_nll(hf_model, ids, ctx, CHUNKS)
    assert (result.tokens, result.chunks, result.ctx) == (len(nll), CHUNKS, ctx)
    assert result.tokens == CHUNKS * (ctx // 2 - 1)
    np.testing.assert_allclose(result.perplexity, _ppl(nll), rtol=1e-4)
    # The comparison can fail: scoring whole chunks, one more position, or the token at j
    # instead of j+1 gives numbers well outside the tolerance.
    wrong = [{"first": 0}, {"shift": 0}]
    if ctx == 8:  # one position more of 3 per chunk shows; of 31 it moves the mean ~5e-4
        wrong.append({"first": ctx // 2 - 1})
    for variant in wrong:
        other = _ppl(_reference_nll(hf_model, ids, ctx, CHUNKS, **variant))
        assert abs(other / result.perplexity - 1) > 1e-2, variant


def test_all_chunks_by_default_and_the_tail_dropped(builds):
    hf_dir, q0, _ = builds
    n_tokens = len(_ids(hf_dir))
    result = perplexity(q0, TEXT, ctx=256)
    assert result.chunks == n_tokens // 256 and result.tokens == result.chunks * 127
    limited = perplexity(q0, TEXT, ctx=256, chunks=10**6)
    assert limited == result


def test_a_model_that_adds_bos_gets_bos_at_every_chunk_start(builds, hf_model, tmp_path):
    hf_dir, q0, _ = builds
    built = tmp_path / "bos"
    shutil.copytree(q0, built)
    (built / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    result = perplexity(built, TEXT, ctx=CTX, chunks=CHUNKS)
    ids = _ids(hf_dir, bos=BOS)  # BOS first, then chunks cut from there
    nll = _reference_nll(hf_model, ids, CTX, CHUNKS, bos=BOS)
    np.testing.assert_allclose(result.perplexity, _ppl(nll), rtol=1e-4)
    without = perplexity(q0, TEXT, ctx=CTX, chunks=CHUNKS).perplexity
    assert abs(result.perplexity / without - 1) > 1e-2


def test_add_bos_follows_tokenizer_config_else_the_tokenizer(builds, tmp_path):
    hf_dir, _, _ = builds
    plain = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    with_bos = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    with_bos.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", BOS)]
    )
    assert not adds_bos(tmp_path, BOS, plain)  # no tokenizer_config.json: the tokenizer decides
    assert adds_bos(tmp_path, BOS, with_bos)
    assert not adds_bos(tmp_path, None, with_bos)  # no BOS token at all
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert not adds_bos(tmp_path, BOS, with_bos)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    assert adds_bos(tmp_path, BOS, plain)


def test_kl_of_a_build_against_itself_is_zero(builds):
    _, q0, _ = builds
    result = perplexity(q0, TEXT, ctx=CTX, chunks=2, kl_against=q0)
    assert result.kl_mean is not None and abs(result.kl_mean) < 1e-9
    assert result.top1_agreement == 1.0


def test_kl_against_another_quantization_matches_numpy(builds):
    _, q0, q4 = builds
    result = perplexity(q4, TEXT, ctx=CTX, chunks=CHUNKS, kl_against=q0)
    # By hand from the two builds' logits: KL(P_q0 || P_q4), reference first.
    ids = _ids(builds[0])
    kl, kl_reversed, same = [], [], []
    engines = {code: CompiledModel(path) for code, path in (("q0", q0), ("q4", q4))}
    for i in range(CHUNKS):
        chunk = ids[i * CTX : (i + 1) * CTX]
        logp = {}
        for code, engine in engines.items():
            engine.reset()  # each chunk from an empty cache
            logits = engine.prefill(chunk, all_logits=True).astype(np.float64)
            rows = logits[CTX // 2 : CTX - 1]
            logp[code] = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
        p, q = np.exp(logp["q0"]), np.exp(logp["q4"])
        kl.extend(np.sum(p * np.log(p / q), axis=1))
        kl_reversed.extend(np.sum(q * np.log(q / p), axis=1))
        same.extend(np.argmax(p, axis=1) == np.argmax(q, axis=1))
    assert result.kl_mean > 1e-3
    np.testing.assert_allclose(result.kl_mean, np.mean(kl), rtol=1e-9)
    assert abs(np.mean(kl_reversed) / result.kl_mean - 1) > 1e-3  # the direction shows
    assert result.top1_agreement == np.mean(same) and 0 < result.top1_agreement < 1
    assert result.perplexity == perplexity(q4, TEXT, ctx=CTX, chunks=CHUNKS).perplexity


def test_cli_json_is_the_only_stdout(builds, tmp_path):
    _, q0, q4 = builds
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    command = ["mlc", "perplexity", str(q4), "--text", str(text), "--ctx", str(CTX)]
    done = subprocess.run(
        [*command, "--chunks", "2", "--kl-against", str(q0), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"perplexity", "tokens", "chunks", "ctx", "kl_mean", "top1_agreement"}
    expected = perplexity(q4, TEXT, ctx=CTX, chunks=2, kl_against=q0).to_dict()
    assert result == pytest.approx(expected, rel=1e-12)
    assert "perplexity" in done.stderr  # the progress bar


def test_cli_human_output(builds, tmp_path):
    _, q0, _ = builds
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    args = ["perplexity", str(q0), "--text", str(text), "--ctx", str(CTX), "--chunks", "3"]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    ppl = perplexity(q0, TEXT, ctx=CTX, chunks=3).perplexity
    line = f"perplexity {ppl:.2f} over {3 * (CTX // 2 - 1)} tokens in 3 chunks of {CTX} (text.txt)"
    assert run.stdout == line + "\n"
    run = CliRunner().invoke(main, [*args, "--kl-against", str(q0)])
    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines()[1] == f"KL against {q0}: mean 0, top-1 agreement 100.0 %"
    assert json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout) == {
        "perplexity": pytest.approx(ppl, rel=1e-12),
        "tokens": 93,
        "chunks": 3,
        "ctx": CTX,
    }


@pytest.mark.parametrize(
    ("ctx", "text", "message"),
    [
        (63, TEXT, "--ctx must be even and at least 4"),
        (2, TEXT, "--ctx must be even and at least 4"),
        (512, TEXT, "--ctx 512 exceeds the context window of .* \\(256 tokens\\); use --ctx 256"),
        (CTX, "Once upon a time", "tokenizes to 11 tokens, fewer than .* --ctx 64 needs \\(64\\)"),
        (CTX, None, "text file not found"),
        (CTX, "", "is empty"),
    ],
)
def test_cli_errors_are_one_clear_line(builds, tmp_path, ctx, text, message):
    _, q0, _ = builds
    path = tmp_path / "text.txt"
    if text is not None:
        path.write_text(text)
    run = CliRunner().invoke(main, ["perplexity", str(q0), "--text", str(path), "--ctx", str(ctx)])
    assert run.exit_code == 1, run.output
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: ")
    assert re.search(message, line), line


def test_kl_needs_the_same_vocabulary_and_tokenizer(builds, tmp_path):
    hf_dir, q0, _ = builds
    other_vocab = tmp_path / "vocab"
    other_vocab.mkdir()
    config = json.loads((q0 / "mlc-chat-config.json").read_text())
    (other_vocab / "mlc-chat-config.json").write_text(json.dumps({**config, "vocab_size": 384}))
    with pytest.raises(ValueError, match="vocabulary of 384 tokens and .* one of 320"):
        perplexity(q0, TEXT, ctx=CTX, kl_against=other_vocab)

    other_tokenizer = tmp_path / "tokenizer"
    shutil.copytree(q0, other_tokenizer)
    tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    tokenizer.add_tokens(["the"])  # an added token "the": other ids for the same text
    tokenizer.save(str(other_tokenizer / "tokenizer.json"))
    with pytest.raises(ValueError, match="tokenize the text differently .* first difference"):
        perplexity(q0, TEXT, ctx=CTX, kl_against=other_tokenizer)
