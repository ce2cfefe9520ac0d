"""The calibration store: one JSON file of records, predicted against measured, under the cache.

    >>> from deploy.calibration.store import load_records
    >>> isinstance(load_records(), list)
    True

File: ``KIMI_DEPLOY_CACHE/calibration/records.json`` (``KIMI_DEPLOY_CALIBRATION_DIR`` moves the
folder) = ``{"schema": 1, "records": [<record>, ...]}``.
A record::

    {"model", "engine", "engine_version", "gpu", "layout", "variant", "candidate",
     "knobs": {"gpu_memory_utilization", "kv_cache_dtype", "max_model_len", "tensor_parallel",
               "pipeline_parallel", "data_parallel", "decode_context_parallel", "placement",
               "cpu_kvcache_space_gib"},
     "predicted": {"kv_cache_tokens", "kv_cache_gib", "weights_gib_per_gpu", "weights_gib_host", "load_s"},
     "measured":  {same keys, from the start-up log},
     "source", "recorded_at"}

Every read is validated against RECORD_SCHEMA; every write takes a lock, re-reads, appends and replaces
the file atomically (temp + fsync + rename), so the store is never half-written.
"""

from __future__ import annotations

import fcntl
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema

from deploy import constants, schema
from deploy.engines import registry
from deploy.errors import CalibrationError
from deploy.fsutil import MAX_INT_DIGITS, atomic_write_json
from deploy.schema import read_text, validate

SCHEMA_VERSION = 1
#: Records kept per key (the newest); older ones are dropped on write.
MAX_PER_KEY = 20

_NUM_OR_NULL = {"type": ["number", "null"], "minimum": 0}


def _upto(maximum: float, kind: str = "number") -> dict[str, Any]:
    return {"type": [kind, "null"], "minimum": 0, "maximum": maximum}


#: Plausible ceilings, from what each figure measures: no GPU holds 1 TiB, no host 64 TiB, no start
#: takes a week, and 2^40 KV tokens is a thousand times the largest pool any engine reports.
MAX_GIB_PER_GPU = 1024
MAX_GIB_HOST = 64 * 1024
MAX_LOAD_S = 7 * 24 * 3600
MAX_KV_TOKENS = 2**40
_FIGURES = {
    "type": "object",
    "properties": {
        "kv_cache_tokens": _upto(MAX_KV_TOKENS, "integer"),
        "kv_cache_gib": _upto(MAX_GIB_HOST),
        "weights_gib_per_gpu": _upto(MAX_GIB_PER_GPU),
        "weights_gib_host": _upto(MAX_GIB_HOST),
        "load_s": _upto(MAX_LOAD_S),
    },
    "required": ["kv_cache_tokens", "weights_gib_per_gpu", "load_s"],
}
#: What a start-up log measured: a KV pool of zero tokens is a parse error, not a measurement.
_MEASURED = {
    **_FIGURES,
    "properties": {
        **_FIGURES["properties"],
        "kv_cache_tokens": {**_upto(MAX_KV_TOKENS, "integer"), "minimum": 1},
    },
}
RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "engine": {"enum": registry.names()},
        "engine_version": {"type": "string", "minLength": 1},
        "gpu": {"type": "string", "minLength": 1},
        "layout": {"type": "string", "minLength": 1},
        "variant": {"type": "string", "minLength": 1},
        "candidate": {"type": "string"},
        "knobs": {
            "type": "object",
            "properties": {
                "gpu_memory_utilization": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "kv_cache_dtype": {"type": "string"},
                "max_model_len": {"type": "integer", "minimum": 0, "maximum": MAX_KV_TOKENS},
            },
            "required": ["gpu_memory_utilization", "kv_cache_dtype", "max_model_len"],
        },
        "predicted": _FIGURES,
        "measured": _MEASURED,
        "source": {"type": "string"},
        "recorded_at": {"type": "string"},
    },
    "required": [
        "model",
        "engine",
        "engine_version",
        "gpu",
        "layout",
        "variant",
        "knobs",
        "predicted",
        "measured",
    ],
}
#: The envelope only: each record is checked on its own, so one bad record is skipped, not fatal.
STORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "records": {"type": "array"},
    },
    "required": ["schema", "records"],
}


def store_path() -> Path:
    """Where the records live (read at call time, so KIMI_DEPLOY_CACHE set by a test is honoured)."""
    return constants.CALIBRATION_DIR / "records.json"


def record_key(r: dict[str, Any]) -> tuple:
    """What makes two records about the same start: model, engine + version, GPU, layout, variant and the
    knobs that change memory (KV dtype; utilisation and context are scaled, not keyed)."""
    return (
        r["model"],
        r["engine"],
        r["engine_version"],
        r["gpu"],
        r["layout"],
        r["variant"],
        r["knobs"].get("kv_cache_dtype"),
    )


def validate_record(record: Any, source: str = "record") -> dict[str, Any]:
    """The record if it matches RECORD_SCHEMA, else CalibrationError naming the first problem."""
    if not schema.finite(record):
        # NaN passes every minimum/maximum comparison, so the schema alone would let it through
        raise CalibrationError(f"{source}: NaN, infinity or a huge number in a calibration record")
    try:
        jsonschema.validate(record, RECORD_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise CalibrationError(f"{source}: invalid calibration record at {where}: {exc.message}") from None
    return record


def _lenient(text: str, source: str) -> Any:
    """The store as JSON, where a non-finite or huge number becomes NaN (its record is then skipped)
    instead of making the whole file unreadable: a store written before the writer refused them, or
    edited by hand, keeps its good records."""
    if not schema.depth_ok(text):
        raise CalibrationError(f"{source}: nested more than {schema.MAX_DEPTH} levels deep")
    nan = float("nan")
    try:
        return json.loads(
            text,
            parse_constant=lambda _name: nan,
            parse_float=lambda t: v if math.isfinite(v := float(t)) else nan,
            parse_int=lambda t: nan if len(t.lstrip("-")) > MAX_INT_DIGITS else int(t),
        )
    except (ValueError, RecursionError) as exc:
        raise CalibrationError(f"{source}: not valid JSON ({str(exc)[:120]})") from None


def quarantine_path(path: Path) -> Path:
    """Where records a write found invalid are moved (one JSON line each), so a rewrite never loses them."""
    return path.with_name(path.stem + ".quarantine.jsonl")


def _read(path: Path, skipped: list[Any] | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = read_text(path, CalibrationError)
    data = _lenient(text, str(path))
    validate(
        data, STORE_SCHEMA, f"{path} (calibration store; move it away to start afresh)", CalibrationError
    )
    kept = []
    for n, record in enumerate(data["records"]):
        try:
            kept.append(validate_record(record, f"{path}: record {n}"))
        except CalibrationError as exc:
            print(f"warning: {exc}; skipped", file=sys.stderr)
            if skipped is not None:
                skipped.append(record)
    return kept


def load_records(path: Path | None = None) -> list[dict[str, Any]]:
    """Every record in the store (empty when there is none yet)."""
    return _read(path or store_path())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".records.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def add_record(record: dict[str, Any], path: Path | None = None) -> Path:
    """Validate ``record`` and append it (atomically, under a lock); keep the newest MAX_PER_KEY per key."""
    validate_record(record)
    path = path or store_path()
    with _locked(path):
        skipped: list[Any] = []
        records = _read(path, skipped) + [record]
        if skipped:
            with open(quarantine_path(path), "a", encoding="utf-8") as out:
                out.writelines(json.dumps(r) + "\n" for r in skipped)
            print(
                f"warning: moved {len(skipped)} invalid record(s) to {quarantine_path(path)}", file=sys.stderr
            )
        key = record_key(record)
        same = [i for i, r in enumerate(records) if record_key(r) == key]
        drop = set(same[:-MAX_PER_KEY])
        kept = [r for i, r in enumerate(records) if i not in drop]
        atomic_write_json(path, {"schema": SCHEMA_VERSION, "records": kept})
    return path


__all__ = [
    "RECORD_SCHEMA",
    "add_record",
    "load_records",
    "record_key",
    "store_path",
    "validate_record",
]
