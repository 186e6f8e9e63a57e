"""The reference: Hugging Face `transformers` in PyTorch running the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_hf(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@torch.no_grad()
def hf_logits(model, token_ids: list[int]) -> np.ndarray:
    """Logits at every position, [len(token_ids), vocab]."""
    return model(torch.tensor([token_ids])).logits[0].float().numpy()


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
