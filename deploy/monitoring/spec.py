"""What the monitoring is rendered from: plain values the renderer passes in (no plan or render objects).

>>> from deploy.monitoring.spec import MonitoringSpec, ScrapeTarget, Timings
>>> spec = MonitoringSpec("llama.cpp", "demo", "c0", [ScrapeTarget("ci", "127.0.0.1:8001")], slots=1)
>>> spec.timings.duration(spec.timings.down_for_s)
'5m'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from deploy.errors import InputError
from deploy.monitoring import dcgm

#: The Prometheus job every rendered target belongs to; rules and dashboards select on it.
JOB = "kimi-deploy"
#: The job of a fleet's router (its own /metrics port) and of the DCGM exporters on GPU nodes.
ROUTER_JOB = "kimi-deploy-router"
DCGM_JOB = "kimi-deploy-dcgm"
#: The Grafana datasource uid the dashboards use (the provisioning file defines it).
DATASOURCE_UID = "kimi-deploy-prometheus"
#: The file, relative to prometheus.yml, that holds the API key Prometheus sends (mode 0600).
CREDENTIALS_FILE = "api-key"
#: Default TTFT p95 SLO in seconds when the plan names none.
DEFAULT_TTFT_P95_SLO_S = 2.0
#: Fraction of the KV cache in use that counts as high (sustained for ``sustained_for_s``).
KV_HIGH = 0.9
#: Fraction of responses that are server errors before the error-rate alert fires.
ERROR_RATIO = 0.05

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):[0-9]{1,5}$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")
_URL = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*)(:[0-9]{1,5})?/?$")


@dataclass(frozen=True)
class Timings:
    """Scrape/evaluation intervals and the ``for:`` durations of the rules, in seconds.

    The defaults suit a deployment; tests pass short ones so an alert fires within seconds.
    """

    scrape_interval_s: int = 15
    evaluation_interval_s: int = 15
    not_ready_for_s: int = 60
    down_for_s: int = 300
    sustained_for_s: int = 600
    window_s: int = 300

    def __post_init__(self) -> None:
        for name in ("scrape_interval_s", "evaluation_interval_s", "window_s"):
            if getattr(self, name) < 1:
                raise InputError(f"monitoring timings: {name} must be at least 1 s")
        if self.window_s < 2 * self.scrape_interval_s:
            raise InputError("monitoring timings: window_s must hold at least two scrapes")

    @classmethod
    def fast(cls) -> Timings:
        """1 s scrapes and `for:` durations of seconds: for the demo and tests, where an alert should fire
        within about ten seconds (``render --fast-alerts``)."""
        return cls(
            scrape_interval_s=1,
            evaluation_interval_s=1,
            not_ready_for_s=3,
            down_for_s=5,
            sustained_for_s=10,
            window_s=10,
        )

    @staticmethod
    def duration(seconds: int) -> str:
        """A Prometheus duration: ``90`` -> ``'90s'``, ``300`` -> ``'5m'``, ``3600`` -> ``'1h'``."""
        seconds = int(seconds)
        if seconds and seconds % 3600 == 0:
            return f"{seconds // 3600}h"
        if seconds and seconds % 60 == 0:
            return f"{seconds // 60}m"
        return f"{seconds}s"


@dataclass(frozen=True)
class ScrapeTarget:
    """One engine endpoint Prometheus scrapes: the node's name and ``host:port``."""

    node: str
    address: str

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.address):
            raise InputError(f"scrape target {self.address!r}: expected host:port")
        if not _LABEL_VALUE.match(self.node):
            raise InputError(f"node name {self.node!r}: not usable as a label value")


@dataclass(frozen=True)
class RouterTarget:
    """A fleet's router as Prometheus sees it: its program (a deploy.routers registry name), the ``host:port``
    of its metrics listener, the node it runs on and each replica's (id, URL), which the router labels its
    per-worker series with (``worker="<URL>"``; the scrape adds ``replica="<id>"``)."""

    program: str
    address: str
    node: str = "router"
    replicas: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.address):
            raise InputError(f"router metrics {self.address!r}: expected host:port")
        for value in (self.node, self.program, *(rid for rid, _url in self.replicas)):
            if not _LABEL_VALUE.match(value):
                raise InputError(f"{value!r}: not usable as a label value")
        for _rid, url in self.replicas:
            if not _URL.match(url):
                raise InputError(f"replica URL {url!r}: expected http(s)://host:port")


@dataclass(frozen=True)
class MonitoringSpec:
    """Everything the monitoring files need, as plain values."""

    engine: str
    served_model_name: str
    candidate: str
    targets: list[ScrapeTarget]
    #: True when the engine wants the API key on /metrics (a non-loopback bind with --api-key)
    api_key: bool = False
    #: llama.cpp's --parallel (slots); 1 for the others
    slots: int = 1
    ttft_p95_slo_s: float = DEFAULT_TTFT_P95_SLO_S
    timings: Timings = field(default_factory=Timings)
    #: the Prometheus the Grafana datasource points at
    prometheus_url: str = "http://127.0.0.1:9090"
    #: a fleet's router (None: one replica, no router)
    router: RouterTarget | None = None
    #: one DCGM exporter per GPU node (empty on CPU-only plans)
    dcgm: tuple[ScrapeTarget, ...] = ()

    def __post_init__(self) -> None:
        if not self.targets:
            raise InputError("monitoring: no node serves HTTP, nothing to scrape")
        if not self.ttft_p95_slo_s > 0:
            raise InputError(f"TTFT SLO {self.ttft_p95_slo_s!r}: must be a positive number of seconds")
        for value in (self.served_model_name, self.candidate):
            if not _LABEL_VALUE.match(value):
                raise InputError(f"{value!r}: not usable as a label value")

    @property
    def selector(self) -> str:
        return f'{{job="{JOB}"}}'


def router_target(fleet: dict[str, Any] | None) -> RouterTarget | None:
    """The router of a manifest's ``fleet`` section (None without a fleet or a router).

    >>> fleet = {"router": {"program": "vllm-router", "node": "vm", "metrics": "127.0.0.1:29000"},
    ...          "replicas": [{"id": "r0", "url": "http://127.0.0.1:8001"}]}
    >>> router_target(fleet).replicas
    (('r0', 'http://127.0.0.1:8001'),)
    """
    router = (fleet or {}).get("router")
    if not router:
        return None
    replicas = tuple(
        (str(r["id"]), str(r["url"])) for r in (fleet or {}).get("replicas") or [] if r.get("url")
    )
    return RouterTarget(
        program=str(router["program"]),
        address=str(router["metrics"]),
        node=str(router.get("node") or "router"),
        replicas=replicas,
    )


def dcgm_targets(
    hardware: dict[str, Any], used: Iterable[str] | None = None, port: int = dcgm.DEFAULT_PORT
) -> tuple[ScrapeTarget, ...]:
    """One DCGM exporter per GPU node of a plan's ``hardware`` that the deployment uses (``used``: profile
    node names; None: every node), at the node's address from the profile (loopback when it has none).

    >>> hw = {"nodes": [{"name": "a", "address": "10.0.0.1", "gpus": {"count": 8}},
    ...                 {"name": "b", "address": "10.0.0.2", "gpus": {"count": 0}}]}
    >>> dcgm_targets(hw)
    (ScrapeTarget(node='a', address='10.0.0.1:9400'),)
    """
    names = None if used is None else set(used)
    out = []
    for node in hardware.get("nodes") or []:
        if int((node.get("gpus") or {}).get("count") or 0) < 1:
            continue
        if names is not None and node.get("name") not in names:
            continue
        host = str(node.get("address") or "127.0.0.1")
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        out.append(ScrapeTarget(str(node["name"]), f"{host}:{port}"))
    return tuple(out)


def fleet_hosts(fleet: dict[str, Any] | None) -> list[str] | None:
    """The profile nodes a manifest's fleet runs on: its node names are ``<replica>-<node>`` (None without a
    fleet).

    >>> fleet_hosts({"replicas": [{"id": "r0", "nodes": ["r0-a", "r0-b"]}, {"id": "r1", "nodes": ["r1-c"]}]})
    ['a', 'b', 'c']
    """
    if not fleet or not fleet.get("replicas"):
        return None
    return [
        name[len(str(r["id"])) + 1 :] if name.startswith(f"{r['id']}-") else name
        for r in fleet["replicas"]
        for name in r.get("nodes") or []
    ]


__all__ = [
    "CREDENTIALS_FILE",
    "DATASOURCE_UID",
    "DCGM_JOB",
    "DEFAULT_TTFT_P95_SLO_S",
    "ERROR_RATIO",
    "JOB",
    "KV_HIGH",
    "MonitoringSpec",
    "ROUTER_JOB",
    "RouterTarget",
    "ScrapeTarget",
    "Timings",
    "dcgm_targets",
    "fleet_hosts",
    "router_target",
]
