"""Sample sets in Moonshot's K2-Vendor-Verifier format: finish-reason counts and schema accuracy.

    >>> result, summary = run_tool_call_set(target, "samples.jsonl", concurrency=4)  # doctest: +SKIP
    >>> summary["finish_reasons"], summary["schema_accuracy"]  # doctest: +SKIP
    ({'tool_calls': 3}, 1.0)

One request body per line (``messages``, ``tools``, ``tool_choice``, sampling, ``stream``...); the
verifier's ``_input`` role is a system turn. Fields the OpenAI client does not know travel in
``extra_body``. Accuracy is the share of ``tool_calls`` answers whose arguments validate against their
tool's JSON schema, as the verifier computes it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deploy.checking.calls import client, error_reason
from deploy.checking.result import FAIL, PASS, CheckResult
from deploy.checking.shapes import assemble_stream, first_message, tool_schema, validate_arguments
from deploy.checking.target import Target
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


def load_tool_call_requests(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read a K2-Vendor-Verifier JSONL file: one chat request body per line (``_input`` is a system turn)."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{p}: tool-call sample file not found") from None
    requests_: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise InputError(f"{p}:{n}: expected a request body with a 'messages' list")
        for m in body["messages"]:
            if m.get("role") == "_input":
                m["role"] = "system"
        requests_.append(body)
        if limit is not None and len(requests_) >= limit:
            break
    if not requests_:
        raise InputError(f"{p}: no requests")
    return requests_


def _one_sample(target: Target, body: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    req = {k: v for k, v in body.items() if k in _CREATE_ARGS}
    extra = {k: v for k, v in body.items() if k not in _CREATE_ARGS}
    req["model"] = target.model
    req.setdefault("max_tokens", max_tokens)
    if extra:
        req["extra_body"] = extra
    try:
        result = client(target).chat.completions.create(**req)
        if req.get("stream"):
            payload = assemble_stream(event.model_dump() for event in result)
        else:
            payload = result.model_dump()
        msg, finish = first_message(payload)
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "error": error_reason(exc), "finish_reason": None}
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
        out["valid"] = bool(msg.get("tool_calls")) and not problems
        out["problems"] = problems
    return out


def run_tool_call_set(
    target: Target,
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
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold must be in (0, 1] (got {threshold})")
    bodies = load_tool_call_requests(path, limit)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(lambda b: _one_sample(target, b, max_tokens), bodies))
    dt = time.monotonic() - t0
    finish = Counter(str(o["finish_reason"]) for o in outcomes if o["status"] == "success")
    failed = sum(1 for o in outcomes if o["status"] != "success")
    tool_finishes = [o for o in outcomes if o.get("finish_reason") == "tool_calls"]
    valid = sum(1 for o in tool_finishes if o.get("valid"))
    accuracy = valid / len(tool_finishes) if tool_finishes else 0.0
    summary = {
        "file": str(path),
        "requests": len(bodies),
        "failed_requests": failed,
        "finish_reasons": dict(finish),
        "tool_calls": len(tool_finishes),
        "schema_valid": valid,
        "schema_accuracy": round(accuracy, 4),
        "threshold": threshold,
        "errors": [o["error"] for o in outcomes if o["status"] != "success"][:5],
        "problems": [p for o in tool_finishes for p in o.get("problems", [])][:5],
    }
    if not tool_finishes:
        result = CheckResult(
            "tool_call_set", FAIL, f"no request of {len(bodies)} ended in tool_calls", dt, summary
        )
    elif accuracy < threshold:
        result = CheckResult(
            "tool_call_set",
            FAIL,
            f"schema accuracy {accuracy:.1%} < {threshold:.0%} ({valid}/{len(tool_finishes)})",
            dt,
            summary,
        )
    else:
        result = CheckResult(
            "tool_call_set",
            PASS,
            f"schema accuracy {accuracy:.1%} >= {threshold:.0%} ({valid}/{len(tool_finishes)}); "
            f"finish reasons {dict(finish)}",
            dt,
            summary,
        )
    return result, summary
