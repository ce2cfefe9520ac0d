"""Sample sets in Moonshot's K2-Vendor-Verifier format: finish-reason counts and schema accuracy.

    >>> result, summary = run_tool_call_set(target, "samples.jsonl", concurrency=4)  # doctest: +SKIP
    >>> summary["finish_reasons"], summary["schema_accuracy"]  # doctest: +SKIP
    ({'tool_calls': 3}, 1.0)

One request body per line (``messages``, ``tools``, ``tool_choice``, sampling, ``stream``...); the
verifier's ``_input`` role is a system turn; a sample is known by its line number (the verifier's
``data_index``). Fields the OpenAI client does not know travel in ``extra_body``; a sample's mode switch
is rewritten into the target's dialect (Moonshot's ``thinking`` object or ``chat_template_kwargs``), and
where a provider fixes sampling, the card's values replace the sample's. Accuracy is the share of
``tool_calls`` answers whose arguments validate against their tool's JSON schema, as the verifier's
``tool_calls_eval.py`` computes it (``validate_tool_call``, ``compute_summary``:
``count_successful_tool_call / count_finish_reason_tool_calls``).
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import schema
from deploy.checking import providers
from deploy.checking.calls import create, error_reason
from deploy.checking.result import FAIL, PASS, CheckResult
from deploy.checking.shapes import assemble_stream, first_message, tool_schema, validate_arguments
from deploy.checking.target import CheckTarget
from deploy.errors import InputError

_CREATE_ARGS = {
    "messages",
    "model",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "response_format",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
}


@dataclass
class Sample:
    """One request of a sample file; ``index`` is its line number (the verifier's ``data_index``)."""

    index: int
    body: dict[str, Any]


def load_samples(path: str | Path, limit: int | None = None) -> list[Sample]:
    """Read a K2-Vendor-Verifier JSONL file: one chat request body per line (``_input`` is a system turn).

    Blank lines are skipped but still counted, so ``index`` is the line number as the verifier numbers it.
    """
    p = Path(path)
    # a regular file only (a FIFO never blocks), size-capped, UTF-8
    lines = schema.read_text(p, missing=f"{p}: tool-call sample file not found").splitlines()
    samples: list[Sample] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        body = schema.parse_json(line, f"{p}:{n}")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise InputError(f"{p}:{n}: expected a request body with a 'messages' list")
        if any(not isinstance(m, dict) for m in body["messages"]):
            raise InputError(f"{p}:{n}: every message must be an object")
        if not isinstance(body.get("tools", []), list):
            raise InputError(f"{p}:{n}: 'tools' must be a list")
        for m in body["messages"]:
            if m.get("role") == "_input":
                m["role"] = "system"
        samples.append(Sample(n, body))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise InputError(f"{p}: no requests")
    return samples


def load_tool_call_requests(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The request bodies of a sample file (see :func:`load_samples`)."""
    return [s.body for s in load_samples(path, limit)]


def prepare(target: CheckTarget, body: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    """The ``chat.completions.create`` keyword arguments for one sample, in the target's dialect."""
    body = providers.to_dialect(body, target.flavor)
    if providers.flavor(target.flavor).sampling_fixed:
        mode = "instant" if providers.requested_thinking(body) is False else "thinking"
        for key, value in (target.sampling.get(mode) or {}).items():
            if key in ("temperature", "top_p"):
                body[key] = float(value)
    req = {k: v for k, v in body.items() if k in _CREATE_ARGS}
    extra = {k: v for k, v in body.items() if k not in _CREATE_ARGS}
    req["model"] = target.model
    req.setdefault("max_tokens", max_tokens)
    if extra:
        req["extra_body"] = extra
    return req


def _ask(target: CheckTarget, body: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    req = prepare(target, body, max_tokens)
    try:
        result = create(target, req)
        if req.get("stream"):
            chunks = [event.model_dump() for event in result]
            target.meter.add_usage(next((c for c in chunks if c.get("usage")), None))
            payload = assemble_stream(chunks)
        else:
            payload = result.model_dump()
            target.meter.add_usage(payload)
        msg, finish = first_message(payload)
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "error": error_reason(exc, target), "finish_reason": None}
    out: dict[str, Any] = {"status": "success", "finish_reason": finish}
    if finish == "tool_calls":
        problems = []
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            schema = tool_schema(body.get("tools") or [], str(fn.get("name")))
            problem = (
                f"unknown tool {fn.get('name')!r}"
                if schema is None
                else validate_arguments(fn.get("arguments"), schema)
            )
            if problem:
                problems.append(problem)
        out["tool_calls_valid"] = bool(msg.get("tool_calls")) and not problems
        out["problems"] = problems
    return out


def run_samples(
    target: CheckTarget, samples: list[Sample], max_tokens: int = 512, workers: int | None = None
) -> dict[int, dict[str, Any]]:
    """Send every sample (at most ``workers``, by default the meter's concurrency, in flight); outcome per
    line number: ``status``, ``finish_reason``, ``tool_calls_valid`` (the verifier's fields), ``error``."""
    with ThreadPoolExecutor(max_workers=max(1, workers or target.meter.concurrency)) as pool:
        outcomes = list(pool.map(lambda s: _ask(target, s.body, max_tokens), samples))
    return {s.index: {"data_index": s.index, **o} for s, o in zip(samples, outcomes, strict=True)}


def schema_summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Finish-reason counts and schema accuracy of a set of outcomes, as the verifier summarises them.

    >>> schema_summary([{"status": "success", "finish_reason": "tool_calls", "tool_calls_valid": True},
    ...                 {"status": "success", "finish_reason": "stop"}])["schema_accuracy"]
    1.0
    """
    finish = Counter(str(o.get("finish_reason")) for o in outcomes if o.get("status") == "success")
    tool_finishes = [o for o in outcomes if o.get("finish_reason") == "tool_calls"]
    valid = sum(1 for o in tool_finishes if o.get("tool_calls_valid") is True)
    return {
        "requests": len(outcomes),
        "failed_requests": sum(1 for o in outcomes if o.get("status") != "success"),
        "finish_reasons": dict(finish),
        "tool_calls": len(tool_finishes),
        "schema_valid": valid,
        "schema_accuracy": round(valid / len(tool_finishes), 4) if tool_finishes else 0.0,
    }


def tool_call_set_result(
    outcomes: dict[int, dict[str, Any]], path: str | Path, threshold: float, seconds: float = 0.0
) -> tuple[CheckResult, dict[str, Any]]:
    """The ``tool_call_set`` verdict: schema accuracy of the ``tool_calls`` answers against ``threshold``."""
    listed = list(outcomes.values())
    summary = {
        "file": str(path),
        **schema_summary(listed),
        "threshold": threshold,
        "errors": [o["error"] for o in listed if o.get("status") != "success"][:5],
        "problems": [p for o in listed for p in o.get("problems", [])][:5],
    }
    n, tools, valid = summary["requests"], summary["tool_calls"], summary["schema_valid"]
    accuracy = summary["schema_accuracy"]
    if not tools:
        why = f"no request of {n} ended in tool_calls"
        if summary["failed_requests"]:
            why += f" ({summary['failed_requests']} failed: {summary['errors'][0]})"
        return CheckResult("tool_call_set", FAIL, why, seconds, summary), summary
    if accuracy < threshold:
        why = f"schema accuracy {accuracy:.1%} < {threshold:.0%} ({valid}/{tools})"
        return CheckResult("tool_call_set", FAIL, why, seconds, summary), summary
    why = (
        f"schema accuracy {accuracy:.1%} >= {threshold:.0%} ({valid}/{tools}); "
        f"finish reasons {summary['finish_reasons']}"
    )
    return CheckResult("tool_call_set", PASS, why, seconds, summary), summary


def check_threshold(name: str, value: float) -> None:
    if not 0.0 < value <= 1.0:
        raise InputError(f"{name} must be in (0, 1] (got {value})")


def run_tool_call_set(
    target: CheckTarget,
    path: str | Path,
    concurrency: int = 4,
    threshold: float = 0.95,
    limit: int | None = 50,
    max_tokens: int = 512,
) -> tuple[CheckResult, dict[str, Any]]:
    """Send each request of a K2-Vendor-Verifier sample file; report finish-reason counts and the share of
    ``tool_calls`` answers whose arguments validate against their tool's schema (vs ``threshold``)."""
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1 (got {concurrency})")
    check_threshold("--threshold", threshold)
    samples = load_samples(path, limit)
    t0 = time.monotonic()
    outcomes = run_samples(target, samples, max_tokens, workers=concurrency)
    return tool_call_set_result(outcomes, path, threshold, time.monotonic() - t0)
