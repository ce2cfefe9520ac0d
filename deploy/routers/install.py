"""The router's venv in the cache, keyed by its pin, built like the AIPerf and parser venvs (ensure_venv).

    >>> from deploy.routers.install import router_venv_dir
    >>> router_venv_dir().name
    'vllm-router-0.1.17'

``venvs/vllm-router-<VLLM_ROUTER_VERSION>/`` holds the ``vllm-router`` wheel (a prebuilt Rust extension,
``vllm_router_rs``, behind a Python launcher), installed with the constraints in
``deploy/data/router-constraints.txt`` so every machine resolves the same versions. It is built in a
temporary directory beside its destination and renamed into place once the launcher and the Rust core
import at the pinned version, so a killed install never looks complete. The router is always started as
``<venv>/bin/python <package>/data/router_launch.py ...`` (the launcher takes the API key from the
environment, never from argv), never through the venv's ``vllm-router`` console script.

Regenerate the constraints after changing the pin: build the venv, then
``<venv>/bin/pip freeze | grep -v ^vllm-router==`` into the file under its two comment lines.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from deploy import constants, pins
from deploy.engines.builds import EngineInstallError, Progress, ensure_venv

CONSTRAINTS = constants.PACKAGE_DIR / "data" / "router-constraints.txt"
#: What the router's users print when the venv is missing or broken.
INSTALL_HINT = "kimi-deploy engine install router (or make setup-router)"

#: Run in the venv's python: the pinned version is installed, the launcher's parser and the Rust core import.
_CHECK = """
import importlib.metadata as m, sys
got = m.version("vllm-router")
assert got == sys.argv[1], f"vllm-router {got} != {sys.argv[1]}"
from vllm_router.launch_router import launch_router, parse_router_args
from vllm_router.router import Router
import vllm_router_rs
"""


class RouterMissingError(EngineInstallError):
    """The router venv is not installed or does not work; the message names the command that installs it."""

    exit_code = 1


def router_venv_key() -> str:
    return f"vllm-router-{pins.VLLM_ROUTER_VERSION}"


def router_venv_dir(cache_dir: Path | None = None) -> Path:
    """Where the router venv lives (it may not be built yet); under $KIMI_DEPLOY_CACHE when set."""
    return (cache_dir or constants.CACHE_DIR) / "venvs" / router_venv_key()


def router_python(venv: Path | None = None) -> Path:
    """The venv's python, which runs ``deploy/data/router_launch.py``.

    >>> router_python(Path("/c/venvs/vllm-router-0.1.17"))
    PosixPath('/c/venvs/vllm-router-0.1.17/bin/python')
    """
    return (venv or router_venv_dir()) / "bin" / "python"


def router_packages() -> list[str]:
    return [f"vllm-router=={pins.VLLM_ROUTER_VERSION}"]


def router_install_commands(venv: Path) -> list[list[str]]:
    """The commands that build the router venv at ``venv``."""
    return [command(venv) for _label, command in _steps()]


def _steps() -> list[tuple[str, Callable[[Path], list[str]]]]:
    def pip(*args: str) -> Callable[[Path], list[str]]:
        return lambda v: [str(v / "bin" / "python"), "-m", "pip", "install", "--quiet", *args]

    return [
        ("create venv", lambda v: [sys.executable, "-m", "venv", str(v)]),
        ("upgrade pip", pip("--upgrade", "pip")),
        (f"pip install {' '.join(router_packages())}", pip("-c", str(CONSTRAINTS), *router_packages())),
    ]


def router_problem(venv: Path | None = None, timeout_s: float = 120) -> str | None:
    """None when the venv imports the pinned router (launcher, Rust core), else what is wrong (one line)."""
    py = router_python(venv)
    if not py.is_file():
        return f"vllm-router {pins.VLLM_ROUTER_VERSION} is not installed ({py.parent.parent} missing)"
    try:
        out = subprocess.run(
            [str(py), "-c", _CHECK, pins.VLLM_ROUTER_VERSION],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"router venv at {py.parent.parent} does not run ({exc.__class__.__name__})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"router venv at {py.parent.parent} is broken ({last})"
    return None


def router_ready(venv: Path | None = None) -> bool:
    """Whether the pinned router is installed and imports (checked by running it, not by its presence)."""
    return router_problem(venv) is None


def require_router(venv: Path | None = None) -> Path:
    """The venv's python, or :class:`RouterMissingError` with the install command.

    >>> require_router()  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/vllm-router-0.1.17/bin/python')
    """
    problem = router_problem(venv)
    if problem:
        raise RouterMissingError(f"{problem}; install it with `{INSTALL_HINT}`")
    return router_python(venv)


def install_router(progress: Progress | None = print, force: bool = False) -> Path:
    """Build the router venv (about 60 MB, under a minute) or reuse a working one; returns its path.

    >>> install_router()  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/vllm-router-0.1.17')
    """
    return ensure_venv(router_venv_dir(), "router venv", _steps(), router_problem, progress, force)


__all__ = [
    "CONSTRAINTS",
    "INSTALL_HINT",
    "RouterMissingError",
    "install_router",
    "require_router",
    "router_install_commands",
    "router_packages",
    "router_problem",
    "router_python",
    "router_ready",
    "router_venv_dir",
    "router_venv_key",
]
