"""Tool-call trigger F1 against a reference endpoint, as MoonshotAI/K2-Vendor-Verifier defines it.

    >>> ok = lambda finish: {"status": "success", "finish_reason": finish}
    >>> s = trigger_stats({1: ok("tool_calls"), 2: ok("tool_calls")}, {1: ok("tool_calls"), 2: ok("stop")})
    >>> (s["tp"], s["fp"], s["fn"], s["tn"]), s["precision"], s["recall"], round(s["f1"], 4)
    ((1, 1, 0, 0), 0.5, 1.0, 0.6667)

Definitions (the verifier's README, "Evaluation Metrics" / "ToolCall-Trigger Similarity"): per sample,
TP when both the endpoint and the reference end with ``finish_reason == "tool_calls"``; FP when only the
endpoint does; FN when only the reference does; TN when neither does. ``tool_call_precision`` =
TP / (TP + FP), ``tool_call_recall`` = TP / (TP + FN), ``tool_call_f1`` their harmonic mean. Moonshot's
bars: F1 >= 73% for K2-Thinking, >= 80% for K2-0905 (the official API's own lowest scores over reruns
were 75.81% and 82.71%).

Our choices where the README is silent, stated in the report: a sample whose reference request failed
or is missing is left out (there is no ground truth for it); a sample whose endpoint request failed
counts as "not tool_calls" (an endpoint that errors must not score better than one that answers).

Recorded reference answers (``--reference-results``) are the verifier's ``results.jsonl``: one JSON object
per line with ``data_index`` (the sample's line number), ``status``, ``finish_reason``,
``tool_calls_valid`` and the ``request``/``response`` it sent and got (``tool_calls_eval.py``,
``process_request``). Each line is validated against :data:`RESULT_SCHEMA`; a recorded request whose
messages differ from the sample on that line means the two files do not belong together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from deploy.checking.result import FAIL, PASS, CheckResult
from deploy.checking.toolset import Sample, schema_summary
from deploy.errors import InputError
from deploy.fsutil import loads_strict

#: One line of the verifier's results.jsonl, as far as the F1 needs it (other fields are allowed).
RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data_index", "finish_reason"],
    "properties": {
        "data_index": {"type": "integer", "minimum": 1},
        "status": {"type": "string"},
        "finish_reason": {"type": ["string", "null"]},
        "tool_calls_valid": {"type": ["boolean", "null"]},
        "request": {"type": ["object", "null"]},
        "response": {"type": ["object", "null"]},
    },
}


def load_reference_results(path: str | Path, samples: list[Sample]) -> dict[int, dict[str, Any]]:
    """Recorded reference answers for ``samples``, by line number (lines for other samples are ignored).

    >>> load_reference_results("results.jsonl", load_samples("samples.jsonl"))  # doctest: +SKIP
    {1: {'data_index': 1, 'status': 'success', 'finish_reason': 'tool_calls', ...}, ...}
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{p}: reference results file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read the reference results ({exc.__class__.__name__})") from None
    by_index = {s.index: s for s in samples}
    validator = jsonschema.Draft202012Validator(RESULT_SCHEMA)
    out: dict[int, dict[str, Any]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = loads_strict(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{n}: not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{p}:{n}: not valid JSON ({exc})") from None
        error = next(iter(validator.iter_errors(rec)), None)
        if error is not None:
            where = "/".join(str(x) for x in error.absolute_path) or "line"
            raise InputError(f"{p}:{n}: {where}: {error.message} (expected the verifier's results.jsonl)")
        sample = by_index.get(rec["data_index"])
        if sample is None:
            continue
        recorded = (rec.get("request") or {}).get("messages")
        if recorded is not None and recorded != sample.body["messages"]:
            raise InputError(
                f"{p}:{n}: data_index {rec['data_index']} was recorded for other messages than line "
                f"{sample.index} of the sample file (are the two files from the same set?)"
            )
        status = rec.get("status") or ("success" if rec["finish_reason"] else "failed")
        out[sample.index] = {
            "data_index": sample.index,
            "status": status,
            "finish_reason": rec["finish_reason"],
            "tool_calls_valid": rec.get("tool_calls_valid"),
        }
    if not out:
        raise InputError(f"{p}: no result matches a line of the sample file (data_index = line number)")
    return out


def trigger_stats(
    candidate: dict[int, dict[str, Any]], reference: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """TP/FP/FN/TN, precision, recall and F1 of "finish_reason is tool_calls" against the reference."""
    tp = fp = fn = tn = 0
    left_out = candidate_failed = 0
    for index, cand in candidate.items():
        ref = reference.get(index)
        if ref is None or ref.get("status") != "success":
            left_out += 1
            continue
        if cand.get("status") != "success":
            candidate_failed += 1
        got = cand.get("status") == "success" and cand.get("finish_reason") == "tool_calls"
        want = ref.get("finish_reason") == "tool_calls"
        tp += got and want
        fp += got and not want
        fn += want and not got
        tn += not got and not want
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "compared": tp + fp + fn + tn,
        "left_out_no_reference": left_out,
        "candidate_failed": candidate_failed,
        "precision": precision,
        "recall": recall,
        "f1": f1 if tp + fp + fn else None,
    }


def f1_result(
    candidate: dict[int, dict[str, Any]],
    reference: dict[int, dict[str, Any]],
    threshold: float,
    reference_source: str,
    seconds: float = 0.0,
) -> tuple[CheckResult, dict[str, Any]]:
    """The ``tool_call_f1`` verdict, and the summary the report keeps (both sides' schema accuracy too)."""
    stats = trigger_stats(candidate, reference)
    ref_outcomes = [reference[i] for i in candidate if i in reference]
    summary = {
        "reference": reference_source,
        **stats,
        "threshold": threshold,
        "candidate_schema": schema_summary(list(candidate.values())),
        "reference_schema": schema_summary(ref_outcomes),
        "reference_errors": [r.get("error") for r in ref_outcomes if r.get("error")][:3],
    }
    counts = f"TP {stats['tp']}, FP {stats['fp']}, FN {stats['fn']}, TN {stats['tn']}"
    if stats["compared"] == 0:
        why = f"no sample has a successful reference answer ({reference_source})"
        if summary["reference_errors"]:
            why += f": {summary['reference_errors'][0]}"
        return CheckResult("tool_call_f1", FAIL, why, seconds, summary), summary
    if stats["f1"] is None:
        why = f"neither side called a tool on {stats['compared']} samples: F1 undefined ({counts})"
        return CheckResult("tool_call_f1", FAIL, why, seconds, summary), summary
    f1 = stats["f1"]
    rel = ">=" if f1 >= threshold else "<"
    why = (
        f"trigger F1 {f1:.1%} {rel} {threshold:.0%} vs {reference_source} ({counts}; "
        f"precision {stats['precision']:.1%}, recall {stats['recall']:.1%})"
    )
    return CheckResult("tool_call_f1", PASS if f1 >= threshold else FAIL, why, seconds, summary), summary
