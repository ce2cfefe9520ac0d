"""Alert rules per engine, and a ``promtool test rules`` file that makes every alert fire and stay quiet.

    >>> from deploy.monitoring.spec import MonitoringSpec, ScrapeTarget
    >>> spec = MonitoringSpec("vllm", "kimi-k2.5", "c0", [ScrapeTarget("gpu0", "10.0.0.1:8000")])
    >>> [r["alert"] for r in alert_rules(spec)][:3]
    ['KimiEngineDown', 'KimiEngineNotReady', 'KimiKVCacheHigh']

The alerts: the engine is down (``up == 0`` for ``down_for``), not ready (no answer on ``/metrics`` for the
shorter ``not_ready_for``: loading, restarting or hung), KV cache above 90% for ``sustained_for``, requests
queueing and the queue growing, preemptions, TTFT p95 above the SLO, server-error ratio above 5%; llama.cpp
adds generation stalled (slots busy, no token generated). Annotations use only ``$labels`` so the unit
tests can state them exactly.
"""

from __future__ import annotations

from typing import Any

from deploy.monitoring.engines import EngineMetrics, kv_usage_expr, metrics_for
from deploy.monitoring.spec import ERROR_RATIO, JOB, KV_HIGH, MonitoringSpec, Timings

#: Labels every scraped series carries (prometheus.yml static_configs add node/engine/model/candidate).
TARGET_LABELS = ("node", "engine", "model")
#: Alerts whose expression aggregates by instance and the target labels.
AGGREGATED = ("KimiTTFTHigh", "KimiErrorRate")


def _by() -> str:
    return "instance, " + ", ".join(TARGET_LABELS)


def _rule(name: str, expr: str, for_s: int, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": Timings.duration(for_s),
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def alert_rules(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """The alerting rules for ``spec``'s engine, in a fixed order."""
    m = metrics_for(spec.engine)
    t = spec.timings
    sel = spec.selector
    win = Timings.duration(t.window_s)
    node = "{{ $labels.node }}"
    rules = [
        _rule(
            "KimiEngineDown",
            f"up{sel} == 0",
            t.down_for_s,
            "critical",
            f"{spec.engine} on {node} is down",
            f"Prometheus has not scraped /metrics on {node} for {Timings.duration(t.down_for_s)}.",
        ),
        _rule(
            "KimiEngineNotReady",
            f"up{sel} == 0",
            t.not_ready_for_s,
            "warning",
            f"{spec.engine} on {node} is not ready",
            f"/metrics on {node} has not answered for {Timings.duration(t.not_ready_for_s)}: loading the "
            "model, restarting or hung.",
        ),
        _rule(
            "KimiKVCacheHigh",
            f"{kv_usage_expr(m, sel, spec.slots)} > {KV_HIGH}",
            t.sustained_for_s,
            "warning",
            f"KV cache on {node} above {KV_HIGH:.0%}",
            f"{m.kv_usage_help} stayed above {KV_HIGH} for {Timings.duration(t.sustained_for_s)}: "
            "requests will queue or be preempted.",
        ),
        _rule(
            "KimiRequestsQueueing",
            f"{m.waiting}{sel} > 0 and deriv({m.waiting}{sel}[{win}]) > 0",
            t.window_s,
            "warning",
            f"requests queueing on {node}, queue growing",
            f"{m.waiting} has been above zero and rising over {win}: the engine takes less than arrives.",
        ),
    ]
    if m.preemptions:
        rules.append(
            _rule(
                "KimiPreemptions",
                f"increase({m.preemptions}{sel}[{win}]) > 0",
                0,
                "warning",
                f"requests preempted on {node}",
                f"{m.preemptions} rose in the last {win}: the KV cache ran out and running requests were "
                "preempted (recomputed later).",
            )
        )
    if m.ttft_histogram:
        rules.append(
            _rule(
                "KimiTTFTHigh",
                f"histogram_quantile(0.95, sum by (le, {_by()}) "
                f"(rate({m.ttft_histogram}_bucket{sel}[{win}]))) > {spec.ttft_p95_slo_s:g}",
                t.window_s,
                "warning",
                f"TTFT p95 on {node} above the SLO ({spec.ttft_p95_slo_s:g} s)",
                f"The 95th percentile of time to first token over {win} is above {spec.ttft_p95_slo_s:g} s.",
            )
        )
    if m.errors:
        e = m.errors
        rules.append(
            _rule(
                "KimiErrorRate",
                f'sum by ({_by()}) (rate({e.metric}{{job="{JOB}",{e.label}=~"{e.bad_match}"}}[{win}])) '
                f"/ sum by ({_by()}) (rate({e.metric}{sel}[{win}])) > {ERROR_RATIO}",
                t.window_s,
                "critical",
                f"server errors on {node} above {ERROR_RATIO:.0%}",
                f"More than {ERROR_RATIO:.0%} of the responses over {win} were server errors ({e.metric}).",
            )
        )
    if m.generation_seconds:
        rules.append(
            _rule(
                "KimiGenerationStalled",
                f"{m.running}{sel} > 0 and rate({m.generation_tokens}{sel}[{win}]) == 0",
                t.window_s,
                "critical",
                f"generation stalled on {node}",
                f"Requests are being processed but no token was generated in {win}.",
            )
        )
    return rules


def rules_document(spec: MonitoringSpec) -> dict[str, Any]:
    """The rule file: one group named after the engine."""
    return {
        "groups": [{"name": f"kimi-deploy-{metrics_for(spec.engine).family}", "rules": alert_rules(spec)}]
    }


# --------------------------------------------------------------------------------------- promtool tests


def _labels(spec: MonitoringSpec, **extra: str) -> dict[str, str]:
    target = spec.targets[0]
    return {
        "job": JOB,
        "instance": target.address,
        "node": target.node,
        "engine": spec.engine,
        "model": spec.served_model_name,
        **extra,
    }


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _expected(spec: MonitoringSpec, rule: dict[str, Any], **extra: str) -> dict[str, Any]:
    labels = {**_labels(spec, **extra), **rule["labels"]}
    node = spec.targets[0].node
    return {
        "exp_labels": labels,
        "exp_annotations": {k: v.replace("{{ $labels.node }}", node) for k, v in rule["annotations"].items()},
    }


def _case(
    spec: MonitoringSpec, rule: dict[str, Any], series: list[dict[str, str]], firing: bool, steps: int
) -> dict[str, Any]:
    t = spec.timings
    expected = [_expected(spec, rule)] if firing else []
    if firing and rule["alert"] in AGGREGATED:
        expected[0]["exp_labels"].pop("job")  # `sum by (instance, node, engine, model)` drops it
    return {
        "interval": Timings.duration(t.scrape_interval_s),
        "input_series": series,
        "alert_rule_test": [
            {
                "eval_time": Timings.duration(steps * t.scrape_interval_s),
                "alertname": rule["alert"],
                "exp_alerts": expected,
            }
        ],
    }


def _histogram(
    name: str, labels: dict[str, str], slo: float, observed: float, n: int
) -> list[dict[str, str]]:
    """Bucket series of a histogram around ``slo`` where every observation is ``observed`` (10 per scrape)."""
    out = []
    for le in [slo / 4, slo / 2, slo, slo * 2, slo * 4, float("inf")]:
        le_s = "+Inf" if le == float("inf") else f"{le:g}"
        out.append(_series(f"{name}_bucket", {**labels, "le": le_s}, f"0+{10 if observed <= le else 0}x{n}"))
    return out


def rule_tests(spec: MonitoringSpec, rule_file: str) -> dict[str, Any]:
    """A ``promtool test rules`` document: for every alert one case where it fires and one where it does not.

    The inputs come from what each alert means (an engine that stops answering, a KV cache at 95%, a queue
    that grows by one per scrape, 10% of responses failing), not from the rule expressions.
    """
    m: EngineMetrics = metrics_for(spec.engine)
    t = spec.timings
    # enough scrapes for the longest `for:` plus the window, and a margin
    steps = (max(t.down_for_s, t.sustained_for_s, t.window_s * 2) + t.window_s) // t.scrape_interval_s + 4
    n = steps + 2
    base = _labels(spec)
    slo = spec.ttft_p95_slo_s
    cases: list[dict[str, Any]] = []
    for rule in alert_rules(spec):
        name = rule["alert"]
        if name in ("KimiEngineDown", "KimiEngineNotReady"):
            fire = [_series("up", base, f"0x{n}")]
            quiet = [_series("up", base, f"1x{n}")]
        elif name == "KimiKVCacheHigh":
            if m.slot_based:
                busy = spec.slots
                fire = [_series(m.running, base, f"{busy}x{n}")]
                quiet = [_series(m.running, base, f"{max(0, busy - 1) if busy > 1 else 0}x{n}")]
            else:
                fire = [_series(m.kv_usage, base, f"0.95x{n}")]
                quiet = [_series(m.kv_usage, base, f"0.5x{n}")]
        elif name == "KimiRequestsQueueing":
            fire = [_series(m.waiting, base, f"1+1x{n}")]
            quiet = [_series(m.waiting, base, f"3x{n}")]
        elif name == "KimiPreemptions":
            assert m.preemptions
            fire = [_series(m.preemptions, base, f"0+2x{n}")]
            quiet = [_series(m.preemptions, base, f"7x{n}")]
        elif name == "KimiTTFTHigh":
            assert m.ttft_histogram
            fire = _histogram(m.ttft_histogram, base, slo, slo * 3, n)  # every first token in (2, 4] x SLO
            quiet = _histogram(m.ttft_histogram, base, slo, slo / 8, n)  # every first token under SLO/4
        elif name == "KimiErrorRate":
            e = m.errors
            assert e
            fire = [
                _series(e.metric, {**base, e.label: e.bad_value}, f"0+10x{n}"),
                _series(e.metric, {**base, e.label: e.ok_value}, f"0+90x{n}"),
            ]
            quiet = [
                _series(e.metric, {**base, e.label: e.bad_value}, f"0+1x{n}"),
                _series(e.metric, {**base, e.label: e.ok_value}, f"0+99x{n}"),
            ]
        elif name == "KimiGenerationStalled":
            fire = [_series(m.running, base, f"1x{n}"), _series(m.generation_tokens, base, f"500x{n}")]
            quiet = [_series(m.running, base, f"1x{n}"), _series(m.generation_tokens, base, f"500+20x{n}")]
        else:  # pragma: no cover - a new rule without a test case fails here
            raise AssertionError(f"no unit test case for alert {name}")
        cases.append(_case(spec, rule, fire, True, steps))
        cases.append(_case(spec, rule, quiet, False, steps))
    return {
        "rule_files": [rule_file],
        "evaluation_interval": Timings.duration(t.evaluation_interval_s),
        "tests": cases,
    }


__all__ = ["TARGET_LABELS", "alert_rules", "rule_tests", "rules_document"]
