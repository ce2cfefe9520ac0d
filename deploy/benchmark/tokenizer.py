"""The deployed model's tokenizer as a local folder, and the environment that makes AIPerf read it offline.

    >>> tok = resolve_tokenizer("/models/moonshotai/Kimi-K2.5")          # doctest: +SKIP
    >>> tok.folder, tok.trust_remote_code
    (PosixPath('/models/moonshotai/Kimi-K2.5'), True)

AIPerf counts tokens with a Hugging Face tokenizer. It must be the served model's, and it must never come
from a hub: AIPerf runs with ``HF_HUB_OFFLINE=1``. In offline mode AIPerf 0.13.0 looks a tokenizer name up
only in the Hugging Face cache (``aiperf/common/tokenizer.py``, ``Tokenizer._resolve_local_snapshot`` calls
``snapshot_download(local_files_only=True)``), so a plain folder path is refused; :func:`hub_cache_for`
therefore lays the folder out as a private cache (``models--kimi-deploy--<name>/snapshots/local`` of
symlinks, ``refs/main`` -> ``local``) that only that AIPerf process sees through ``HF_HUB_CACHE``.

Where the folder comes from:
- a folder with ``tokenizer.json`` or ``tokenizer_config.json`` (a safetensors checkpoint: Kimi's weights
  folder, the demo's HF variant) is used as is; custom tokenizer code (``auto_map``, Kimi's tiktoken
  tokenizer) turns on ``--tokenizer-trust-remote-code``, which runs only code from that local folder;
- a ``.gguf`` file (or a folder holding one) has no tokenizer files: its metadata is exported once with the
  AIPerf venv's ``gguf`` and transformers (``deploy/data/gguf_tokenizer.py``) into
  ``<CACHE>/tokenizers/gguf-<key>/``, keyed by the file's name, size and mtime and the pins.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy import constants, pins
from deploy.benchmark.install import require_aiperf
from deploy.errors import InputError, TokenizerExportError
from deploy.fsutil import read_json

EXPORTER = Path(__file__).resolve().parents[1] / "data" / "gguf_tokenizer.py"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: files of a tokenizer folder linked into the private hub cache (plus any *.py / *.model / *.tiktoken)
_LINKED = re.compile(r"^(tokenizer.*|special_tokens_map\.json|config\.json|.*\.py|.*\.model|.*\.tiktoken)$")


@dataclass(frozen=True)
class LocalTokenizer:
    """A tokenizer folder on this machine, where it came from, and whether it carries its own code."""

    folder: Path
    source: str
    trust_remote_code: bool = False


def _first_gguf(folder: Path) -> Path | None:
    found = sorted(folder.rglob("*.gguf"))
    # a split GGUF keeps its tokenizer in the first shard (-00001-of-000NN)
    first = [p for p in found if re.search(r"-0+1-of-\d+\.gguf$", p.name)]
    return (first or found or [None])[0]


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _needs_code(folder: Path) -> bool:
    try:
        config = read_json(folder / "tokenizer_config.json")
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and bool(config.get("auto_map"))


def gguf_tokenizer_dir(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Where the tokenizer exported from ``gguf`` is cached (keyed by name, size, mtime and the pins)."""
    st = gguf.stat()
    key = f"{gguf.name}|{st.st_size}|{st.st_mtime_ns}|{pins.AIPERF_VERSION}|{pins.AIPERF_GGUF_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (cache_dir or constants.CACHE_DIR) / "tokenizers" / f"gguf-{digest}"


def export_gguf_tokenizer(gguf: Path, timeout_s: float = 600) -> Path:
    """The folder with ``gguf``'s tokenizer, exported once (about 30 s for a 262k vocabulary) and reused."""
    final = gguf_tokenizer_dir(gguf)
    if _has_tokenizer(final):
        return final
    python = require_aiperf()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    log = constants.CACHE_DIR / "build-logs" / f"tokenizer-{final.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log.open("w") as fh:
            rc = subprocess.run(
                [str(python), str(EXPORTER), str(gguf), str(staging)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            ).returncode
        if rc != 0 or not _has_tokenizer(staging):
            raise TokenizerExportError(f"{gguf}: exporting its tokenizer failed (exit {rc}); see {log}")
        staging.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except subprocess.TimeoutExpired:
        raise TokenizerExportError(f"{gguf}: exporting its tokenizer took over {timeout_s:.0f} s") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def resolve_tokenizer(path: str | Path) -> LocalTokenizer:
    """A tokenizer from a model folder or a GGUF file (see the module doc)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return LocalTokenizer(export_gguf_tokenizer(p), f"exported from {p}")
    if not p.is_dir():
        raise InputError(f"{p}: no such tokenizer folder or .gguf file")
    if _has_tokenizer(p):
        return LocalTokenizer(p, f"{p}", trust_remote_code=_needs_code(p))
    gguf = _first_gguf(p)
    if gguf is not None:
        return LocalTokenizer(export_gguf_tokenizer(gguf), f"exported from {gguf}")
    raise InputError(
        f"{p}: no tokenizer.json / tokenizer_config.json and no .gguf file; pass --tokenizer DIR|FILE.gguf"
    )


def hub_cache_for(tokenizer: LocalTokenizer, root: Path, name: str = "model") -> tuple[str, Path]:
    """Lay ``tokenizer`` out as a private Hugging Face cache under ``root``; returns (repo id, cache dir)
    for AIPerf's ``--tokenizer`` and ``HF_HUB_CACHE``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    repo_dir = root / f"models--kimi-deploy--{safe}"
    snapshot = repo_dir / "snapshots" / "local"
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text("local")
    for src in tokenizer.folder.iterdir():
        if src.is_file() and _LINKED.match(src.name) and not (snapshot / src.name).exists():
            (snapshot / src.name).symlink_to(src.resolve())
    return f"kimi-deploy/{safe}", root


def tokenizer_for_weights(local_dir: str | Path) -> LocalTokenizer:
    """The tokenizer of a plan's weights folder (``candidate.weights.local_dir``) on this machine."""
    p = Path(local_dir).expanduser()
    if not p.is_dir():
        raise InputError(
            f"{p}: the plan's weights folder is not on this machine; pass --tokenizer DIR|FILE.gguf "
            "(the model's tokenizer files, or its GGUF)"
        )
    return resolve_tokenizer(p)


__all__ = [
    "LocalTokenizer",
    "TokenizerExportError",
    "export_gguf_tokenizer",
    "gguf_tokenizer_dir",
    "hub_cache_for",
    "resolve_tokenizer",
    "tokenizer_for_weights",
]
