"""A full-precision model to quantize, made from the embedded default: the SmolLM2 GGUF file's
weights dequantized (by `transformers`), plus Gaussian noise of `--noise` times each tensor's
standard deviation (so that the weights are off the file's Q4_1 grid), saved as a Hugging Face
safetensors model; and the same model as llama.cpp sees it: an F32 GGUF (our exporter) and
llama.cpp's own `Q4_K_M` of that file (`llama_model_quantize`).

    python benchmarks/float_model_from_gguf.py --out dist/float-smollm2 [--noise 0.05]

Then compare quantizers on it:

    python benchmarks/perplexity_vs_llamacpp.py dist/float-smollm2/model-Q4_K_M.gguf \\
        --source dist/float-smollm2/hf --codes q4a8_1,q4a8_2 --text benchmarks/data/gpl-3.0.txt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlc.default_model import embedded_gguf
from mlc.gguf.export import export_gguf

Q4_K_M = 15  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M


def make_float_model(out: Path, noise: float, seed: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param += noise * param.std() * torch.randn(param.shape, generator=generator)
    # A model loaded from GGUF refuses to save itself: copy its weights into a plain one.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    hf_dir = out / "hf"
    plain.save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)
    return hf_dir


def quantize_with_llamacpp(f32: Path, out: Path, ftype: int) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    status = llama_cpp.llama_model_quantize(str(f32).encode(), str(out).encode(), params)
    if status != 0:
        raise SystemExit(f"llama_model_quantize failed ({status})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("dist/float-smollm2"))
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    hf_dir = make_float_model(args.out, args.noise, args.seed)
    f32 = export_gguf(hf_dir, args.out / "model-F32.gguf")
    q4km = quantize_with_llamacpp(f32, args.out / "model-Q4_K_M.gguf", Q4_K_M)
    sizes = {p.name: f"{p.stat().st_size / 2**20:.1f} MiB" for p in (f32, q4km)}
    print(f"{hf_dir}\n{sizes}")


if __name__ == "__main__":
    main()
