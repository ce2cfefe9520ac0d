"""Alert rules for a fleet's router and for the GPUs (DCGM exporter), with ``promtool test rules`` cases.

    >>> from deploy.monitoring.spec import MonitoringSpec, RouterTarget, ScrapeTarget
    >>> spec = MonitoringSpec("llama.cpp", "demo", "c0", [ScrapeTarget("r0-vm", "127.0.0.1:8001")],
    ...                       router=RouterTarget("vllm-router", "127.0.0.1:29000", "vm"))
    >>> [r["alert"] for r in router_rules(spec)]
    ['KimiRouterDown', 'KimiReplicaUnhealthy', 'KimiCircuitBreakerOpen', 'KimiNoHealthyReplicas']

The router's metric names come from its registry entry (``deploy.routers``), their encodings from the router
itself (vllm-router 0.1.17, seen on a live one): ``worker_health{worker="<URL>"}`` is 1 healthy, 0 unhealthy;
``cb_state{worker}`` is 0 closed, 1 open, 2 half-open (and stays 1 while the worker is unhealthy, since
half-open is only tried on a request); ``active_workers`` counts the workers the router knows, healthy or not,
so "no healthy replica" sums ``worker_health`` instead. The DCGM names are dcgm-exporter's
(``deploy.monitoring.dcgm``). Annotations use only ``$labels`` (and the XID's ``$value``) so the unit tests
can state them exactly; each description ends with what to do.
"""

from __future__ import annotations

import re
from typing import Any

from deploy.monitoring import dcgm
from deploy.monitoring.rules import _rule, _series
from deploy.monitoring.spec import DCGM_JOB, ROUTER_JOB, MonitoringSpec, Timings
from deploy.routers import registry as routers

#: Labels prometheus.yml puts on the router target (besides job and instance).
ROUTER_LABELS = ("node", "program", "model", "candidate")
#: Labels the DCGM exporter puts on each GPU's series (a sample of them, for the unit tests).
_GPU_LABELS = {
    "gpu": "0",
    "UUID": "GPU-5a1e2b7c-0000-4000-8000-000000000000",
    "modelName": "NVIDIA H100 80GB HBM3",
}
_TEMPLATE = re.compile(r"\{\{ \$(labels\.(\w+)|value) \}\}")


def router_metrics(spec: MonitoringSpec) -> dict[str, str]:
    """The router's metric names (its registry entry's ``metrics``)."""
    assert spec.router is not None
    return routers.get(spec.router.program).metrics


def _by_router() -> str:
    return "instance, node, program, model"


#: The ``Router.metrics`` key each router alert reads (a router without that metric gets no such alert).
RULE_NEEDS = {
    "KimiReplicaUnhealthy": "worker_health",
    "KimiCircuitBreakerOpen": "cb_state",
    "KimiNoHealthyReplicas": "worker_health",
}


def router_rules(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """The router's alerts: down, a replica unhealthy, a circuit breaker open, no healthy replica; an alert
    whose metric the router has no equivalent of is left out (``RULE_NEEDS``)."""
    m = router_metrics(spec)
    return [r for r in _router_rules(spec, m) if RULE_NEEDS.get(r["alert"], "") in {"", *m}]


def _router_rules(spec: MonitoringSpec, metrics: dict[str, str]) -> list[dict[str, Any]]:
    m = {k: metrics.get(k, "") for k in ("worker_health", "cb_state")}
    t = spec.timings
    sel = f'{{job="{ROUTER_JOB}"}}'
    short = Timings.duration(t.not_ready_for_s)
    replica = "replica {{ $labels.replica }} ({{ $labels.worker }})"
    return [
        _rule(
            "KimiRouterDown",
            f"up{sel} == 0",
            t.not_ready_for_s,
            "critical",
            "the router on {{ $labels.node }} is down",
            f"Prometheus has not scraped the router's metrics on {{{{ $labels.node }}}} for {short}: users "
            "reach no replica. Check `kimi-deploy status` and `journalctl -u kimi-deploy-router`, then "
            "restart it (`kimi-deploy up`).",
        ),
        _rule(
            "KimiReplicaUnhealthy",
            f"{m['worker_health']}{sel} == 0",
            t.not_ready_for_s,
            "warning",
            f"{replica} is unhealthy",
            f"The router has failed its health checks on {replica} for {short} and sends it no requests: "
            "the others carry its load. Check that replica's engine (`kimi-deploy status`, its journal) "
            "and restart it; the router takes it back once it answers.",
        ),
        _rule(
            "KimiCircuitBreakerOpen",
            f"{m['cb_state']}{sel} == 1",
            t.not_ready_for_s,
            "warning",
            f"circuit breaker open for {replica}",
            f"Requests to {replica} failed past the router's threshold and its circuit breaker has been open "
            f"for {short}: no request goes there until a probe succeeds. Look for errors or timeouts in "
            "that replica's log.",
        ),
        _rule(
            "KimiNoHealthyReplicas",
            f"sum by ({_by_router()}) ({m['worker_health']}{sel}) == 0",
            t.not_ready_for_s,
            "critical",
            "no healthy replica behind the router on {{ $labels.node }}",
            f"Every replica has failed the router's health checks for {short}: every request fails. "
            "Check the replicas' engines (`kimi-deploy status`), restart them; `kimi-deploy check` through "
            "the router confirms the recovery.",
        ),
    ]


def _named_increase(metric: str, sel: str, win: str) -> str:
    """``increase`` of one counter, its name kept in a ``counter`` label so several can be or-ed."""
    return f'label_replace(increase({metric}{sel}[{win}]), "counter", "{metric}", "", "") > 0'


def _thermal_expr(sel: str) -> str:
    """The thermal bits of the clock-event mask are set (PromQL has no bitwise and: shift and take modulo)."""
    bits = sorted(dcgm.CLOCK_EVENT_BITS[b] for b in dcgm.THERMAL_BITS)
    low, span = bits[0], len(bits)
    assert bits == [low << i for i in range(span)], "the thermal bits must be adjacent"
    return " or ".join(
        f"floor({name}{sel} / {low}) % {1 << span} > 0"
        for name in (dcgm.CLOCK_EVENT_REASONS, dcgm.CLOCK_THROTTLE_REASONS_LEGACY)
    )


def dcgm_rules(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """The GPU alerts: XID errors, uncorrectable ECC errors, a failed row remap, thermal throttling, NVLink
    errors."""
    t = spec.timings
    sel = f'{{job="{DCGM_JOB}"}}'
    win = Timings.duration(t.window_s)
    gpu = "GPU {{ $labels.gpu }} on {{ $labels.node }}"
    return [
        _rule(
            "KimiGpuXidError",
            f"{dcgm.XID_ERRORS}{sel} > 0",
            0,
            "critical",
            f"XID error on {gpu}",
            f"The driver reported XID {{{{ $value }}}} on {gpu} ({dcgm.XID_ERRORS} keeps the last one until "
            "the driver reloads). Look it up in NVIDIA's XID catalogue; 48, 63-64, 74, 79, 92-95 usually "
            "mean draining the node, resetting the GPU (or rebooting) and checking it with `dcgmi diag`.",
        ),
        _rule(
            "KimiGpuEccUncorrectable",
            f'label_replace({dcgm.ECC_DBE}{sel}, "counter", "{dcgm.ECC_DBE}", "", "") > 0 or '
            + _named_increase(dcgm.UNCORRECTABLE_REMAPPED_ROWS, sel, win),
            0,
            "critical",
            f"uncorrectable memory errors on {gpu}",
            f"{{{{ $labels.counter }}}} is above zero ({dcgm.ECC_DBE} counts since the driver loaded, the "
            f"remapped rows in the last {win}): data in GPU memory was lost and requests on this replica may "
            "have failed. Drain the replica and reset the GPU so the row is remapped; repeated errors mean "
            "an RMA.",
        ),
        _rule(
            "KimiGpuRowRemapFailed",
            f"{dcgm.ROW_REMAP_FAILURE}{sel} > 0",
            0,
            "critical",
            f"row remapping failed on {gpu}",
            f"{gpu} could not remap a memory row with uncorrectable errors: take it out of service and "
            "replace it.",
        ),
        _rule(
            "KimiGpuThermalThrottling",
            _thermal_expr(sel),
            t.window_s,
            "warning",
            f"{gpu} is thermally throttled",
            f"The clock-event reasons of {gpu} have had a thermal bit (software or hardware thermal "
            f"slowdown) for {win}: its clocks are lowered and the replica runs slower. Check cooling, fans "
            "and DCGM_FI_DEV_GPU_TEMP.",
        ),
        _rule(
            "KimiGpuNvlinkErrors",
            " or ".join(_named_increase(f, sel, win) for f in dcgm.NVLINK_ERRORS),
            0,
            "warning",
            f"NVLink errors on {gpu}",
            f"{{{{ $labels.counter }}}} rose in the last {win}: a link retried or recovered, tensor-parallel "
            "traffic slows down. Run `nvidia-smi nvlink -e` and `dcgmi diag -r 2`; reseat or replace the GPU "
            "or NVSwitch tray if it keeps rising.",
        ),
    ]


def rules_documents(spec: MonitoringSpec) -> dict[str, dict[str, Any]]:
    """``{"router": doc, "dcgm": doc}`` for the parts ``spec`` has (a router; GPU nodes)."""
    out = {}
    if spec.router is not None:
        out["router"] = {"groups": [{"name": "kimi-deploy-router", "rules": router_rules(spec)}]}
    if spec.dcgm:
        out["dcgm"] = {"groups": [{"name": "kimi-deploy-dcgm", "rules": dcgm_rules(spec)}]}
    return out


# --------------------------------------------------------------------------------------- promtool tests


def expand(text: str, labels: dict[str, str], value: str = "") -> str:
    """What Prometheus makes of an annotation's ``{{ $labels.x }}`` and ``{{ $value }}``.

    >>> expand("GPU {{ $labels.gpu }}: {{ $value }}", {"gpu": "3"}, "79")
    'GPU 3: 79'
    """
    return _TEMPLATE.sub(lambda mt: value if mt.group(1) == "value" else labels.get(mt.group(2), ""), text)


def _alert(rule: dict[str, Any], labels: dict[str, str], value: str = "") -> dict[str, Any]:
    full = {**labels, **rule["labels"]}
    return {
        "exp_labels": full,
        "exp_annotations": {k: expand(v, full, value) for k, v in rule["annotations"].items()},
    }


def _case(
    t: Timings, name: str, series: list[dict[str, str]], expected: list[dict[str, Any]], steps: int
) -> dict[str, Any]:
    return {
        "interval": Timings.duration(t.scrape_interval_s),
        "input_series": series,
        "alert_rule_test": [
            {
                "eval_time": Timings.duration(steps * t.scrape_interval_s),
                "alertname": name,
                "exp_alerts": expected,
            }
        ],
    }


def _steps(t: Timings) -> int:
    """Scrapes enough for the longest ``for:`` and the window, with a margin."""
    return (max(t.not_ready_for_s, t.window_s * 2) + t.window_s) // t.scrape_interval_s + 4


def _router_cases(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """A replica that fails its checks, a breaker that opens, every replica unhealthy, a router that stops."""
    assert spec.router is not None
    m, t, router = router_metrics(spec), spec.timings, spec.router
    steps = _steps(t)
    n = steps + 2
    base = {
        "job": ROUTER_JOB,
        "instance": router.address,
        "node": router.node,
        "program": router.program,
        "model": spec.served_model_name,
        "candidate": spec.candidate,
    }
    replicas = list(router.replicas)
    replicas += [(f"r{i}", f"http://127.0.0.1:{18001 + i}") for i in range(len(replicas), 2)]
    (r0, u0), (r1, u1) = replicas[:2]
    w0, w1 = {**base, "worker": u0, "replica": r0}, {**base, "worker": u1, "replica": r1}
    rules = {r["alert"]: r for r in router_rules(spec)}
    health, cb, active = (m.get(k, "") for k in ("worker_health", "cb_state", "active_workers"))
    up = base
    agg = {k: base[k] for k in ("instance", "node", "program", "model")}
    cases = [
        ("KimiRouterDown", [_series("up", up, f"0x{n}")], [_alert(rules["KimiRouterDown"], up)]),
        ("KimiRouterDown", [_series("up", up, f"1x{n}")], []),
        (
            "KimiReplicaUnhealthy",
            [_series(health, w0, f"1x{n}"), _series(health, w1, f"1 1 0x{n}")],
            [_alert(rules["KimiReplicaUnhealthy"], w1)],
        ),
        ("KimiReplicaUnhealthy", [_series(health, w0, f"1x{n}"), _series(health, w1, f"1x{n}")], []),
        (
            "KimiCircuitBreakerOpen",
            [_series(cb, w0, f"0x{n}"), _series(cb, w1, f"0 0 1x{n}")],
            [_alert(rules["KimiCircuitBreakerOpen"], w1)],
        ),
        # half-open (2): the breaker is already probing the worker again
        ("KimiCircuitBreakerOpen", [_series(cb, w0, f"0x{n}"), _series(cb, w1, f"0 1 2x{n}")], []),
        # as on a live router: active_workers still counts both while neither is healthy
        (
            "KimiNoHealthyReplicas",
            [_series(health, w0, f"1 0x{n}"), _series(health, w1, f"0x{n}"), _series(active, base, f"2x{n}")],
            [_alert(rules["KimiNoHealthyReplicas"], agg)],
        ),
        (
            "KimiNoHealthyReplicas",
            [_series(health, w0, f"1x{n}"), _series(health, w1, f"0x{n}"), _series(active, base, f"2x{n}")],
            [],
        ),
    ]
    return [
        _case(t, name, [x for x in series if x["series"].split("{")[0]], expected, steps)
        for name, series, expected in cases
        if name in rules
    ]


def _dcgm_cases(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """An XID 79, double-bit ECC errors, a failed remap, hardware and software thermal slowdown (on the
    current and the legacy field name), NVLink replays; each beside series that must not fire (single-bit
    errors, a power cap, NVLink traffic)."""
    t = spec.timings
    steps = _steps(t)
    n = steps + 2
    target = spec.dcgm[0]
    base = {"job": DCGM_JOB, "instance": target.address, "node": target.node, **_GPU_LABELS}
    gpu1 = {**base, "gpu": "1", "UUID": base["UUID"].replace("-0000-4000", "-0001-4000")}
    rules = {r["alert"]: r for r in dcgm_rules(spec)}
    bits = dcgm.CLOCK_EVENT_BITS
    hw_thermal = bits["hw_thermal"] | bits["sw_power_cap"]
    not_thermal = bits["gpu_idle"] | bits["sw_power_cap"] | bits["hw_slowdown"] | bits["display_clocks"]
    replay = dcgm.NVLINK_ERRORS[2]

    def counted(rule: str, metric: str) -> dict[str, Any]:
        return _alert(rules[rule], {**base, "counter": metric})

    cases = [
        (
            "KimiGpuXidError",
            [_series(dcgm.XID_ERRORS, base, f"0 0 79x{n}")],
            [_alert(rules["KimiGpuXidError"], base, "79")],
        ),
        ("KimiGpuXidError", [_series(dcgm.XID_ERRORS, base, f"0x{n}")], []),
        (
            "KimiGpuEccUncorrectable",
            [
                _series(dcgm.ECC_DBE, base, f"0 0 0 2x{n}"),
                _series(dcgm.UNCORRECTABLE_REMAPPED_ROWS, base, f"1x{n}"),
            ],
            [counted("KimiGpuEccUncorrectable", dcgm.ECC_DBE)],
        ),
        (
            "KimiGpuEccUncorrectable",
            [
                _series(dcgm.ECC_DBE, base, f"0x{n}"),
                _series("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", base, f"0+3x{n}"),
                _series(dcgm.UNCORRECTABLE_REMAPPED_ROWS, base, f"1x{n}"),
            ],
            [],
        ),
        (
            "KimiGpuRowRemapFailed",
            [_series(dcgm.ROW_REMAP_FAILURE, base, f"0 1x{n}")],
            [_alert(rules["KimiGpuRowRemapFailed"], base)],
        ),
        ("KimiGpuRowRemapFailed", [_series(dcgm.ROW_REMAP_FAILURE, base, f"0x{n}")], []),
        (
            "KimiGpuThermalThrottling",
            [
                _series(dcgm.CLOCK_EVENT_REASONS, base, f"{hw_thermal}x{n}"),
                _series(dcgm.CLOCK_THROTTLE_REASONS_LEGACY, gpu1, f"{bits['sw_thermal']}x{n}"),
            ],
            [
                _alert(rules["KimiGpuThermalThrottling"], base),
                _alert(rules["KimiGpuThermalThrottling"], gpu1),
            ],
        ),
        ("KimiGpuThermalThrottling", [_series(dcgm.CLOCK_EVENT_REASONS, base, f"{not_thermal}x{n}")], []),
        (
            "KimiGpuNvlinkErrors",
            [
                _series(replay, base, f"0 0 0+4x{n}"),
                _series("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", base, f"0+1000x{n}"),
            ],
            [counted("KimiGpuNvlinkErrors", replay)],
        ),
        (
            "KimiGpuNvlinkErrors",
            [_series(f, base, f"5x{n}") for f in dcgm.NVLINK_ERRORS]
            + [_series("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", base, f"0+1000x{n}")],
            [],
        ),
    ]
    return [_case(t, name, series, expected, steps) for name, series, expected in cases]


def rule_tests(spec: MonitoringSpec, part: str, rule_file: str) -> dict[str, Any]:
    """The ``promtool test rules`` document for ``part`` ("router" or "dcgm"): every alert fires on the bad
    series and stays quiet on the good ones."""
    cases = _router_cases(spec) if part == "router" else _dcgm_cases(spec)
    return {
        "rule_files": [rule_file],
        "evaluation_interval": Timings.duration(spec.timings.evaluation_interval_s),
        "tests": cases,
    }


__all__ = [
    "ROUTER_LABELS",
    "dcgm_rules",
    "expand",
    "router_metrics",
    "router_rules",
    "rule_tests",
    "rules_documents",
]
