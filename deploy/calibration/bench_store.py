"""Measured serving points: `bench` results of an exact candidate, kept beside the start-up records.

    >>> from deploy.calibration.bench_store import load_bench_records
    >>> isinstance(load_bench_records(), list)
    True

File: ``KIMI_DEPLOY_CACHE/calibration/bench.json`` = ``{"schema": 1, "records": [<record>, ...]}``; a record
is one workload shape of one bench report, keyed by what makes a candidate (model, engine, variant, layout,
GPU and GPU count)::

    {"model", "engine", "variant", "layout", "gpu", "gpus", "nodes", "candidate", "isl", "osl",
     "points": [{"concurrency", "requests", "errors", "output_tokens_per_s", "requests_per_s",
                 "ttft_ms": {"p50", "p95", ...}, "itl_ms": {...}}],
     "source", "recorded_at"}

`kimi-deploy capacity` uses these first (deploy/planning/capacity.py). Writes lock, re-read, append and
replace the file atomically, as the start-up store does.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.errors import CalibrationError
from deploy.fsutil import atomic_write_json
from deploy.schema import parse_json, read_text, validate

SCHEMA_VERSION = 1
#: records kept per (candidate key, shape): the newest
MAX_PER_KEY = 10

_PCTS = {"type": ["object", "null"], "additionalProperties": {"type": ["number", "null"]}}
POINT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["concurrency", "output_tokens_per_s", "requests_per_s"],
    "properties": {
        "concurrency": {"type": "integer", "minimum": 1},
        "requests": {"type": ["integer", "null"], "minimum": 0},
        "errors": {"type": ["integer", "null"], "minimum": 0},
        "output_tokens_per_s": {"type": ["number", "null"], "minimum": 0},
        "requests_per_s": {"type": ["number", "null"], "minimum": 0},
        "ttft_ms": _PCTS,
        "itl_ms": _PCTS,
        "e2e_ms": _PCTS,
    },
}
BENCH_RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "engine", "variant", "layout", "gpu", "gpus", "nodes", "isl", "osl", "points"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "engine": {"type": "string", "minLength": 1},
        "variant": {"type": "string", "minLength": 1},
        "layout": {"type": "string", "minLength": 1},
        "gpu": {"type": "string", "minLength": 1},
        "gpus": {"type": "integer", "minimum": 0},
        "nodes": {"type": "integer", "minimum": 1},
        "candidate": {"type": "string"},
        "isl": {"type": "integer", "minimum": 1},
        "osl": {"type": "integer", "minimum": 1},
        "points": {"type": "array", "minItems": 1, "items": POINT_SCHEMA},
        "source": {"type": "string"},
        "recorded_at": {"type": "string"},
    },
}
STORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "records"],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "records": {"type": "array", "items": BENCH_RECORD_SCHEMA},
    },
}
KEY_FIELDS = ("model", "engine", "variant", "layout", "gpu", "gpus", "nodes")
_POINT_KEYS = (
    "concurrency",
    "requests",
    "errors",
    "output_tokens_per_s",
    "requests_per_s",
    "ttft_ms",
    "itl_ms",
)


def bench_store_path() -> Path:
    """Where the measured serving points live (read at call time, so a test's KIMI_DEPLOY_CACHE counts)."""
    return constants.CALIBRATION_DIR / "bench.json"


def candidate_key(r: dict[str, Any]) -> tuple:
    """What makes two records about the same candidate."""
    return tuple(r[k] for k in KEY_FIELDS)


def load_bench_records(path: Path | None = None) -> list[dict[str, Any]]:
    """Every measured record (empty when there is none yet)."""
    path = path or bench_store_path()
    if not path.exists():
        return []
    data = parse_json(read_text(path, CalibrationError), str(path), CalibrationError)
    validate(data, STORE_SCHEMA, f"{path} (bench store; move it away to start afresh)", CalibrationError)
    return list(data["records"])


def records_from_report(report: dict[str, Any], key: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """One record per workload shape of a bench report, for the candidate ``key`` (KEY_FIELDS + candidate).
    Points that ran no request are left out; a shape with none left gives no record."""
    if not isinstance(report, dict) or not isinstance(report.get("points"), list):
        raise CalibrationError(f"{source}: not a `kimi-deploy bench` report (no points list)")
    shapes: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for p in report["points"]:
        if not isinstance(p, dict) or not p.get("requests") or not p.get("output_tokens_per_s"):
            continue
        point = {k: p.get(k) for k in _POINT_KEYS}
        shapes.setdefault((int(p.get("isl") or 0), int(p.get("osl") or 0)), []).append(point)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = []
    for (isl, osl), points in sorted(shapes.items()):
        record = {**key, "isl": isl, "osl": osl, "points": points, "source": source, "recorded_at": now}
        validate(record, BENCH_RECORD_SCHEMA, f"{source}: bench record", CalibrationError)
        out.append(record)
    if not out:
        raise CalibrationError(f"{source}: the report has no point that served a request")
    return out


def add_bench_records(records: list[dict[str, Any]], path: Path | None = None) -> Path:
    """Append ``records`` atomically under a lock, keeping the newest MAX_PER_KEY per key and shape."""
    path = path or bench_store_path()
    for r in records:
        validate(r, BENCH_RECORD_SCHEMA, "bench record", CalibrationError)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".bench.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            kept = load_bench_records(path) + records
            counts: dict[tuple, int] = {}
            out = []
            for r in reversed(kept):
                k = (*candidate_key(r), r["isl"], r["osl"])
                counts[k] = counts.get(k, 0) + 1
                if counts[k] <= MAX_PER_KEY:
                    out.append(r)
            atomic_write_json(path, {"schema": SCHEMA_VERSION, "records": list(reversed(out))})
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


__all__ = [
    "BENCH_RECORD_SCHEMA",
    "add_bench_records",
    "bench_store_path",
    "candidate_key",
    "load_bench_records",
    "records_from_report",
]
