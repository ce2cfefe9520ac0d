"""The AIPerf venv in the cache, keyed by its pin, built like the parser venvs (builds.ensure_venv).

    >>> from deploy.benchmark.install import aiperf_venv_dir
    >>> aiperf_venv_dir().name
    'aiperf-0.13.0'

``venvs/aiperf-<AIPERF_VERSION>/`` holds ``aiperf`` and ``gguf`` (to export a GGUF's tokenizer), installed
with the constraints in ``deploy/data/aiperf-constraints.txt`` so every machine resolves the same versions.
It is built in a temporary directory beside its destination and renamed into place when its imports work,
so a killed install never looks complete. AIPerf is always run as ``<venv>/bin/python -m aiperf``.

Regenerate the constraints after changing the pin: build the venv, then
``<venv>/bin/pip freeze | grep -v -e ^aiperf== -e ^gguf==`` into the file under its two comment lines.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from deploy import constants, pins
from deploy.engines.builds import EngineInstallError, Progress, ensure_venv

CONSTRAINTS = Path(__file__).resolve().parents[1] / "data" / "aiperf-constraints.txt"
#: What `bench` prints when the venv is missing or broken.
INSTALL_HINT = "kimi-deploy engine install aiperf (or make setup-bench)"

#: Run in the venv's python: the pinned versions are installed and the modules `bench` uses import.
_CHECK = """
import importlib.metadata as m, sys
want = {"aiperf": sys.argv[1], "gguf": sys.argv[2]}
got = {k: m.version(k) for k in want}
assert got == want, f"versions {got} != {want}"
import aiperf.cli, gguf, tokenizers
from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
"""


class AiperfMissingError(EngineInstallError):
    """The AIPerf venv is not installed or does not work; the message names the command that installs it."""

    exit_code = 1


def aiperf_venv_key() -> str:
    return f"aiperf-{pins.AIPERF_VERSION}"


def aiperf_venv_dir(cache_dir: Path | None = None) -> Path:
    """Where the AIPerf venv lives (it may not be built yet)."""
    return (cache_dir or constants.CACHE_DIR) / "venvs" / aiperf_venv_key()


def aiperf_python(venv: Path | None = None) -> Path:
    return (venv or aiperf_venv_dir()) / "bin" / "python"


def aiperf_packages() -> list[str]:
    return [f"aiperf=={pins.AIPERF_VERSION}", f"gguf=={pins.AIPERF_GGUF_VERSION}"]


def aiperf_install_commands(venv: Path) -> list[list[str]]:
    """The commands that build the AIPerf venv at ``venv``."""
    return [command(venv) for _label, command in _steps()]


def _steps() -> list[tuple[str, Callable[[Path], list[str]]]]:
    def pip(*args: str) -> Callable[[Path], list[str]]:
        return lambda v: [str(v / "bin" / "python"), "-m", "pip", "install", "--quiet", *args]

    return [
        ("create venv", lambda v: [sys.executable, "-m", "venv", str(v)]),
        ("upgrade pip", pip("--upgrade", "pip")),
        (f"pip install {' '.join(aiperf_packages())}", pip("-c", str(CONSTRAINTS), *aiperf_packages())),
    ]


def aiperf_problem(venv: Path | None = None, timeout_s: float = 300) -> str | None:
    """None when the venv imports AIPerf and gguf at the pinned versions, else what is wrong (one line)."""
    py = aiperf_python(venv)
    if not py.is_file():
        return f"AIPerf {pins.AIPERF_VERSION} is not installed ({py.parent.parent} missing)"
    try:
        out = subprocess.run(
            [str(py), "-c", _CHECK, pins.AIPERF_VERSION, pins.AIPERF_GGUF_VERSION],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"AIPerf venv at {py.parent.parent} does not run ({exc.__class__.__name__})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"AIPerf venv at {py.parent.parent} is broken ({last})"
    return None


def require_aiperf(venv: Path | None = None) -> Path:
    """The venv's python, or :class:`AiperfMissingError` with the install command.

    >>> require_aiperf()  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/aiperf-0.13.0/bin/python')
    """
    problem = aiperf_problem(venv)
    if problem:
        raise AiperfMissingError(f"{problem}; install it with `{INSTALL_HINT}`")
    return aiperf_python(venv)


def install_aiperf(progress: Progress | None = print, force: bool = False) -> Path:
    """Build the AIPerf venv (about 1.2 GB, a few minutes) or reuse a working one; returns its path.

    >>> install_aiperf()  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/aiperf-0.13.0')
    """
    return ensure_venv(aiperf_venv_dir(), "AIPerf venv", _steps(), aiperf_problem, progress, force)


__all__ = [
    "INSTALL_HINT",
    "AiperfMissingError",
    "aiperf_install_commands",
    "aiperf_packages",
    "aiperf_problem",
    "aiperf_python",
    "aiperf_venv_dir",
    "install_aiperf",
    "require_aiperf",
]
