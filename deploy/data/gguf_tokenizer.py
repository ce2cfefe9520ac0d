"""Export a GGUF's tokenizer into a Hugging Face tokenizer folder (run by the AIPerf venv's python).

Executed as a script by :mod:`deploy.benchmark.tokenizer` with the interpreter of the AIPerf venv, which has
``gguf`` (to read the metadata) and transformers' GGUF tokenizer builders (no torch needed); it imports
nothing from ``deploy``::

    <aiperf venv>/bin/python deploy/data/gguf_tokenizer.py MODEL.gguf OUT_DIR

The metadata keys are grouped with transformers' own ``GGUF_TOKENIZER_MAPPING`` and handed to its
``convert_gguf_tokenizer`` (transformers/integrations/gguf/gguf_tokenizer_mapping.py), so the result is the
tokenizer ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` builds; that call itself needs torch only to
read tensors, which a tokenizer does not need. Prints one JSON line: vocabulary size and special tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_SPECIAL = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def export(gguf_path: Path, out_dir: Path) -> dict:
    from gguf import GGUFReader
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    reader = GGUFReader(str(gguf_path))
    meta = {
        name: field.contents()
        for name, field in reader.fields.items()
        if name.startswith("tokenizer.") or name == "general.architecture"
    }
    architecture = meta["general.architecture"]
    grouped = {
        group: {new: meta[f"tokenizer.{key}"] for key, new in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokens, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokens.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)
    backend, _ = convert_gguf_tokenizer(architecture, tokens)
    for name, key in _SPECIAL.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        if token_id is not None:
            config[name] = tokens["tokens"][int(token_id)]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **config)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return {
        "architecture": architecture,
        "tokenizer_type": tokens.get("tokenizer_type"),
        "vocab_size": len(tokens["tokens"]),
        "special": {k: config.get(k) for k in _SPECIAL},
    }


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: gguf_tokenizer.py MODEL.gguf OUT_DIR")
    print(json.dumps(export(Path(sys.argv[1]), Path(sys.argv[2]))))
