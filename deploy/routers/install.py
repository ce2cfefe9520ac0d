"""Each router's venv in the cache, keyed by its name and pin, built like the AIPerf and parser venvs
(ensure_venv).

    >>> from deploy.routers.install import router_venv_dir
    >>> router_venv_dir("vllm-router").name, router_venv_dir("sglang-router").name
    ('vllm-router-0.1.17', 'sglang-router-0.3.2')

``venvs/<router name>-<pin>/`` holds the router's wheel (a prebuilt Rust extension behind a Python launcher:
``vllm-router``'s ``vllm_router_rs``, ``sglang-router``'s ``sglang_router_rs``), installed with the
constraints in ``deploy/data/router-constraints.txt`` (one file for every router: they share their Python
dependencies) so every machine resolves the same versions. It is built in a temporary directory beside its
destination and renamed into place once the launcher's modules and the Rust core import at the pinned
version, so a killed install never looks complete. A router is always started as
``<venv>/bin/python <package>/data/<launcher>`` (``Router.launcher``: it takes the API key from the
environment, never from argv), never through its console script.

Regenerate the constraints after changing a pin: build the venvs, then merge
``<venv>/bin/pip freeze | grep -v ^<package>==`` of each into the file under its two comment lines.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from deploy import constants
from deploy.engines.builds import EngineInstallError, Progress, ensure_venv
from deploy.routers import registry
from deploy.routers.base import Router

CONSTRAINTS = constants.PACKAGE_DIR / "data" / "router-constraints.txt"
#: What the router's users print when a venv is missing or broken.
INSTALL_HINT = "kimi-deploy engine install router (or make setup-router)"

#: Run in the venv's python: the pinned version is installed, the launcher's modules and the Rust core import.
_CHECK = """
import importlib, importlib.metadata as m, sys
got = m.version(sys.argv[1])
assert got == sys.argv[2], f"{sys.argv[1]} {got} != {sys.argv[2]}"
for name in sys.argv[3:]:
    importlib.import_module(name)
"""


class RouterMissingError(EngineInstallError):
    """The router venv is not installed or does not work; the message names the command that installs it."""

    exit_code = 1


def _spec(router: Router | str) -> Router:
    return router if isinstance(router, Router) else registry.get(router)


def router_venv_key(router: Router | str) -> str:
    spec = _spec(router)
    return f"{spec.name}-{spec.version}"


def router_venv_dir(router: Router | str, cache_dir: Path | None = None) -> Path:
    """Where ``router``'s venv lives (it may not be built yet); under $KIMI_DEPLOY_CACHE when set."""
    return (cache_dir or constants.CACHE_DIR) / "venvs" / router_venv_key(router)


def router_python(router: Router | str, venv: Path | None = None) -> Path:
    """The venv's python, which runs the router's launcher.

    >>> router_python("vllm-router", Path("/c/venvs/vllm-router-0.1.17"))
    PosixPath('/c/venvs/vllm-router-0.1.17/bin/python')
    """
    return (venv or router_venv_dir(router)) / "bin" / "python"


def router_packages(router: Router | str) -> list[str]:
    spec = _spec(router)
    return [f"{spec.package}=={spec.version}"]


def router_install_commands(router: Router | str, venv: Path) -> list[list[str]]:
    """The commands that build ``router``'s venv at ``venv``."""
    return [command(venv) for _label, command in _steps(_spec(router))]


def _steps(spec: Router) -> list[tuple[str, Callable[[Path], list[str]]]]:
    def pip(*args: str) -> Callable[[Path], list[str]]:
        return lambda v: [str(v / "bin" / "python"), "-m", "pip", "install", "--quiet", *args]

    packages = router_packages(spec)
    return [
        ("create venv", lambda v: [sys.executable, "-m", "venv", str(v)]),
        ("upgrade pip", pip("--upgrade", "pip")),
        (f"pip install {' '.join(packages)}", pip("-c", str(CONSTRAINTS), *packages)),
    ]


def router_problem(router: Router | str, venv: Path | None = None, timeout_s: float = 120) -> str | None:
    """None when the venv imports the pinned router (launcher modules, Rust core), else what is wrong."""
    spec = _spec(router)
    py = router_python(spec, venv)
    if not py.is_file():
        return f"{spec.name} {spec.version} is not installed ({py.parent.parent} missing)"
    try:
        out = subprocess.run(
            [str(py), "-c", _CHECK, spec.package, spec.version, *spec.modules],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{spec.name} venv at {py.parent.parent} does not run ({exc.__class__.__name__})"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return f"{spec.name} venv at {py.parent.parent} is broken ({last})"
    return None


def router_ready(router: Router | str, venv: Path | None = None) -> bool:
    """Whether the pinned router is installed and imports (checked by running it, not by its presence)."""
    return router_problem(router, venv) is None


def require_router(router: Router | str, venv: Path | None = None) -> Path:
    """The venv's python, or :class:`RouterMissingError` with the install command.

    >>> require_router("sglang-router")  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/sglang-router-0.3.2/bin/python')
    """
    problem = router_problem(router, venv)
    if problem:
        raise RouterMissingError(f"{problem}; install it with `{INSTALL_HINT}`")
    return router_python(router, venv)


def install_router(router: Router | str, progress: Progress | None = print, force: bool = False) -> Path:
    """Build ``router``'s venv (about 60 MB, under a minute) or reuse a working one; returns its path.

    >>> install_router("vllm-router")  # doctest: +SKIP
    PosixPath('/root/.cache/kimi-deploy/venvs/vllm-router-0.1.17')
    """
    spec = _spec(router)
    problem = lambda v: router_problem(spec, v)  # noqa: E731 - ensure_venv takes a one-argument check
    return ensure_venv(router_venv_dir(spec), f"{spec.name} venv", _steps(spec), problem, progress, force)


def install_routers(
    names: list[str] | None = None, progress: Progress | None = print, force: bool = False
) -> list[Path]:
    """Every registered router's venv (or those ``names``), in the registry's order."""
    return [install_router(name, progress, force) for name in (names or registry.names())]


__all__ = [
    "CONSTRAINTS",
    "INSTALL_HINT",
    "RouterMissingError",
    "install_router",
    "install_routers",
    "require_router",
    "router_install_commands",
    "router_packages",
    "router_problem",
    "router_python",
    "router_ready",
    "router_venv_dir",
    "router_venv_key",
]
