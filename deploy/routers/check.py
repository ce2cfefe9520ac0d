"""Router command lines through the pinned router's own parser, in its venv (nothing starts).

    >>> from deploy.routers.check import check_router_argv
    >>> check_router_argv("sglang-router", ["--policy", "no_such"])  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    deploy.errors.RouterArgsRejected: sglang-router 0.3.2 rejects the router command: error: ...

``deploy/data/router_probe.py`` runs with the router venv's python and checks each argv the way the router's
launcher (``Router.launcher``) reads it: the router's ``parse_router_args``, the key from the environment (a
stand-in key when the launch will have one, so the key's path is checked too), the router's validation and
the Rust core's constructor. A missing venv is an error, never a silent pass (as for the engines' parser
venvs).
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
from deploy.routers.argv import launcher_path
from deploy.routers.base import Router
from deploy.routers.registry import get

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
    router: Router | str,
    argvs: list[list[str]],
    with_key: bool = True,
    python: Path | None = None,
    timeout_s: float = 120,
) -> list[RouterArgvResult]:
    """Parse each argv (without the program) with ``router``'s pinned parser; results in order."""
    if not argvs:
        return []
    spec = router if isinstance(router, Router) else get(router)
    py = install.require_router(spec, python.parent.parent if python else None)
    env = {spec.api_key_env: PROBE_API_KEY} if with_key else {}
    request = {"commands": [{"argv": list(a), "env": env} for a in argvs]}
    try:
        done = subprocess.run(
            [str(py), str(PROBE), launcher_path(spec).name],
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


def check_router_argv(
    router: Router | str, argv: list[str], with_key: bool = True, python: Path | None = None
) -> None:
    """Nothing when the pinned ``router`` accepts ``argv``; RouterArgsRejected (one line) when it does not."""
    (result,) = check_router_argvs(router, [argv], with_key, python)
    if not result.ok:
        name = router if isinstance(router, str) else router.name
        raise RouterArgsRejected(f"{name} {result.version} rejects the router command: {result.error}")


__all__ = ["PROBE", "RouterArgvResult", "check_router_argv", "check_router_argvs"]
