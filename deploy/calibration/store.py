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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema

from deploy import constants
from deploy.engines import registry
from deploy.errors import CalibrationError
from deploy.fsutil import atomic_write_json
from deploy.schema import parse_json, read_text, validate

SCHEMA_VERSION = 1
#: Records kept per key (the newest); older ones are dropped on write.
MAX_PER_KEY = 20

_NUM_OR_NULL = {"type": ["number", "null"], "minimum": 0}
_FIGURES = {
    "type": "object",
    "properties": {
        "kv_cache_tokens": {"type": ["integer", "null"], "minimum": 0},
        "kv_cache_gib": _NUM_OR_NULL,
        "weights_gib_per_gpu": _NUM_OR_NULL,
        "weights_gib_host": _NUM_OR_NULL,
        "load_s": _NUM_OR_NULL,
    },
    "required": ["kv_cache_tokens", "weights_gib_per_gpu", "load_s"],
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
                "gpu_memory_utilization": _NUM_OR_NULL,
                "kv_cache_dtype": {"type": "string"},
                "max_model_len": {"type": "integer", "minimum": 0},
            },
            "required": ["gpu_memory_utilization", "kv_cache_dtype", "max_model_len"],
        },
        "predicted": _FIGURES,
        "measured": _FIGURES,
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
STORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "records": {"type": "array", "items": RECORD_SCHEMA},
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
    try:
        jsonschema.validate(record, RECORD_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise CalibrationError(f"{source}: invalid calibration record at {where}: {exc.message}") from None
    return record


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = read_text(path, CalibrationError)
    data = parse_json(text, str(path), CalibrationError)
    validate(
        data, STORE_SCHEMA, f"{path} (calibration store; move it away to start afresh)", CalibrationError
    )
    return list(data["records"])


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
        records = _read(path) + [record]
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
