"""The router's command line from plan.json's ``fleet.router`` and the replicas' URLs; nothing secret in it.

    >>> from deploy.routers.base import RouterSettings
    >>> router = {"program": "vllm-router", "host": "127.0.0.1", "port": 8000, "metrics_port": 29000,
    ...           **RouterSettings(policy="cache_aware", policy_reason="r").to_dict()}
    >>> argv = router_argv(router, ["http://127.0.0.1:8001", "http://127.0.0.1:8002"])
    >>> argv[:6]
    ['--host', '127.0.0.1', '--port', '8000', '--prometheus-host', '127.0.0.1']
    >>> argv[argv.index("--worker-urls"):]
    ['--worker-urls', 'http://127.0.0.1:8001', 'http://127.0.0.1:8002']

In prefill/decode (PD) mode (``fleet.router["pd"]`` set) the workers are the prefill servers, each with
the port of its KV bootstrap server or None, and the decode servers:

    >>> pd = {"kv_connector": "nixl", "prefill_policy": "cache_aware", "decode_policy": "power_of_two"}
    >>> argv = router_argv({**router, "pd": pd}, [], prefill=[("http://10.0.0.2:8001", 8998)],
    ...                    decode=["http://10.0.0.3:8001", "http://10.0.0.4:8001"])
    >>> argv[argv.index("--vllm-pd-disaggregation"):]  # doctest: +NORMALIZE_WHITESPACE
    ['--vllm-pd-disaggregation', '--prefill', 'http://10.0.0.2:8001', '8998',
     '--decode', 'http://10.0.0.3:8001', '--decode', 'http://10.0.0.4:8001',
     '--prefill-policy', 'cache_aware', '--decode-policy', 'power_of_two', '--kv-connector', 'nixl']

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

#: ``fleet.router["pd"]``: the router in prefill/decode mode (absent or null: the ordinary mode). The
#: connector is the KV transfer protocol the router drives (vllm-router); null for a router that has none
#: (sglang-router: the engines choose it). Which policies and connectors each router takes is its data
#: (``Router.pd``), checked in ``router_argv``.
PD_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": ["kv_connector", "prefill_policy", "decode_policy"],
    "additionalProperties": False,
    "properties": {
        "kv_connector": {"enum": ["nixl", "mooncake", None]},
        "prefill_policy": WORD,
        "decode_policy": WORD,
    },
}
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
        "pd": PD_SCHEMA,
    },
}


def worker_url(url: str, role: str = "replica") -> str:
    """A worker URL as the router takes it: ``http(s)://<host>:<port>``, nothing a shell or the router
    would read differently; PlanError otherwise (``role`` names the worker in the message).

    >>> worker_url("http://10.0.0.2:8001")
    'http://10.0.0.2:8001'
    >>> worker_url("http://x:1/$(id)")
    Traceback (most recent call last):
    ...
    deploy.errors.PlanError: fleet: replica URL 'http://x:1/$(id)' is not http(s)://host:port
    """
    found = _URL.match(url) if isinstance(url, str) else None
    if not found or not is_host(found["host"]) or not 1 <= int(found["port"]) <= 65535:
        raise PlanError(f"fleet: {role} URL {url!r} is not http(s)://host:port")
    return url


def bootstrap_port(port: Any, url: str) -> int | None:
    """A prefill server's KV bootstrap port as ``--prefill URL [PORT]`` takes it: None (no port token) or
    1-65535; PlanError otherwise.

    >>> bootstrap_port(8998, "http://10.0.0.2:8001"), bootstrap_port(None, "http://10.0.0.2:8001")
    (8998, None)
    >>> bootstrap_port("none", "http://10.0.0.2:8001")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    deploy.errors.PlanError: fleet: prefill ... bootstrap port 'none' is not a port (1-65535) or None
    """
    if port is None or (type(port) is int and 1 <= port <= 65535):
        return port
    raise PlanError(f"fleet: prefill {url} bootstrap port {port!r} is not a port (1-65535) or None")


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
    router: dict[str, Any],
    worker_urls: list[str],
    log_level: str = "info",
    program: Router | None = None,
    *,
    prefill: list[tuple[str, int | None]] | None = None,
    decode: list[str] | None = None,
) -> list[str]:
    """The router's argv (without the program) for ``fleet.router`` in front of ``worker_urls``; with
    ``fleet.router["pd"]``, in front of the ``prefill`` servers (``(url, bootstrap port or None)``) and the
    ``decode`` servers instead (``worker_urls`` then empty)."""
    check_router(router)
    spec = program or registry.get(router["program"])
    if log_level not in spec.log_levels:
        raise PlanError(f"{spec.name} log level {log_level!r}: expected one of {', '.join(spec.log_levels)}")
    values = {"metrics_host": router["host"], **router, "log_level": log_level}
    argv: list[str] = list(spec.fixed_flags)
    for key, flag in spec.flags.items():
        argv += [flag, str(values[key])]
    if router.get("pd") is not None:
        return [*argv, *_pd_argv(spec, router["pd"], worker_urls, prefill, decode)]
    if prefill is not None or decode is not None:
        raise PlanError("fleet: prefill/decode servers given, but fleet.router has no pd (prefill/decode)")
    if not worker_urls:
        raise PlanError("fleet: a router needs at least one replica URL")
    urls = [worker_url(u) for u in worker_urls]
    if len(set(urls)) != len(urls):
        raise PlanError("fleet: two replicas have the same URL")
    return [*argv, spec.worker_urls_flag, *urls]


def _pd_argv(
    spec: Router,
    pd: dict[str, Any],
    worker_urls: list[str],
    prefill: list[tuple[str, int | None]] | None,
    decode: list[str] | None,
) -> list[str]:
    """The prefill/decode part of the argv: the mode's flag, each role's servers and policy, the KV
    connector where the router takes one (``Router.pd``); PlanError, one line, for anything it refuses."""
    mode = spec.pd
    if mode is None:
        raise PlanError(f"{spec.name} has no prefill/decode mode (fleet.router.pd)")
    if worker_urls:
        raise PlanError("fleet: a prefill/decode router takes prefill and decode servers, not replica URLs")
    if not prefill:
        raise PlanError("fleet: a prefill/decode router needs at least one prefill server")
    if not decode:
        raise PlanError("fleet: a prefill/decode router needs at least one decode server")
    servers: list[tuple[str, int | None]] = []
    for entry in prefill:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise PlanError(f"fleet: prefill server {entry!r} is not (URL, bootstrap port or None)")
        url = worker_url(entry[0], "prefill")
        servers.append((url, bootstrap_port(entry[1], url)))
    decode_urls = [worker_url(u, "decode") for u in decode]
    seen: dict[str, str] = {}
    for role, url in [*(("prefill", u) for u, _ in servers), *(("decode", u) for u in decode_urls)]:
        if url in seen:
            which = f"two {role} servers" if seen[url] == role else "a prefill and a decode server"
            raise PlanError(f"fleet: {which} have the same URL {url}")
        seen[url] = role
    argv = [mode.flag]
    for url, port in servers:
        argv += [mode.prefill_flag, url, *([] if port is None else [str(port)])]
    for url in decode_urls:
        argv += [mode.decode_flag, url]
    for role, policies, flag, count in (
        ("prefill", mode.prefill_policies, mode.prefill_policy_flag, len(servers)),
        ("decode", mode.decode_policies, mode.decode_policy_flag, len(decode_urls)),
    ):
        policy = pd[f"{role}_policy"]
        if policy not in policies:
            raise PlanError(f"{spec.name} {role} policy {policy!r}: expected one of {', '.join(policies)}")
        if policy in mode.two_server_policies and count < 2:
            raise PlanError(
                f"{spec.name} {role} policy {policy!r} needs at least 2 {role} servers, not {count}"
            )
        argv += [flag, policy]
    connector = pd["kv_connector"]
    if mode.kv_connector_flag is None:
        if connector is not None:
            raise PlanError(
                f"{spec.name} takes no KV connector (the engines choose the transfer backend): "
                f"fleet.router.pd.kv_connector must be null, not {connector!r}"
            )
    elif connector not in mode.kv_connectors:
        raise PlanError(
            f"{spec.name} needs fleet.router.pd.kv_connector, one of {', '.join(mode.kv_connectors)} "
            f"(the engines' KV connector), not {connector!r}"
        )
    else:
        argv += [mode.kv_connector_flag, connector]
    return argv


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
    "PD_SCHEMA",
    "ROUTER_SCHEMA",
    "bootstrap_port",
    "check_router",
    "launch_argv",
    "launcher_path",
    "router_argv",
    "worker_url",
]
