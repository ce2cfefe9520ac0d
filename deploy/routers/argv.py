"""The router's command line from plan.json's ``fleet.router`` and the replicas' URLs; nothing secret in it.

    >>> from deploy.routers.base import RouterSettings
    >>> router = {"program": "vllm-router", "host": "127.0.0.1", "port": 8000, "metrics_port": 29000,
    ...           **RouterSettings(policy="cache_aware", policy_reason="r").to_dict()}
    >>> argv = router_argv(router, ["http://127.0.0.1:8001", "http://127.0.0.1:8002"])
    >>> argv[:6]
    ['--host', '127.0.0.1', '--port', '8000', '--prometheus-host', '127.0.0.1']
    >>> argv[argv.index("--worker-urls"):]
    ['--worker-urls', 'http://127.0.0.1:8001', 'http://127.0.0.1:8002']

Every value is checked before it is composed (schema below: hosts, ports, positive counts, the cross-field
rules the router itself enforces only when it starts), so a plan edited by hand fails here with one line
(PlanError, exit 2), not in a launch script. The flag names are the router's data (``Router.flags``, per
``fleet.router.program``); the pinned router's own parser then checks the result (``deploy.routers.check``).
The API key is never an argument: the router's launcher (``deploy/data/<Router.launcher>``) reads it from
``Router.api_key_env``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.errors import PlanError
from deploy.routers import registry
from deploy.routers.base import Router, RouterSettings
from deploy.schema import HOST, PORT, POSITIVE, WORD, is_host, validate

#: Where the routers' launchers are (shipped in the package; ``Router.launcher`` names each one's).
DATA_DIR = constants.PACKAGE_DIR / "data"
_URL = re.compile(r"^https?://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})\Z")

_COUNTS = {k for k, v in RouterSettings.__dataclass_fields__.items() if v.type == "int"}
ROUTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["program", "host", "port", "metrics_port", *RouterSettings.__dataclass_fields__],
    "properties": {
        "program": WORD,
        "host": HOST,
        "port": PORT,
        "metrics_port": PORT,
        "metrics_host": HOST,
        "policy": WORD,
        "policy_reason": {"type": "string"},
        "health_check_endpoint": {"type": "string", "pattern": r"^/[A-Za-z0-9._/-]{0,127}\Z"},
        # 0 means "no queue" to the router; every other count must be at least 1
        "queue_size": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
        **{k: {**POSITIVE, "maximum": 2**31 - 1} for k in _COUNTS if k != "queue_size"},
    },
}


def worker_url(url: str) -> str:
    """A worker URL as the router takes it: ``http(s)://<host>:<port>``, nothing a shell or the router
    would read differently; PlanError otherwise.

    >>> worker_url("http://10.0.0.2:8001")
    'http://10.0.0.2:8001'
    >>> worker_url("http://x:1/$(id)")
    Traceback (most recent call last):
    ...
    deploy.errors.PlanError: fleet: replica URL 'http://x:1/$(id)' is not http(s)://host:port
    """
    found = _URL.match(url) if isinstance(url, str) else None
    if not found or not is_host(found["host"]) or not 1 <= int(found["port"]) <= 65535:
        raise PlanError(f"fleet: replica URL {url!r} is not http(s)://host:port")
    return url


def check_router(router: dict[str, Any], source: str = "plan.json: fleet.router") -> dict[str, Any]:
    """``router`` when its values may reach a launch script, else PlanError naming the key."""
    validate(router, ROUTER_SCHEMA, source, PlanError)
    if router["port"] == router["metrics_port"]:
        raise PlanError(f"{source}: port and metrics_port are both {router['port']}")
    if router["retry_max_backoff_ms"] < router["retry_initial_backoff_ms"]:
        raise PlanError(f"{source}: retry_max_backoff_ms is below retry_initial_backoff_ms")
    if router["health_check_timeout_s"] > router["health_check_interval_s"]:
        # a check still waiting when the next one is due would overlap it
        raise PlanError(f"{source}: health_check_timeout_s exceeds health_check_interval_s")
    return router


def router_argv(
    router: dict[str, Any], worker_urls: list[str], log_level: str = "info", program: Router | None = None
) -> list[str]:
    """The router's argv (without the program) for ``fleet.router`` in front of ``worker_urls``."""
    check_router(router)
    spec = program or registry.get(router["program"])
    if log_level not in spec.log_levels:
        raise PlanError(f"{spec.name} log level {log_level!r}: expected one of {', '.join(spec.log_levels)}")
    if not worker_urls:
        raise PlanError("fleet: a router needs at least one replica URL")
    urls = [worker_url(u) for u in worker_urls]
    if len(set(urls)) != len(urls):
        raise PlanError("fleet: two replicas have the same URL")
    values = {"metrics_host": router["host"], **router, "log_level": log_level}
    argv: list[str] = list(spec.fixed_flags)
    for key, flag in spec.flags.items():
        argv += [flag, str(values[key])]
    return [*argv, spec.worker_urls_flag, *urls]


def launcher_path(router: Router | str) -> Path:
    """The shipped launcher of ``router`` (a name or a Router).

    >>> launcher_path("sglang-router").name, launcher_path("vllm-router").name
    ('smg_launch.py', 'router_launch.py')
    """
    spec = router if isinstance(router, Router) else registry.get(router)
    return DATA_DIR / spec.launcher


def launch_argv(router: Router | str, argv: list[str], python: Path | None = None) -> list[str]:
    """The whole command: the router venv's python, the router's shipped launcher, then ``argv``.

    >>> launch_argv("sglang-router", ["--port", "8000"], Path("/v/bin/python"))[1:]  # doctest: +ELLIPSIS
    ['.../deploy/data/smg_launch.py', '--port', '8000']
    """
    from deploy.routers.install import router_python

    return [str(python or router_python(router)), str(launcher_path(router)), *argv]


__all__ = [
    "DATA_DIR",
    "ROUTER_SCHEMA",
    "check_router",
    "launch_argv",
    "launcher_path",
    "router_argv",
    "worker_url",
]
