"""Start the pinned sglang-router (``smg launch``) with its own parser and launch function; the API key comes
from the environment, and the workers are registered with the model each one serves.

Run by the ROUTER venv's python (never the toolkit's): ``<venv>/bin/python smg_launch.py <router argv>``.
The argv is exactly what ``deploy.routers.argv.router_argv`` composes (and what ``router_probe.py`` checked);
it never holds the key. What this file adds to ``smg launch``:

- ``KIMI_ROUTER_API_KEY`` (``Router.api_key_env``), when set and not empty, becomes the router's
  ``api_key``. sglang-router 0.3.2 then answers 401 to a client without ``Authorization: Bearer <key>`` on
  every route that reaches a worker or changes the router (``/v1/*``, ``/generate``, ``/workers``,
  ``/get_loads``, ``/flush_cache``) and sends the same header to the workers: the key is the replicas' own.
  ``/liveness``, ``/readiness``, ``/health`` and ``GET /v1/models`` stay open (docs/explanation/router.md).
- A router bound beyond loopback without a key refuses to start (exit 2, one line): anyone could remove or
  add workers (``DELETE /workers/{id}``, ``POST /workers``) otherwise.
- The workers of ``--worker-urls`` are registered through ``POST /workers`` once the router listens, each
  with the model its own ``/v1/models`` lists (asked with the key, retried until the worker answers). Given
  on the command line, a worker gets the model the router discovers from SGLang's ``/server_info``, which
  llama-server does not have: the router would list the model ``unknown`` and `check` would fail.

- Prefill/decode mode (``--pd-disaggregation``): the prefill and decode servers stay on the command line
  (the core registers them itself, each with the model its ``/server_info`` reports, which SGLang's
  engines serve) and the key reaches both roles (tests/test_router_pd.py); nothing is registered after
  the start.

``router_args(argv, environ)`` and ``check(args)`` are what ``router_probe.py`` runs, so the check and the
launch parse the same way.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Mapping

from sglang_router.launch_router import launch_router, parse_router_args
from sglang_router.router import Router

#: The distribution the probe reports the version of.
DIST = "sglang-router"
#: The environment variable that carries the key (deploy.routers.base.Router.api_key_env).
API_KEY_ENV = "KIMI_ROUTER_API_KEY"
#: How long a worker may take to answer its /v1/models before it is registered without a model (s).
REGISTER_DEADLINE_S = 1800.0


class LaunchRefused(Exception):
    """The launch would expose the router's port without a key."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (an address literal; names are resolved by nobody here).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def router_args(argv: list[str], environ: Mapping[str, str]) -> object:
    """sglang-router's RouterArgs for ``argv`` (its own parser: a bad flag exits 2 with argparse's message),
    with the key from ``environ``; the workers stay in ``worker_urls`` (``main`` registers them)."""
    args = parse_router_args(argv)
    key = environ.get(API_KEY_ENV, "")
    if key:
        args.api_key = key
    elif not is_loopback(args.host):
        raise LaunchRefused(
            f"sglang-router: refusing to listen on {args.host} without a key: set {API_KEY_ENV} "
            "(the router's own endpoints, POST /workers and DELETE /workers/{id} among them, are open "
            "otherwise)"
        )
    return args


def check(args: object) -> None:
    """What ``launch_router`` does with ``args`` before ``start()``: validate, build the Rust core's config
    (it rejects a policy the workers cannot have, a bad retry or circuit-breaker setting)."""
    args._validate_router_args()  # type: ignore[attr-defined]
    if args.pd_disaggregation:  # type: ignore[attr-defined]
        # the servers are on the command line: the core's start() counts them per role (0.3.2's words);
        # a role inheriting --policy is not checked there
        counts = {"prefill": len(args.prefill_urls or []), "decode": len(args.decode_urls or [])}  # type: ignore[attr-defined]
        for role, count in counts.items():
            if getattr(args, f"{role}_policy") == "power_of_two" and count < 2:
                raise ValueError(
                    "Configuration error: Incompatible configuration: Power-of-two policy for "
                    f"{role} requires at least 2 {role} workers (checked by the core only when it starts)"
                )
    elif "power_of_two" in (args.policy, args.prefill_policy, args.decode_policy):  # type: ignore[attr-defined]
        # the core checks this only in start(), where it failed with these words (0.3.2): the launch starts
        # without workers, so power_of_two never starts here
        raise ValueError(
            "Configuration error: Incompatible configuration: Power-of-two policy requires at least 2 "
            "workers (this launcher starts the router without workers and registers them once it listens)"
        )
    # as main() builds it: without workers, which are registered once it listens
    Router.from_args(dataclasses.replace(args, worker_urls=[]))  # type: ignore[call-overload]


def _request(method: str, url: str, key: str, body: object = None, timeout_s: float = 5) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    with urllib.request.urlopen(
        urllib.request.Request(url, data=data, headers=headers, method=method), timeout=timeout_s
    ) as reply:
        return reply.read()


def served_model(worker: str, key: str) -> str | None:
    """The first model ``worker`` lists on /v1/models (None while it does not answer)."""
    try:
        listed = json.loads(_request("GET", worker.rstrip("/") + "/v1/models", key))
    except (OSError, ValueError):
        return None
    data = listed.get("data") if isinstance(listed, dict) else None
    return str(data[0]["id"]) if data and isinstance(data[0], dict) and "id" in data[0] else None


def register_workers(
    router: str, workers: list[str], key: str, deadline_s: float = REGISTER_DEADLINE_S
) -> None:
    """POST each worker to ``router``/workers with the model it serves, once the router and it answer."""
    end = time.monotonic() + deadline_s
    parent = os.getppid()
    while True:
        try:
            _request("GET", router + "/liveness", "")
            break
        except (OSError, ValueError):
            if os.getppid() != parent:
                return  # the router is gone
            time.sleep(0.2)
    pending = list(workers)
    while pending and os.getppid() == parent:
        for worker in list(pending):
            model = served_model(worker, key)
            late = time.monotonic() >= end
            if model is None and not late:
                continue
            # the key too: a worker added without one gets health checks without it (the router warns)
            body = {
                "url": worker,
                **({"model_id": model} if model else {}),
                **({"api_key": key} if key else {}),
            }
            try:
                _request("POST", router + "/workers", key, body)
            except (OSError, ValueError) as exc:
                print(f"sglang-router launcher: registering {worker} failed: {exc}", file=sys.stderr)
                continue
            pending.remove(worker)
            print(
                f"sglang-router launcher: registered {worker} (model {model or 'not listed'})",
                file=sys.stderr,
            )
        time.sleep(0.5)


def reach(host: str, port: int) -> str:
    """The router's URL from its own machine: a wildcard bind is reached on loopback.

    >>> reach("0.0.0.0", 8000), reach("::", 8000), reach("10.0.0.2", 8000)
    ('http://127.0.0.1:8000', 'http://[::1]:8000', 'http://10.0.0.2:8000')
    """
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"http://{host}:{port}"
    if ip.is_unspecified:
        ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
    return f"http://[{ip}]:{port}" if ip.version == 6 else f"http://{ip}:{port}"


def main(argv: list[str] | None = None) -> None:
    try:
        args = router_args(sys.argv[1:] if argv is None else argv, os.environ)
    except LaunchRefused as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    workers = list(args.worker_urls)  # type: ignore[attr-defined]
    router = reach(args.host, args.port)  # type: ignore[attr-defined]
    key = args.api_key or ""  # type: ignore[attr-defined]
    # a process, not a thread: the Rust core's start() holds the GIL while it serves, so a thread never runs
    # (prefill/decode mode: no workers here, the core has them from the command line)
    if workers and os.fork() == 0:
        code = 0
        try:
            register_workers(router, workers, key)
        except BaseException:  # noqa: BLE001 - the child must never return into the router's launch
            traceback.print_exc()
            code = 1
        os._exit(code)
    launch_router(dataclasses.replace(args, worker_urls=[]))  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
