"""A Grafana dashboard per engine, and the provisioning files that load it with its Prometheus datasource.

    >>> from deploy.monitoring.spec import MonitoringSpec, ScrapeTarget
    >>> spec = MonitoringSpec("llama.cpp", "demo", "c0", [ScrapeTarget("ci", "127.0.0.1:8001")], slots=2)
    >>> [p["title"] for p in dashboard(spec)["panels"]][:2]
    ['Engine up', 'Generated tokens/s']

Panels: engine up, throughput (generated and prompt tokens/s), TTFT and inter-token latency percentiles (mean
seconds per token for llama.cpp, which has no histograms), KV-cache usage, running and waiting requests,
errors. Queries use Grafana's ``$__rate_interval`` and a ``$node`` variable; ``queries()`` lists
them for tests that run each one against a real Prometheus. A fleet adds a row for its router
(``fleet_panels``): healthy replicas, each replica's health and circuit breaker, requests per replica and per
route, the router's latency.
"""

from __future__ import annotations

from typing import Any

from deploy.monitoring.engines import kv_usage_expr, metrics_for
from deploy.monitoring.spec import DATASOURCE_UID, JOB, ROUTER_JOB, MonitoringSpec
from deploy.routers import registry as routers

#: Grafana substitutes these; a test querying Prometheus directly substitutes them the same way.
RATE = "$__rate_interval"
NODE_SEL = f'{{job="{JOB}",node=~"$node"}}'
DASHBOARDS_DIR = "/var/lib/grafana/dashboards/kimi-deploy"


def _sel(extra: str = "") -> str:
    return f'{{job="{JOB}",node=~"$node"{"," + extra if extra else ""}}}'


def panels_for(spec: MonitoringSpec) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(title, unit, [(expr, legend)]) for every panel of ``spec``'s engine."""
    m = metrics_for(spec.engine)
    s = NODE_SEL
    out: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("Engine up", "none", [(f"up{s}", "{{node}}")]),
        (
            "Generated tokens/s",
            "short",
            [(f"sum by (node) (rate({m.generation_tokens}{s}[{RATE}]))", "{{node}}")],
        ),
        ("Prompt tokens/s", "short", [(f"sum by (node) (rate({m.prompt_tokens}{s}[{RATE}]))", "{{node}}")]),
    ]
    if m.ttft_histogram and m.itl_histogram:
        for title, hist in (
            ("Time to first token", m.ttft_histogram),
            ("Inter-token latency", m.itl_histogram),
        ):
            out.append(
                (
                    title,
                    "s",
                    [
                        (
                            f"histogram_quantile({q}, sum by (le, node) (rate({hist}_bucket{s}[{RATE}])))",
                            f"p{int(q * 100)} {{{{node}}}}",
                        )
                        for q in (0.5, 0.95, 0.99)
                    ],
                )
            )
    else:
        assert m.prompt_seconds and m.generation_seconds
        out.append(
            (
                "Prompt seconds per token (mean)",
                "s",
                [(f"rate({m.prompt_seconds}{s}[{RATE}]) / rate({m.prompt_tokens}{s}[{RATE}])", "{{node}}")],
            )
        )
        out.append(
            (
                "Seconds per generated token (mean)",
                "s",
                [
                    (
                        f"rate({m.generation_seconds}{s}[{RATE}]) / rate({m.generation_tokens}{s}[{RATE}])",
                        "{{node}}",
                    )
                ],
            )
        )
    out.append(("KV-cache usage", "percentunit", [(kv_usage_expr(m, s, spec.slots), "{{node}}")]))
    out.append(
        (
            "Requests running / waiting",
            "short",
            [(f"{m.running}{s}", "running {{node}}"), (f"{m.waiting}{s}", "waiting {{node}}")],
        )
    )
    if m.errors:
        e = m.errors
        bad = _sel(f'{e.label}=~"{e.bad_match}"')
        expr = f"sum by (node) (rate({e.metric}{bad}[{RATE}]))"
        out.append(("Server errors/s", "short", [(expr, "errors {{node}}")]))
    else:
        out.append(("Failed scrapes", "short", [(f"1 - avg_over_time(up{s}[{RATE}])", "{{node}}")]))
    if m.preemptions:
        out.append(
            ("Preemptions/s", "short", [(f"sum by (node) (rate({m.preemptions}{s}[{RATE}]))", "{{node}}")])
        )
    return out


def fleet_panels(spec: MonitoringSpec) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The fleet row's panels (none without a router), as ``panels_for``; the router's per-worker series carry
    ``worker`` (its URL) and ``replica`` (the id prometheus.yml maps it to). A query needing a metric the
    router has no equivalent of (a key missing from ``Router.metrics``) is left out, and a panel left with
    none."""
    if spec.router is None:
        return []
    router = routers.get(spec.router.program)
    m = router.metrics
    s = f'{{job="{ROUTER_JOB}"}}'
    route = router.route_label
    panels: list[tuple[str, str, list[tuple[str, str, str]]]] = [
        (
            "Healthy replicas",
            "none",
            [
                ("sum by (node) ({worker_health}" + s + ")", "healthy", "worker_health"),
                ("max by (node) ({active_workers}" + s + ")", "known to the router", "active_workers"),
            ],
        ),
        (
            "Replica health (1 healthy, 0 not)",
            "none",
            [("{worker_health}" + s, "{{replica}} {{worker}}", "worker_health")],
        ),
        (
            "Circuit breaker (0 closed, 1 open, 2 half-open)",
            "none",
            [("{cb_state}" + s, "{{replica}} {{worker}}", "cb_state")],
        ),
        (
            "Router requests/s",
            "reqps",
            [
                (
                    "sum by (replica) (rate({processed_requests}" + s + f"[{RATE}]))",
                    "replica {{replica}}",
                    "processed_requests",
                ),
                (
                    f"sum by ({route}) (rate({{requests_total}}{s}[{RATE}]))",
                    f"{route} {{{{{route}}}}}",
                    "requests_total",
                ),
            ],
        ),
        (
            "Router request latency",
            "s",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate({{generate_duration}}_bucket{s}[{RATE}])))",
                    f"p{int(q * 100)}",
                    "generate_duration",
                )
                for q in (0.5, 0.95, 0.99)
            ],
        ),
    ]
    out = []
    for title, unit, targets in panels:
        kept = [(expr.replace("{" + key + "}", m[key]), legend) for expr, legend, key in targets if key in m]
        if kept:
            out.append((title, unit, kept))
    return out


def queries(spec: MonitoringSpec) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of the dashboard."""
    every = panels_for(spec) + fleet_panels(spec)
    return [(title, expr) for title, _unit, targets in every for expr, _legend in targets]


def _panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], y: int, x: int) -> dict[str, Any]:
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": ds,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + j), "datasource": ds, "expr": expr, "legendFormat": legend}
            for j, (expr, legend) in enumerate(targets)
        ],
    }


def _panels(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """The engine's panels two by two, then (a fleet) a row and the router's panels."""
    engine = panels_for(spec)
    panels = [_panel(i + 1, t, u, q, 8 * (i // 2), 12 * (i % 2)) for i, (t, u, q) in enumerate(engine)]
    fleet = fleet_panels(spec)
    if not fleet:
        return panels
    assert spec.router is not None
    top = 8 * ((len(engine) + 1) // 2)
    row_id = len(panels) + 1
    panels.append(
        {
            "id": row_id,
            "type": "row",
            "title": f"Fleet: {spec.router.program} in front of the replicas",
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": top},
            "panels": [],
        }
    )
    panels += [
        _panel(row_id + 1 + i, t, u, q, top + 1 + 8 * (i // 2), 12 * (i % 2))
        for i, (t, u, q) in enumerate(fleet)
    ]
    return panels


def dashboard(spec: MonitoringSpec) -> dict[str, Any]:
    """The Grafana dashboard JSON model (schemaVersion 39) for ``spec``'s engine."""
    m = metrics_for(spec.engine)
    ds = {"type": "prometheus", "uid": DATASOURCE_UID}
    panels = _panels(spec)
    return {
        "uid": f"kimi-deploy-{m.family.replace('.', '')}",
        "title": f"kimi-deploy: {spec.served_model_name} on {m.version}",
        "tags": ["kimi-deploy", m.family],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "node",
                    "type": "query",
                    "datasource": ds,
                    "query": {"query": f'label_values(up{{job="{JOB}"}}, node)', "refId": "node"},
                    "definition": f'label_values(up{{job="{JOB}"}}, node)',
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"text": "All", "value": "$__all"},
                    "refresh": 2,
                }
            ]
        },
        "panels": panels,
    }


def provisioning(spec: MonitoringSpec, dashboards_dir: str = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """Grafana provisioning: ``datasources/kimi-deploy.yml`` and ``dashboards/kimi-deploy.yml``."""
    return {
        "datasources/kimi-deploy.yml": {
            "apiVersion": 1,
            "datasources": [
                {
                    "name": "kimi-deploy Prometheus",
                    "type": "prometheus",
                    "uid": DATASOURCE_UID,
                    "access": "proxy",
                    "url": spec.prometheus_url,
                    "isDefault": False,
                }
            ],
        },
        "dashboards/kimi-deploy.yml": {
            "apiVersion": 1,
            "providers": [
                {
                    "name": "kimi-deploy",
                    "folder": "kimi-deploy",
                    "type": "file",
                    "disableDeletion": False,
                    "options": {"path": dashboards_dir},
                }
            ],
        },
    }


__all__ = ["DASHBOARDS_DIR", "RATE", "dashboard", "fleet_panels", "panels_for", "provisioning", "queries"]
