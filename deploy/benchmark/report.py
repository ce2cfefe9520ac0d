"""The bench report for people: one line per point, engine metrics, capacity at the SLO, expected/measured.

>>> print(render_report(report))   # doctest: +SKIP
AIPerf 0.13.0 -> http://127.0.0.1:8001 (demo, llama.cpp): chat workload, instant mode
CONC  OK  ERR  TTFT ms p50/p90/p99 ...
"""

from __future__ import annotations

from typing import Any

COLUMNS = (
    "ISL/OSL",
    "CONC",
    "OK",
    "ERR",
    "TTFT ms p50/p90/p99",
    "ITL ms p50/p90/p99",
    "E2E ms p50/p90/p99",
    "OUT tok/s",
    "tok/s/user",
    "req/s",
    "SLO",
)


def _n(x: Any, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _trio(stats: dict[str, Any] | None, digits: int = 0) -> str:
    s = stats or {}
    return "/".join(_n(s.get(k), digits) for k in ("p50", "p90", "p99"))


def point_row(p: dict[str, Any], verdict: list[str] | None) -> tuple[str, ...]:
    slo = "-" if verdict is None else ("meets" if not verdict else "misses")
    return (
        f"{p.get('isl', '?')}/{p.get('osl', '?')}",
        str(p["concurrency"]),
        str(p.get("requests", 0)),
        str(p.get("errors", 0)),
        _trio(p.get("ttft_ms")),
        _trio(p.get("itl_ms"), 1),
        _trio(p.get("e2e_ms")),
        _n(p.get("output_tokens_per_s"), 1),
        _n((p.get("output_tokens_per_s_per_user") or {}).get("p50"), 1),
        _n(p.get("requests_per_s"), 2),
        slo,
    )


def _verdicts(report: dict[str, Any]) -> dict[tuple[int, int, int], list[str]]:
    cap = report.get("capacity") or {}
    if not cap.get("slo_ms"):
        return {}
    shapes = cap.get("by_shape") or [cap]
    out = {}
    for s in shapes:
        isl = s.get("isl", report["workload"]["shapes"][0]["isl"])
        osl = s.get("osl", report["workload"]["shapes"][0]["osl"])
        for v in s.get("points") or []:
            out[(isl, osl, v["concurrency"])] = v["misses"]
    return out


def render_table(report: dict[str, Any]) -> str:
    verdicts = _verdicts(report)
    rows = [COLUMNS] + [
        point_row(p, verdicts.get((p.get("isl"), p.get("osl"), p["concurrency"])) if verdicts else None)
        for p in report["points"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _metrics_lines(m: dict[str, Any]) -> list[str]:
    if not m.get("available"):
        return [f"Engine metrics: not available ({m.get('reason')})"]
    src = m.get("sources") or {}

    def item(label: str, key: str, src_key: str, fmt: str = "{:g}") -> str:
        value = m.get(key)
        if value is None:
            return f"{label} not exposed"
        return f"{label} {fmt.format(value)} ({src.get(src_key)})"

    where = f"each replica's /metrics ({src['replicas']})" if src.get("replicas") else "/metrics"
    return [
        f"Engine metrics (peaks over the sweep, from {where}): "
        + "; ".join(
            [
                item("KV cache usage", "peak_kv_cache_usage", "kv_cache_usage", "{:.1%}"),
                item("queue", "peak_queue", "queue"),
                item("running", "peak_running", "running"),
                item("preemptions", "preemptions", "preemptions"),
            ]
        )
    ]


def _capacity_lines(cap: dict[str, Any]) -> list[str]:
    if not cap.get("slo_ms"):
        return ["Capacity: no --slo given"]
    slo = ", ".join(f"{k} <= {v:g} ms" for k, v in cap["slo_ms"].items())
    lines = []
    for s in cap.get("by_shape") or [cap]:
        shape = f" at ISL {s['isl']} / OSL {s['osl']}" if "isl" in s else ""
        if s.get("concurrency"):
            lines.append(
                f"Capacity at the SLO ({slo}){shape}: concurrency {s['concurrency']} "
                f"({_n(s.get('output_tokens_per_s'), 1)} output tok/s, "
                f"{_n(s.get('requests_per_s'), 2)} req/s)"
            )
        else:
            first = (s.get("points") or [{}])[0]
            lines.append(
                f"Capacity at the SLO ({slo}){shape}: none; the lowest point misses it "
                f"({'; '.join(first.get('misses') or ['no point ran'])})"
            )
    return lines


def _expected_line(e: dict[str, Any]) -> str:
    measured, want = e.get("measured_decode_tokens_per_s_c1"), e.get("decode_tokens_per_s_c1")
    if want is None:
        return f"Expected decode at concurrency 1: - ({e.get('source')}); measured {_n(measured, 1)} tok/s"
    ratio = e.get("ratio")
    return (
        f"Decode at concurrency 1: measured {_n(measured, 1)} tok/s / expected {_n(want, 1)} tok/s = "
        f"{'-' if ratio is None else f'{ratio:.2f}'} ({e.get('basis', 'plan performance')})"
    )


def render_report(report: dict[str, Any]) -> str:
    """The whole report as text."""
    t, w = report["target"], report["workload"]
    head = (
        f"AIPerf {report['tool']['version']} -> {t['url']} ({t['model']}, {t['flavor']}): "
        f"{w['kind']} workload, {w['mode']} mode, "
        + (
            f"{w['requests_per_point']} requests per point"
            if w.get("requests_per_point")
            else (f"{w['duration_s_per_point']:g} s per point" if w.get("duration_s_per_point") else "")
        )
    )
    lines = [head.rstrip(", "), render_table(report), ""]
    lines += _metrics_lines(report.get("engine_metrics") or {})
    lines += _capacity_lines(report.get("capacity") or {})
    lines.append(_expected_line(report.get("expected") or {}))
    if report.get("errors"):
        first = next((p["error_summary"][0] for p in report["points"] if p.get("error_summary")), None)
        lines.append(
            f"Errors: {report['errors']} failed request(s)" + (f"; first: {first['error']}" if first else "")
        )
    lines.append(f"Tokenizer: {report['tokenizer']['source']}")
    return "\n".join(lines)


__all__ = ["render_report", "render_table"]
