"""What the toolkit knows about a router program: data, not branches (deploy.routers.registry holds them).

    >>> from deploy.routers.base import RouterSettings
    >>> RouterSettings(policy="round_robin", policy_reason="r").health_check_interval_s
    5

A router fronts N replicas of one engine behind one URL. The toolkit never routes requests itself: it pins,
installs, configures, starts and watches an established router (``vllm-router`` or ``sglang-router``; which
one is the engine's data, ``Engine.router``, with its reason).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RouterSettings:
    """The router part of plan.json's ``fleet.router``, but where it runs (planner fills host/port/node).

    Defaults are chosen for replicas on one LAN: a replica is marked unhealthy after
    ``health_failure_threshold`` failed checks ``health_check_interval_s`` apart, so within two intervals.
    """

    policy: str
    policy_reason: str
    health_check_endpoint: str = "/health"
    health_check_interval_s: int = 5
    health_check_timeout_s: int = 4
    health_failure_threshold: int = 1
    health_success_threshold: int = 1
    retry_max_retries: int = 3
    retry_initial_backoff_ms: int = 50
    retry_max_backoff_ms: int = 2000
    cb_failure_threshold: int = 5
    cb_success_threshold: int = 2
    cb_timeout_s: int = 30
    cb_window_s: int = 60
    queue_size: int = 256
    queue_timeout_s: int = 120
    request_timeout_s: int = 1800

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrefillDecode:
    """A router's prefill/decode (PD) mode: the flags that turn it on and list each role's servers, and what
    each flag takes, read from the pinned router's own ``--help`` (tests/test_router_pd.py holds them to
    its parser). ``deploy.routers.argv.router_argv`` composes them from plan.json's ``fleet.router["pd"]``.

        >>> from deploy.routers import registry
        >>> pd = registry.get("sglang-router").pd
        >>> pd.flag, "bucket" in pd.prefill_policies, "bucket" in pd.decode_policies, pd.kv_connector_flag
        ('--pd-disaggregation', True, False, None)
    """

    #: the flag that turns the mode on
    flag: str
    #: the policies ``prefill_policy_flag`` and ``decode_policy_flag`` take
    prefill_policies: tuple[str, ...]
    decode_policies: tuple[str, ...]
    #: ``--prefill URL [BOOTSTRAP_PORT]``, once per prefill server (the port: where its KV bootstrap server
    #: listens; no token when the plan has none)
    prefill_flag: str = "--prefill"
    #: ``--decode URL``, once per decode server
    decode_flag: str = "--decode"
    prefill_policy_flag: str = "--prefill-policy"
    decode_policy_flag: str = "--decode-policy"
    #: the flag naming the KV connector the router speaks to the engines, and the connectors it takes;
    #: None where the router has none (the engines pick the transfer backend between themselves)
    kv_connector_flag: str | None = None
    kv_connectors: tuple[str, ...] = ()
    #: role policies the router refuses with fewer than two servers of that role (its core checks it only
    #: when it starts: "Power-of-two policy for prefill requires at least 2 prefill workers")
    two_server_policies: tuple[str, ...] = ("power_of_two",)


@dataclass(frozen=True)
class Router:
    """One router program: its PyPI package, pinned version, entry point, metrics, policies and endpoints."""

    name: str
    display_name: str
    package: str
    version: str
    #: the console script the package installs (never run: the shipped launcher starts the router)
    entry_point: str
    policies: tuple[str, ...]
    #: the launcher in deploy/data/ its venv's python runs (the router's own parser, the key from the env)
    launcher: str = "router_launch.py"
    #: modules the venv check imports (the launcher's parser and the Rust core)
    modules: tuple[str, ...] = ()
    #: the values its ``--log-level`` takes
    log_levels: tuple[str, ...] = ("debug", "info", "warning", "error")
    #: the assistant-history fields it forwards to the workers (others are dropped when it re-serializes)
    history_reasoning_fields: tuple[str, ...] = ()
    #: Prometheus metric names the monitoring rules read (checked against a live router in the tests); a key
    #: this router has no equivalent for is absent, and the rules and panels that need it are left out
    metrics: dict[str, str] = field(default_factory=dict)
    #: the label of ``metrics["requests_total"]`` that names the route (endpoint)
    route_label: str = "route"
    #: the router's own default listening port for metrics
    metrics_port: int = 29000
    #: where the router answers liveness for `up`/`status` (its own, not the workers')
    health_path: str = "/health"
    #: environment variable the rendered launcher reads the API key from (never on argv)
    api_key_env: str = "KIMI_ROUTER_API_KEY"
    #: plan.json ``fleet.router`` key -> the router's flag (``deploy.routers.argv.router_argv`` composes them)
    flags: dict[str, str] = field(default_factory=dict)
    #: flags (with their values) every launch passes, whatever the plan (``deploy.routers.argv``)
    fixed_flags: tuple[str, ...] = ()
    #: the flag that lists the workers (one value per replica's URL)
    worker_urls_flag: str = "--worker-urls"
    #: how the router's gauges encode states, read from its own metric HELP texts and seen in the fleet test
    metric_values: dict[str, dict[int, str]] = field(default_factory=dict)
    #: "METHOD path" that takes a worker out ({url}: its URL, query-quoted; {id}: the router's id for it)
    remove_worker_route: str = "POST /remove_worker?url={url}"
    #: "METHOD path" that puts a worker back; with ``add_worker_json`` the body is ``{"url", "model_id"}``
    add_worker_route: str = "POST /add_worker?url={url}"
    add_worker_json: bool = False
    #: the ``metrics`` key of a per-worker counter of finished requests, for a router that forgets a removed
    #: worker's in-flight count: a drain then waits until it has grown by the in-flight count at removal
    #: (None: the ``running_requests`` gauge keeps counting a removed worker down to 0)
    drain_counter: str | None = None
    #: its prefill/decode mode (None: it has none)
    pd: PrefillDecode | None = None
    #: what the docs and the table say about this router
    source: str = ""

    def settings_for(self, engine: Any) -> RouterSettings:
        """The router's settings in front of ``engine``'s replicas (an ``deploy.engines.base.Engine``): the
        policy the engine names for this router when the router has it, else round robin, with the reason.

            >>> from deploy.engines import registry as engines
            >>> from deploy.routers import registry
            >>> registry.get("vllm-router").settings_for(engines.get("vllm")).policy
            'cache_aware'
            >>> registry.get("vllm-router").settings_for(engines.get("llama.cpp")).policy
            'power_of_two'
            >>> registry.get("sglang-router").settings_for(engines.get("llama.cpp")).policy
            'cache_aware'
        """
        policy, reason = engine.router_policies.get(self.name, ("", ""))
        if policy in self.policies:
            return RouterSettings(policy=policy, policy_reason=reason)
        return RouterSettings(
            policy="round_robin",
            policy_reason=(
                f"{self.name} has no {policy or 'policy named for ' + engine.name}: requests alternate "
                "between replicas"
            ),
        )
