"""Service-level objectives (``--slo ttft_p95=2s,itl_p95=80ms``) and the capacity they allow.

    >>> slo = parse_slo("ttft_p95=2s,itl_p95=80ms")
    >>> slo
    {'ttft_p95': 2000.0, 'itl_p95': 80.0}
    >>> point = {"concurrency": 4, "errors": 0, "requests": 8,
    ...          "ttft_ms": {"p95": 900.0}, "itl_ms": {"p95": 95.0}, "e2e_ms": {}}
    >>> misses(point, slo)
    ['itl_p95 95.0 ms > 80.0 ms']

A point meets the SLO when every named percentile is at or under its limit and no request failed; the
capacity is the highest concurrency that meets it.
"""

from __future__ import annotations

import re
from typing import Any

from deploy.errors import InputError

METRICS = {"ttft": "ttft_ms", "itl": "itl_ms", "e2e": "e2e_ms"}
PERCENTILES = ("p50", "p90", "p95", "p99")
_UNITS = {"ms": 1.0, "s": 1000.0}


def parse_slo(text: str | None) -> dict[str, float]:
    """``metric_pNN=VALUE[ms|s]`` pairs, comma-separated, into limits in milliseconds."""
    if not text:
        return {}
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(ttft|itl|e2e)_(p50|p90|p95|p99)=(\d+(?:\.\d+)?)(ms|s)?", part)
        if m is None:
            raise InputError(
                f"--slo {part!r}: expected METRIC_PCT=VALUE with METRIC ttft|itl|e2e, PCT p50|p90|p95|p99 "
                "and VALUE in ms or s (e.g. ttft_p95=2s,itl_p95=80ms)"
            )
        value = float(m.group(3)) * _UNITS[m.group(4) or "ms"]
        if value <= 0:
            raise InputError(f"--slo {part!r}: the limit must be positive")
        out[f"{m.group(1)}_{m.group(2)}"] = value
    return out


def misses(point: dict[str, Any], slo: dict[str, float]) -> list[str]:
    """What in ``point`` misses ``slo`` (empty when it meets it)."""
    out = []
    if point.get("errors"):
        out.append(f"{point['errors']} failed request(s)")
    if not point.get("requests"):
        out.append("no request succeeded")
    for key, limit in slo.items():
        metric, pct = key.split("_")
        value = (point.get(METRICS[metric]) or {}).get(pct)
        if value is None:
            if point.get("requests"):
                out.append(f"{key} not measured")
        elif value > limit:
            out.append(f"{key} {value:.1f} ms > {limit:.1f} ms")
    return out


def capacity(points: list[dict[str, Any]], slo: dict[str, float]) -> dict[str, Any]:
    """The highest concurrency meeting ``slo`` among ``points`` (one workload shape), with what it serves."""
    ordered = sorted(points, key=lambda p: p["concurrency"])
    verdicts = [{"concurrency": p["concurrency"], "misses": misses(p, slo)} for p in ordered]
    meeting = [p for p, v in zip(ordered, verdicts, strict=True) if not v["misses"]]
    best = max(meeting, key=lambda p: p["concurrency"]) if meeting else None
    return {
        "slo_ms": dict(slo),
        "concurrency": best["concurrency"] if best else None,
        "output_tokens_per_s": best["output_tokens_per_s"] if best else None,
        "requests_per_s": best["requests_per_s"] if best else None,
        "lowest_point_meets": bool(verdicts) and not verdicts[0]["misses"],
        "points": verdicts,
    }


__all__ = ["capacity", "misses", "parse_slo"]
