"""The reference: Hugging Face `transformers` in PyTorch running the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_hf(model_dir: Path, dtype: torch.dtype = torch.float64):
    """The model in `transformers`, eager attention, in float64 by default: our fp32 builds
    are then compared with the exact result, not with a second fp32 rounding of it (PyTorch's
    fp32 logits of a tiny model are themselves up to ~1e-4 off on a range of 15)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    # Falcon's eager attention adds the ALiBi bias twice (once to the scores, once more inside
    # the mask it builds from it); its SDPA path adds it once, as the original Falcon-RW code.
    alibi = config.model_type == "falcon" and config.alibi
    # Mixture-of-experts models: the loop over experts (the grouped-matmul path takes no float64).
    experts = {"experts_implementation": "eager"} if _has_experts(config) else {}
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="sdpa" if alibi else "eager", **experts
    )
    return model.eval()


@torch.no_grad()
def hf_logits(model, token_ids: list[int]) -> np.ndarray:
    """Logits at every position, [len(token_ids), vocab]."""
    return model(torch.tensor([token_ids])).logits[0].float().numpy()  # fp64 -> fp32 at the end


@torch.no_grad()
def hf_greedy(model, token_ids: list[int], num_tokens: int) -> list[int]:
    out = model.generate(
        torch.tensor([token_ids]),
        attention_mask=torch.ones(1, len(token_ids), dtype=torch.long),
        max_new_tokens=num_tokens,
        min_new_tokens=num_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(token_ids) :].tolist()


def _has_experts(config) -> bool:
    return any(
        getattr(config, key, None)
        for key in ("num_experts", "num_local_experts", "n_routed_experts")
    )


def is_router(name: str) -> bool:
    """A mixture of experts' router weight (Qwen2-MoE's shared-expert gate included)."""
    return name.endswith((".gate.weight", ".shared_expert_gate.weight"))


def dequantized_reference(model_dir: Path, code: str):
    """transformers with every Linear/Embedding weight, and the stacked experts' `[E, N, K]`
    weights of a mixture of experts, replaced by its dequantized value w' (routers stay float,
    as our builds keep them).

    Quantization groups run along each weight's input axis, so GPT-2's `Conv1D` weights
    (`[in, out]`) are quantized transposed, as the build stores them.
    """
    from transformers.pytorch_utils import Conv1D

    from mlc.quantization import get_quantization
    from mlc.quantization.group_quant import GroupQuantization

    model = load_hf(model_dir)
    scheme = get_quantization(code)
    if not isinstance(scheme, GroupQuantization):
        return model
    transposed = {id(m.weight) for m in model.modules() if isinstance(m, Conv1D)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim != 2 and not (param.ndim == 3 and ".experts." in name):
                continue
            if is_router(name):
                continue
            w = param.numpy().T if id(param) in transposed else param.numpy()
            w_deq = scheme.dequantize_weight(*scheme.quantize_weight(w), w.shape[-1])
            param.copy_(torch.from_numpy(w_deq.T if id(param) in transposed else w_deq))
    return model


def int8_rounded(
    x: torch.Tensor, group: int = 32, margins: list[float] | None = None
) -> torch.Tensor:
    """`x` as `q4a8_1` kernels see it: per token and per group of `group` values along K,
    `xs = max|x| / 127`, `x' = round(x · (127 / max|x|)) · xs`, in float32 as the kernels
    compute it. `margins` receives the scaled values' smallest distance from a rounding
    boundary: a value closer than our float32 arithmetic's error may round the other way in a
    build (a one-step change in an int8 value, 1e-2 in the logits)."""
    k = x.shape[-1]
    padded = torch.nn.functional.pad(x, (0, (-k) % group))
    groups = padded.reshape(*padded.shape[:-1], -1, group).float()
    # The kernels' float32 arithmetic: q = round(x * (127 / max|x|)), ties to even.
    absmax = groups.abs().amax(dim=-1, keepdim=True)
    inverse = torch.where(absmax > 0, 127 / absmax, torch.zeros_like(absmax))
    scaled = groups * inverse
    q = torch.round(scaled)
    if margins is not None:
        margins.append(float((scaled - scaled.floor() - 0.5).abs().min()))
    scale = absmax / 127
    return (q * scale).reshape(padded.shape)[..., :k].to(x.dtype)


def quantize_activations_int8(
    model,
    group: int = 32,
    only: set[str] | None = None,
    experts: bool = False,
    margins: list[float] | None = None,
):
    """Make every Linear (and GPT-2 `Conv1D`) of `model`, or those named in `only`, see its
    input as `q4a8_1` kernels do (`int8_rounded`, which reports to `margins`); with `experts`,
    also the gate/up and down matmuls of a mixture's experts (transformers' eager experts call
    `F.linear`)."""
    from transformers.pytorch_utils import Conv1D

    def fake_quantize(_module, inputs):
        (x, *rest) = inputs
        return (int8_rounded(x, group, margins), *rest)

    hooked = set()
    for name, module in model.named_modules():
        if is_router(f"{name}.weight"):  # float in our builds, as their weights
            continue
        if isinstance(module, torch.nn.Linear | Conv1D) and (only is None or name in only):
            module.register_forward_pre_hook(fake_quantize)
            hooked.add(name)
        if experts and type(module).__name__.endswith("Experts"):
            module.forward = _int8_expert_forward(module.forward, group, margins)
            hooked.add(name)
    if only is not None and hooked != set(only):
        raise ValueError(f"no Linear layers named {sorted(set(only) - hooked)}")
    return model


def _int8_expert_forward(forward, group: int, margins: list[float] | None):
    """`forward` of an experts module with each `F.linear` input int8-rounded."""
    linear = torch.nn.functional.linear

    def rounded_linear(x, weight, bias=None):
        return linear(int8_rounded(x, group, margins), weight, bias)

    def wrapped(*args, **kwargs):
        torch.nn.functional.linear = rounded_linear
        try:
            return forward(*args, **kwargs)
        finally:
            torch.nn.functional.linear = linear

    return wrapped


def _to_fp16(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float16).to(tensor.dtype)


def round_like_fp16_kv_cache(model, monkeypatch):
    """Make a Llama-family `transformers` model round where a build with a float16 KV cache
    does: q, k and v as they enter the cache (the cache takes one dtype), q and k again after
    RoPE (the cache's rotary kernel computes in fp32 and writes fp16) and the attention output
    (written in fp16, cast back before `o_proj`). `monkeypatch` scopes the RoPE patch."""
    import importlib

    for layer in model.model.layers:
        attention = layer.self_attn
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            projection.register_forward_hook(lambda _m, _args, out: _to_fp16(out))
        # Before any other pre-hook (the int8 activation rounding sees the fp16 values).
        attention.o_proj.register_forward_pre_hook(
            lambda _m, args: (_to_fp16(args[0]), *args[1:]), prepend=True
        )
    module = importlib.import_module(type(model).__module__)
    rope = module.apply_rotary_pos_emb

    def rounded_rope(q, k, *args, **kwargs):
        return tuple(_to_fp16(t) for t in rope(q, k, *args, **kwargs))

    monkeypatch.setattr(module, "apply_rotary_pos_emb", rounded_rope)
    return model
