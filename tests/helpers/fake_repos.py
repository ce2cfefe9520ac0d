"""Small fake weight repos with the real repos' file layouts, and a real mirror process to serve them.

    >>> root = tmp_path / "mirror"
    >>> make_safetensors_repo(root / "moonshotai" / "Kimi-K2.5")   # 64 shards + config, tokenizer, docs
    >>> with MirrorProcess(root) as m:
    ...     m.url                                                  # 'http://127.0.0.1:40123'

Content is pseudo-random from a seed, so files never compress and two runs produce the same bytes.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from pathlib import Path
from typing import Any

from deploy.planning.contract import Plan, Weights, save_plan
from deploy.weights.mirror import stage_folder
from helpers.plans import cpu_candidate

REPO_ROOT = Path(__file__).resolve().parents[2]
KD = str(REPO_ROOT / ".venv" / "bin" / "kimi-deploy")
SAFETENSORS_SHARDS = 64
#: Quant folders of the GGUF layout and their part counts (unsloth/Kimi-K2.5-GGUF, see the reference).
GGUF_QUANTS = {"UD-TQ1_0": 5, "UD-Q2_K_XL": 8}


def _write(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


def make_safetensors_repo(src: Path, shard_bytes: int = 256 * 1024) -> Path:
    """A folder shaped like moonshotai/Kimi-K2.5: ``model-000NN-of-000064.safetensors`` plus small files."""
    for i in range(1, SAFETENSORS_SHARDS + 1):
        _write(src / f"model-{i:05d}-of-{SAFETENSORS_SHARDS:06d}.safetensors", shard_bytes + i, seed=i)
    (src / "config.json").write_text(json.dumps({"model_type": "kimi_k25", "num_hidden_layers": 61}))
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 262144}))
    (src / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}\n")
    (src / "docs").mkdir(exist_ok=True)
    (src / "docs" / "deploy_guidance.md").write_text("# guidance\n")
    return src


def make_gguf_repo(src: Path, part_bytes: int = 2 * 1024 * 1024) -> Path:
    """A folder shaped like unsloth/Kimi-K2.5-GGUF: ``<QUANT>/Kimi-K2.5-<QUANT>-0000k-of-0000n.gguf``.

    ``UD-TQ1_0-imatrix/`` is a decoy beside ``UD-TQ1_0/``: fnmatch-style ``UD-TQ1_0*`` matching pulls it."""
    seed = 1000
    for quant, parts in GGUF_QUANTS.items():
        for k in range(1, parts + 1):
            seed += 1
            _write(src / quant / f"Kimi-K2.5-{quant}-{k:05d}-of-{parts:05d}.gguf", part_bytes + k, seed)
    _write(src / "UD-TQ1_0-imatrix" / "Kimi-K2.5-UD-TQ1_0-imatrix.gguf", part_bytes, 99)
    (src / "README.md").write_text("# Kimi-K2.5 GGUF\n")
    return src


def stage(src: Path, repo: str, root: Path) -> Path:
    """Stage ``src`` under the mirror root, as `kimi-deploy mirror stage` does."""
    return stage_folder(src, repo, root)


def write_plan(
    path: Path, repo: str, patterns: list[str], local_dir: Path, total_bytes: int = 0, revision: str = "main"
) -> Path:
    """A minimal plan.json whose chosen candidate downloads ``repo`` with ``patterns`` into ``local_dir``."""
    weights = Weights(
        variant="test",
        repo=repo,
        revision=revision,
        allow_patterns=patterns,
        bytes=total_bytes,
        format="gguf" if "GGUF" in repo else "safetensors",
        local_dir=str(local_dir),
    )
    cand = cpu_candidate(weights, id="test-cpu", kv_cache_dtype="auto")
    save_plan(Plan(model={"name": "test"}, hardware={}, candidates=[cand], chosen=cand.id), path)
    return path


def kd_env(hf_home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a `kimi-deploy` subprocess: no real Hub token or endpoint leaks in from outside
    (``HF_HOME`` points at an empty folder, so no token file is found either)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "KIMI_DEPLOY_FREE_BYTES"}
    env["HF_HOME"] = str(hf_home) if hf_home else "/nonexistent-hf-home"
    env.update(extra)
    return env


class MirrorProcess:
    """`kimi-deploy mirror serve` as a real process; ``url``, ``log_entries()``; stops on exit."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.log_path = root.parent / f"mirror-{time.monotonic_ns()}.log"
        self.cmd = [KD, "mirror", "serve", str(root), "--port", "0", "--log", str(self.log_path), *args]
        self.env = env or kd_env()
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self.output: list[str] = []

    def __enter__(self) -> MirrorProcess:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env
        )
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("mirror-ready "):
                self.ready = json.loads(line.split(" ", 1)[1])
                return self
        self.stop()
        raise RuntimeError("mirror did not become ready:\n" + "".join(self.output))

    @property
    def url(self) -> str:
        return self.ready["url"]

    def log_entries(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def bytes_served(self, file: str) -> int:
        return sum(
            e.get("bytes", 0) for e in self.log_entries() if e.get("file") == file and e["method"] == "GET"
        )

    def stop(self) -> str:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                out, _ = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate()
            self.output.append(out or "")
        return "".join(self.output)

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_kd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `kimi-deploy` and capture its output."""
    return subprocess.run(
        [KD, *args], capture_output=True, text=True, env=env or kd_env(), timeout=timeout, check=False
    )
