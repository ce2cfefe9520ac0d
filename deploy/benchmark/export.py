"""AIPerf's documented summary export, ``profile_export_aiperf.json``, read through a schema.

    >>> point = read_export("artifacts/c1/profile_export_aiperf.json", concurrency=1)  # doctest: +SKIP
    >>> point["ttft_ms"]["p50"], point["output_tokens_per_s"]                           # doctest: +SKIP
    (212.4, 41.7)

The file's top level carries ``schema_version`` (AIPerf's ``JsonExportData.SCHEMA_VERSION``,
aiperf/common/models/export_models.py: "1.4" in AIPerf 0.13.0) and one object per metric with ``unit`` and
the statistics ``avg``/``p50``/``p90``/``p95``/``p99``/... (``JsonMetricResult``). AIPerf adds fields on a
minor bump and renames or removes one only with a schema bump; this reader knows major version 1 and refuses
any other with one line, rather than guessing what the numbers mean.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from deploy.errors import ExportError
from deploy.fsutil import read_json

#: the export schema majors this reader understands
KNOWN_MAJORS = (1,)
PERCENTILES = ("p50", "p90", "p95", "p99")

#: Every figure AIPerf exports is a count, a time or a rate: never negative (non-finite ones never parse).
_STAT = {"type": ["number", "null"], "minimum": 0}
_ERROR = {
    "type": "object",
    "properties": {
        "count": {"type": ["integer", "null"], "minimum": 0},
        "error_details": {
            "type": ["object", "null"],
            "properties": {"message": {"type": ["string", "null"]}},
        },
    },
}
_METRIC = {
    "type": "object",
    "required": ["unit"],
    "properties": {"unit": {"type": "string"}, "avg": _STAT, **{p: _STAT for p in PERCENTILES}},
}
EXPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version"],
    "properties": {
        "schema_version": {"type": "string"},
        "aiperf_version": {"type": ["string", "null"]},
        "request_count": _METRIC,
        "error_request_count": {"oneOf": [_METRIC, {"type": "null"}]},
        "time_to_first_token": _METRIC,
        "inter_token_latency": _METRIC,
        "request_latency": _METRIC,
        "output_token_throughput": _METRIC,
        "output_token_throughput_per_user": _METRIC,
        "request_throughput": _METRIC,
        "benchmark_duration": _METRIC,
        "output_sequence_length": _METRIC,
        "osl_mismatch_count": _METRIC,
        "input_sequence_length": _METRIC,
        "error_summary": {"type": ["array", "null"], "items": _ERROR},
        "was_cancelled": {"type": ["boolean", "null"]},
        "is_complete": {"type": ["boolean", "null"]},
    },
}


def check_schema_version(version: Any, source: str) -> str:
    """``version`` when its major is known, else :class:`ExportError` naming the file and the version."""
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", str(version)) if isinstance(version, str) else None
    if m is None or int(m.group(1)) not in KNOWN_MAJORS:
        known = ", ".join(f"{k}.x" for k in KNOWN_MAJORS)
        raise ExportError(
            f"{source}: AIPerf export schema_version {version!r} is not one this toolkit reads ({known}); "
            "use the pinned AIPerf (kimi-deploy engine install aiperf --force)"
        )
    return str(version)


def _stats(data: dict[str, Any], key: str, scale: float = 1.0) -> dict[str, float | None]:
    metric = data.get(key) or {}
    out: dict[str, float | None] = {}
    for stat in ("avg", *PERCENTILES):
        value = metric.get(stat)
        out[stat] = None if value is None else round(float(value) * scale, 3)
    return out


def _avg(data: dict[str, Any], key: str) -> float | None:
    value = (data.get(key) or {}).get("avg")
    return None if value is None else float(value)


def point_from_export(data: Any, concurrency: int, source: str = "<export>") -> dict[str, Any]:
    """One concurrency point of the report from a parsed export (validated first)."""
    if not isinstance(data, dict):
        raise ExportError(f"{source}: expected a JSON object")
    version = check_schema_version(data.get("schema_version"), source)
    try:
        jsonschema.validate(data, EXPORT_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ExportError(f"{source}: {where}: {exc.message}") from None
    ok = int(_avg(data, "request_count") or 0)
    errors = int(_avg(data, "error_request_count") or 0)
    summary = [
        {
            "count": int(e.get("count") or 0),
            "error": str((e.get("error_details") or {}).get("message") or e)[:200],
        }
        for e in data.get("error_summary") or []
        if isinstance(e, dict)
    ]
    errors = max(errors, sum(e["count"] for e in summary))
    return {
        "concurrency": concurrency,
        "requests": ok,
        "errors": errors,
        "ttft_ms": _stats(data, "time_to_first_token"),
        "itl_ms": _stats(data, "inter_token_latency"),
        "e2e_ms": _stats(data, "request_latency"),
        "output_tokens_per_s": _avg(data, "output_token_throughput"),
        "output_tokens_per_s_per_user": _stats(data, "output_token_throughput_per_user"),
        "requests_per_s": _avg(data, "request_throughput"),
        "duration_s": _avg(data, "benchmark_duration"),
        "input_tokens_mean": _avg(data, "input_sequence_length"),
        "output_tokens_mean": _avg(data, "output_sequence_length"),
        "short_outputs": int(_avg(data, "osl_mismatch_count") or 0),
        "error_summary": summary[:5],
        "complete": data.get("is_complete") is not False and not data.get("was_cancelled"),
        "start_time": data.get("start_time"),
        "end_time": data.get("end_time"),
        "schema_version": version,
    }


def read_export(path: str | Path, concurrency: int) -> dict[str, Any]:
    """Read ``profile_export_aiperf.json`` at ``path`` into a report point."""
    p = Path(path)
    try:
        data = read_json(p)
    except FileNotFoundError:
        raise ExportError(f"{p}: AIPerf wrote no summary export") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{p}: not valid JSON (line {exc.lineno})") from None
    return point_from_export(data, concurrency, str(p))


__all__ = ["EXPORT_SCHEMA", "ExportError", "check_schema_version", "point_from_export", "read_export"]
