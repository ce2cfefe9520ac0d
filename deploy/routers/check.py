"""Router command lines through the pinned vllm-router's own parser, in the router venv (nothing starts).

    >>> from deploy.routers.check import check_router_argv
    >>> check_router_argv(["--policy", "no_such"])  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    deploy.errors.RouterArgsRejected: vllm-router 0.1.17 rejects the router command: error: ...

``deploy/data/router_probe.py`` runs with the router venv's python and checks each argv the way the launcher
reads it: vllm-router's ``parse_router_args``, the key from the environment (a stand-in key when the launch
will have one, so the key's path is checked too), ``RouterArgs._validate_router_args`` and the Rust core's
constructor. A missing venv is an error, never a silent pass (as for the engines' parser venvs).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.errors import RouterArgsRejected
from deploy.routers import install
from deploy.routers.registry import DEFAULT, get

PROBE = constants.PACKAGE_DIR / "data" / "router_probe.py"
#: Stands in for the key in the probe's environment (the parser sees only that one is set).
PROBE_API_KEY = "probe-router-key"


@dataclass(frozen=True)
class RouterArgvResult:
    argv: list[str]
    ok: bool
    #: the router's own message (argparse's last line, or the validation error), empty when ok
    error: str
    version: str
    #: the router's RouterArgs values for this argv (when ok; the key left out)
    parsed: dict[str, Any] = field(default_factory=dict)


def check_router_argvs(
    argvs: list[list[str]], with_key: bool = True, python: Path | None = None, timeout_s: float = 120
) -> list[RouterArgvResult]:
    """Parse each router argv (without the program) with the pinned router's parser; results in order."""
    if not argvs:
        return []
    py = install.require_router(python.parent.parent if python else None)
    env = {get(DEFAULT).api_key_env: PROBE_API_KEY} if with_key else {}
    request = {"commands": [{"argv": list(a), "env": env} for a in argvs]}
    try:
        done = subprocess.run(
            [str(py), str(PROBE)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
        )
    except subprocess.TimeoutExpired:
        raise install.RouterMissingError(f"the router probe took over {timeout_s:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise install.RouterMissingError(f"the router probe failed (exit {done.returncode}): {tail}")
    report = json.loads(done.stdout)
    return [
        RouterArgvResult(
            argv=list(a), ok=r["ok"], error=r["error"], version=report["version"], parsed=r.get("parsed", {})
        )
        for a, r in zip(argvs, report["results"], strict=True)
    ]


def check_router_argv(argv: list[str], with_key: bool = True, python: Path | None = None) -> None:
    """Nothing when the pinned router accepts ``argv``; RouterArgsRejected (one line) when it does not."""
    (result,) = check_router_argvs([argv], with_key, python)
    if not result.ok:
        raise RouterArgsRejected(f"vllm-router {result.version} rejects the router command: {result.error}")


__all__ = ["PROBE", "RouterArgvResult", "check_router_argv", "check_router_argvs"]
