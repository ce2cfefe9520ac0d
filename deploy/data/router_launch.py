"""Start the pinned vllm-router with its own parser and launch function; the API key comes from the env.

Run by the ROUTER venv's python (never the toolkit's): ``<venv>/bin/python router_launch.py <router argv>``.
The argv is exactly what ``deploy.routers.argv.router_argv`` composes (and what its parser check
checked); it never holds the key. What this file adds to vllm-router's own ``main()``:

- ``KIMI_ROUTER_API_KEY`` (``Router.api_key_env``), when set and not empty, becomes the router's ``api_key``
  and turns on client authentication: vllm-router 0.1.17's ``--api-key`` alone authenticates nobody (its
  Python launcher has no flag for the Rust core's ``api_key_validation_urls``; with those set, every
  endpoint of the router's port answers 401 unless the client's ``Authorization: Bearer <token>`` gets a
  200 from one of the URLs). The URLs are the workers' ``/v1/models``, which each engine serves only to
  the key it was started with, so the router accepts exactly the replicas' key, and goes on accepting it
  while any one replica answers. docs/explanation/router.md shows the experiments.
- A router bound beyond loopback without a key refuses to start (exit 2, one line): its port would let
  anyone remove or add workers (``/remove_worker``, ``/add_worker`` take no authentication otherwise).
- Prefill/decode mode (``--vllm-pd-disaggregation``): the validation URLs are the prefill and decode
  servers' ``/v1/models``, and the key also goes to ``OPENAI_API_KEY`` in the router's environment. In
  this mode 0.1.17 sends the workers neither its ``--api-key`` nor the client's header but
  ``Authorization: Bearer $OPENAI_API_KEY`` (an empty bearer without it: tests/test_router_pd.py), so
  keyed engines would refuse every request without it. ``check`` also refuses a role policy the core
  refuses only when it starts: power_of_two with one server of that role.

``router_args(argv, environ)`` is what ``deploy/data/router_probe.py`` checks, so the check and the launch
parse the same way.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping

from vllm_router.launch_router import launch_router, parse_router_args
from vllm_router.router import Router

#: The distribution the probe reports the version of.
DIST = "vllm-router"
#: The environment variable that carries the key (deploy.routers.base.Router.api_key_env).
API_KEY_ENV = "KIMI_ROUTER_API_KEY"
#: Where a worker answers only a client holding its key (OpenAI-compatible servers started with a key).
KEY_CHECK_PATH = "/v1/models"
#: The variable whose value the prefill/decode mode sends the workers as its bearer (0.1.17's core).
PD_WORKER_KEY_ENV = "OPENAI_API_KEY"


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


def worker_urls(args: object) -> list[str]:
    """Every worker ``args`` names: the replicas, or in prefill/decode mode the prefill then decode servers
    (``--prefill URL [BOOTSTRAP_PORT]`` parses to ``(url, port)`` pairs)."""
    prefill = [url for url, _port in getattr(args, "prefill_urls", None) or []]
    return [*getattr(args, "worker_urls", []), *prefill, *(getattr(args, "decode_urls", None) or [])]


def router_args(argv: list[str], environ: Mapping[str, str]) -> object:
    """vllm-router's RouterArgs for ``argv`` (its own parser: a bad flag exits 2 with argparse's message),
    with the key from ``environ`` and the client authentication it implies."""
    args = parse_router_args(argv)
    key = environ.get(API_KEY_ENV, "")
    if key:
        args.api_key = key
        # not a RouterArgs field: Router.from_args hands every attribute to the Rust core's constructor
        args.api_key_validation_urls = [url.rstrip("/") + KEY_CHECK_PATH for url in worker_urls(args)]
    elif not is_loopback(args.host):
        raise LaunchRefused(
            f"vllm-router: refusing to listen on {args.host} without a key: set {API_KEY_ENV} "
            "(the router's own endpoints, /remove_worker and /add_worker among them, are open otherwise)"
        )
    return args


def worker_environ(args: object, environ: Mapping[str, str]) -> dict[str, str]:
    """What the router's own environment needs for ``args``: in prefill/decode mode with a key, the key as
    the bearer the core sends the workers (``PD_WORKER_KEY_ENV``); nothing otherwise."""
    key = environ.get(API_KEY_ENV, "")
    return {PD_WORKER_KEY_ENV: key} if key and getattr(args, "vllm_pd_disaggregation", False) else {}


def check_pd_policies(args: object) -> None:
    """ValueError, in the core's words, for a role policy the core refuses only in ``start()`` (0.1.17:
    power_of_two for a role with one server; the role's policy named, not inherited from ``--policy``)."""
    if not getattr(args, "vllm_pd_disaggregation", False):
        return
    counts = {"prefill": len(args.prefill_urls or []), "decode": len(args.decode_urls or [])}  # type: ignore[attr-defined]
    for role, count in counts.items():
        if getattr(args, f"{role}_policy") == "power_of_two" and count < 2:
            raise ValueError(
                "Configuration validation failed: Incompatible configuration: Power-of-two policy for "
                f"{role} requires at least 2 {role} workers (checked by the core only when it starts)"
            )


def check(args: object) -> None:
    """What ``launch_router`` does with ``args`` before ``start()``: validate, then the Rust core's
    constructor (which rejects an argument it does not take); and what ``start()`` refuses in prefill/decode
    mode."""
    validate = getattr(args, "_validate_router_args", None)
    if validate is not None:
        validate()
    check_pd_policies(args)
    Router.from_args(args)


def main(argv: list[str] | None = None) -> None:
    try:
        args = router_args(sys.argv[1:] if argv is None else argv, os.environ)
    except LaunchRefused as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    os.environ.update(worker_environ(args, os.environ))
    launch_router(args)


if __name__ == "__main__":
    main()
