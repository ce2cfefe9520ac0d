"""After a start: read the engine's own start-up lines, compare them with the plan, record the result.

    >>> from deploy.serving.calibration import record_start
    >>> # record_start(plan, candidate, log_text, ready_s=41.3, source="up node ci") -> summary dict

The summary goes into `up`'s output, the node's pidfile (so `status --json` shows it) and, as a record, the
calibration store under KIMI_DEPLOY_CACHE, which the next `plan` applies. A log the parsers cannot read
(an engine build that prints other lines) is reported in the summary and never fails the start.
"""

from __future__ import annotations

from typing import Any

from deploy.calibration.logs import parse_startup_log
from deploy.calibration.store import add_record
from deploy.errors import CalibrationError
from deploy.planning.calibrated import record_from_start
from deploy.planning.contract import Candidate, Plan


def record_start(
    plan: Plan, candidate: Candidate, log_text: str, ready_s: float, source: str
) -> dict[str, Any]:
    """Parse ``log_text``, store predicted against measured, and return the summary (``recorded`` False
    with ``error`` when the log had no usable start-up lines or the store could not be written)."""
    try:
        facts = parse_startup_log(log_text, candidate.engine, source)
        record = record_from_start(plan, candidate, facts, source, load_s=ready_s)
        path = add_record(record)
    except CalibrationError as exc:
        return {"recorded": False, "error": str(exc)}
    except OSError as exc:
        return {"recorded": False, "error": f"the calibration store could not be written ({exc.strerror})"}
    return {
        "recorded": True,
        "store": str(path),
        "engine_version": record["engine_version"],
        "predicted": record["predicted"],
        "measured": record["measured"],
    }


def describe(summary: dict[str, Any]) -> str:
    """One line for `up`'s output.

    >>> describe({"recorded": False, "error": "x: truncated"})
    'calibration: not recorded (x: truncated)'
    """
    if not summary.get("recorded"):
        return f"calibration: not recorded ({summary.get('error')})"
    p, m = summary["predicted"], summary["measured"]
    parts = [f"KV {_n(m['kv_cache_tokens'])} tokens measured / {_n(p['kv_cache_tokens'])} predicted"]
    for key, label in (("weights_gib_per_gpu", "weights/GPU"), ("weights_gib_host", "weights in RAM")):
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]:.3f} GiB measured / {_n(p.get(key))} predicted")
    if m.get("load_s") is not None:
        parts.append(f"ready in {m['load_s']:.1f} s / {_n(p.get('load_s'))} s predicted")
    return "calibration: " + "; ".join(parts) + f" (recorded in {summary['store']})"


def _n(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"


__all__ = ["describe", "record_start"]
