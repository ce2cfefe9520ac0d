"""What the toolkit knows about a router program: data, not branches (deploy.routers.registry holds them).

    >>> from deploy.routers.base import RouterSettings
    >>> RouterSettings(policy="round_robin", policy_reason="r").health_check_interval_s
    5

A router fronts N replicas of one engine behind one URL. The toolkit never routes requests itself: it pins,
installs, configures, starts and watches an established router (``vllm-router``).
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
class Router:
    """One router program: its PyPI package, pinned version, entry point, metrics and policies."""

    name: str
    display_name: str
    package: str
    version: str
    #: the console script the package installs
    entry_point: str
    policies: tuple[str, ...]
    #: Prometheus metric names the monitoring rules read (checked against a live router in the tests)
    metrics: dict[str, str] = field(default_factory=dict)
    #: the router's own default listening port for metrics
    metrics_port: int = 29000
    #: where the router answers liveness for `up`/`status` (its own, not the workers')
    health_path: str = "/health"
    #: environment variable the rendered launcher reads the API key from (never on argv)
    api_key_env: str = "KIMI_ROUTER_API_KEY"
    #: plan.json ``fleet.router`` key -> the router's flag (``deploy.routers.argv.router_argv`` composes them)
    flags: dict[str, str] = field(default_factory=dict)
    #: the flag that lists the workers (one value per replica's URL)
    worker_urls_flag: str = "--worker-urls"
    #: how the router's gauges encode states, read from its own metric HELP texts and seen in the fleet test
    metric_values: dict[str, dict[int, str]] = field(default_factory=dict)
    #: what the docs and the table say about this router
    source: str = ""

    def settings_for(self, engine: Any) -> RouterSettings:
        """The router's settings in front of ``engine``'s replicas (an ``deploy.engines.base.Engine``): its
        policy when this router has it, else round robin, with the reason either way.

            >>> from deploy.engines import registry as engines
            >>> from deploy.routers import registry
            >>> registry.get("vllm-router").settings_for(engines.get("vllm")).policy
            'cache_aware'
            >>> registry.get("vllm-router").settings_for(engines.get("llama.cpp")).policy
            'power_of_two'
        """
        if engine.router_policy in self.policies:
            return RouterSettings(policy=engine.router_policy, policy_reason=engine.router_policy_reason)
        return RouterSettings(
            policy="round_robin",
            policy_reason=(
                f"{self.name} has no {engine.router_policy} policy: requests alternate between replicas"
            ),
        )
