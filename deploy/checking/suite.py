"""The conformance suite: does a served model answer the way a client of Kimi-K2.5 expects?

    >>> from deploy.checking.suite import target_from_url, run_checks
    >>> target = target_from_url("http://127.0.0.1:8001", "demo", flavor="llama.cpp")  # doctest: +SKIP
    >>> report = run_checks(target)  # doctest: +SKIP
    >>> report.ok, [(r.name, r.status) for r in report.results]  # doctest: +SKIP
    (True, [('liveness', 'pass'), ('models', 'pass'), ...])

Checks, in order: liveness, rpc_workers (only when the plan spreads llama.cpp over RPC workers), models,
instant, thinking, tool_call, streaming, vision, metrics. Each passes, fails, or is skipped; a skip comes only
from what the model or plan declares (catalog capabilities, the plan's engine arguments), never from an
error. When the server is not live, or an RPC worker is unreachable, the rest fail as not run (a request to
a llama-server that lost a worker would only abort it).
The pieces: targets (deploy.checking.target), requests (deploy.checking.calls), response shapes
(deploy.checking.shapes), verdicts and the table (deploy.checking.result), K2-Vendor-Verifier sample sets
(deploy.checking.toolset).
"""

from __future__ import annotations

import difflib
import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import requests

from deploy.checking import bounded, providers, sampling
from deploy.checking.calls import (
    QUESTIONS,
    WEATHER_TOOL,
    chat_request,
    complete,
    create,
    error_reason,
    headers,
)
from deploy.checking.result import FAIL, PASS, SKIP, CheckReport, CheckResult, render_table
from deploy.checking.sampling import check_sampling
from deploy.checking.shapes import (
    ID_RULE_GENERIC,
    ID_RULE_KIMI,
    assemble_stream,
    first_message,
    reasoning_text,
    validate_instant,
    validate_thinking,
    validate_tool_call,
)
from deploy.checking.target import (
    FLAVORS,
    CheckTarget,
    require_key,
    target_from_plan,
    target_from_rendered,
    target_from_url,
)
from deploy.checking.toolset import run_tool_call_set
from deploy.engines import registry
from deploy.errors import InputError
from deploy.secrets import redact
from deploy.serving import readiness

__all__ = [
    "CHECKS",
    "DEFAULT_SAMPLES",
    "GATES",
    "FAIL",
    "FLAVORS",
    "ID_RULE_GENERIC",
    "ID_RULE_KIMI",
    "PASS",
    "SKIP",
    "THRESHOLDS",
    "WEATHER_TOOL",
    "CheckReport",
    "CheckResult",
    "CheckTarget",
    "render_table",
    "require_key",
    "check_samples",
    "run_checks",
    "run_tool_call_set",
    "sampled",
    "target_from_plan",
    "target_from_rendered",
    "target_from_url",
]


def _models_path(target: CheckTarget) -> str:
    """``/v1/models``, ``/api/ai/models``...: the models route as the report names it."""
    return f"{urlsplit(target.api_base).path}/models"


def _http_failure(target: CheckTarget, what: str, r: requests.Response) -> str:
    """One line for a non-200 answer: status, what it means here, the start of the body (key redacted)."""
    from deploy.checking.calls import status_hint

    body = redact(r.text[:160].replace("\n", " "), [target.api_key])
    return f"{what} {r.status_code}{status_hint(r.status_code, target)}: {body}"


def _list_models(target: CheckTarget) -> requests.Response:
    """GET {base}/models with the key; a 429 is waited out as chat requests are (the meter's bound)."""
    attempt = 0
    while True:
        r = bounded.get(
            f"{target.api_base}/models", headers=headers(target), timeout_s=min(target.timeout_s, 10.0)
        )
        if r.status_code != 429 or target.meter.backoff(r.headers.get("Retry-After"), attempt) is None:
            return r
        attempt += 1


def _liveness_by_models(target: CheckTarget, t0: float, why: str) -> CheckResult:
    what = f"GET {_models_path(target)}"
    try:
        m = _list_models(target)
    except requests.RequestException as exc:
        return CheckResult(
            "liveness", FAIL, f"{why}; {what}: {error_reason(exc, target)}", time.monotonic() - t0
        )
    dt = time.monotonic() - t0
    if m.status_code == 200:
        return CheckResult("liveness", PASS, f"{why}; {what} 200", dt)
    return CheckResult("liveness", FAIL, f"{why}; {_http_failure(target, what, m)}", dt)


def check_liveness(target: CheckTarget) -> CheckResult:
    """GET /health with the engine's semantics; a hosted API (no /health) answers an authenticated
    GET {base}/models."""
    t0 = time.monotonic()
    if target.hosted:
        return _liveness_by_models(target, t0, f"hosted API ({target.flavor}; no /health)")
    url = f"{target.base_url}/health"
    try:
        r = bounded.get(url, headers=headers(target), timeout_s=min(target.timeout_s, 10.0))
    except requests.ConnectionError:
        eng = registry.find(target.flavor)
        refuses = eng is not None and not eng.health.answers_while_loading
        hint = f" ({eng.display_name} does not answer until the model is loaded)" if refuses and eng else ""
        return CheckResult("liveness", FAIL, f"nothing answers at {url}{hint}", time.monotonic() - t0)
    except requests.RequestException as exc:
        return CheckResult("liveness", FAIL, error_reason(exc, target), time.monotonic() - t0)
    dt = time.monotonic() - t0
    if r.status_code == 200:
        return CheckResult("liveness", PASS, f"GET /health 200 ({target.flavor})", dt)
    if r.status_code == 503:
        meaning = {
            "llama.cpp": "llama-server is still loading the model",
            "sglang": "SGLang is still warming up (or its health generation failed)",
            "ktransformers": "SGLang/KTransformers is still warming up",
            "vllm": "vLLM's engine has died",
        }.get(target.flavor, "the server is not ready")
        return CheckResult("liveness", FAIL, f"GET /health 503: {meaning}", dt, {"body": r.text[:200]})
    if r.status_code in (404, 405):
        return _liveness_by_models(target, t0, f"no /health ({r.status_code})")
    return CheckResult("liveness", FAIL, _http_failure(target, "GET /health", r), dt)


def check_rpc_workers(target: CheckTarget) -> CheckResult:
    """Each llama.cpp RPC worker the head was started with is there: the head holds a session to it, or it
    accepts a TCP connection from here.

    rpc-server speaks no HTTP and serves one client at a time, so this is all that can be asked without
    taking part in its protocol (see deploy.serving.readiness.rpc_reachable).
    """
    t0 = time.monotonic()
    down = []
    for server in target.rpc_servers:
        host, _, port = server.rpartition(":")
        if not port.isdigit():
            down.append(f"rpc-server {server!r} is not host:port")
            continue
        probe = readiness.rpc_reachable(host, int(port), timeout_s=min(target.timeout_s, 5.0))
        if probe.state != readiness.READY:
            down.append(f"rpc-server {server} unreachable ({probe.detail})")
    dt = time.monotonic() - t0
    details = {"rpc_servers": target.rpc_servers, "source": target.rpc_servers_source}
    if down:
        return CheckResult("rpc_workers", FAIL, "; ".join(down), dt, details)
    n = len(target.rpc_servers)
    return CheckResult(
        "rpc_workers",
        PASS,
        f"{n} rpc-server{'s' if n > 1 else ''} reachable: {', '.join(target.rpc_servers)}",
        dt,
        details,
    )


def _reported_context(target: CheckTarget, entry: dict[str, Any]) -> tuple[int | None, str]:
    if isinstance(entry.get("max_model_len"), int):
        return entry["max_model_len"], "max_model_len in /v1/models"
    meta = entry.get("meta") or {}
    if isinstance(meta.get("n_ctx"), int):
        return meta["n_ctx"], "meta.n_ctx in /v1/models"
    eng = registry.find(target.flavor)
    if eng is not None and eng.props_path:
        try:
            url = f"{target.base_url}{eng.props_path}"
            props = bounded.get(url, headers=headers(target), timeout_s=10.0).json()
            n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
            if isinstance(n_ctx, int):
                return n_ctx, f"default_generation_settings.n_ctx in {eng.props_path}"
        except (requests.RequestException, ValueError):
            pass
    return None, ""


def check_models(target: CheckTarget) -> CheckResult:
    """The models route lists the served name; the context it reports is at least the plan's. A model that
    is not listed stops the run (every chat request would fail the same way)."""
    t0 = time.monotonic()
    what = f"GET {_models_path(target)}"
    try:
        r = _list_models(target)
    except requests.RequestException as exc:
        return CheckResult("models", FAIL, error_reason(exc, target), time.monotonic() - t0)
    dt = time.monotonic() - t0
    if r.status_code != 200:
        return CheckResult("models", FAIL, _http_failure(target, what, r), dt)
    try:
        data = [m for m in (r.json().get("data") or []) if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return CheckResult("models", FAIL, f"{what}: not a JSON model list", dt)
    ids = [str(m.get("id")) for m in data]
    entry = next(
        (m for m in data if m.get("id") == target.model or target.model in (m.get("aliases") or [])), None
    )
    if entry is None:
        near = difflib.get_close_matches(target.model, ids, n=3, cutoff=0.5)
        listed = f"did you mean {', '.join(map(repr, near))}?" if near else f"{len(ids)} listed"
        if not near and len(ids) <= 5:
            listed = f"served: {', '.join(ids)}"
        reason = f"{target.model!r} not served ({listed}){providers.id_hint(target.flavor, target.model)}"
        return CheckResult("models", FAIL, reason, dt, {"not_served": True, "served": ids[:50]})
    ctx, where = _reported_context(target, entry)
    details = {"served": ids, "reported_context": ctx}
    if ctx is None:
        return CheckResult(
            "models", PASS, f"{target.model!r} listed; no context length reported", dt, details
        )
    if target.max_model_len and ctx < target.max_model_len:
        return CheckResult(
            "models",
            FAIL,
            f"{where} is {ctx}, below the plan's max_model_len {target.max_model_len}",
            dt,
            details,
        )
    want = f" >= required {target.max_model_len}" if target.max_model_len else ""
    return CheckResult("models", PASS, f"{target.model!r} listed; {where} {ctx}{want}", dt, details)


#: The share of samples each sampled check needs (`check --samples N`); a special token in any answer
#: fails the check whatever the rate, since a client shows every one of them.
THRESHOLDS: dict[str, float] = {
    "instant": 0.8,
    "thinking": 0.8,
    "tool_call": 0.8,
    "streaming": 0.8,
    "vision": 0.8,
}


#: `check --samples`' default: three questions per probe keep the demo's whole check under a minute on a
#: 2-core CPU and still show a rate
DEFAULT_SAMPLES = 3
MAX_SAMPLES = len(QUESTIONS) * 4


def check_samples(value: int) -> int:
    """``--samples`` as given, when it is 1 to :data:`MAX_SAMPLES`; bad input otherwise.

    >>> check_samples(5)
    5
    """
    if not isinstance(value, int) or not 1 <= value <= MAX_SAMPLES:
        raise InputError(f"--samples {value!r}: give 1 to {MAX_SAMPLES}")
    return value


def _leaked(target: CheckTarget, msg: dict[str, Any]) -> str | None:
    """Which of the target's special tokens an answer carries, and in which field; None when clean."""
    found = []
    for field_name, text in (("content", str(msg.get("content") or "")), ("reasoning", reasoning_text(msg))):
        hits = [t for t in target.special_tokens if t in text]
        if hits:
            found.append(f"{', '.join(hits)} in {field_name}")
    if not found:
        return None
    return f"special token {'; '.join(found)} (set: {target.special_tokens_source})"


def _chat_sample(
    name: str,
    target: CheckTarget,
    kind: str,
    validate: Callable[[dict[str, Any]], tuple[bool, str]],
    sample: int,
) -> CheckResult:
    t0 = time.monotonic()
    req = chat_request(target, kind, sample)
    try:
        payload = complete(target, req)
    except Exception as exc:  # noqa: BLE001 - any client failure is this check's verdict, not a crash
        return CheckResult(name, FAIL, error_reason(exc, target), time.monotonic() - t0)
    dt = time.monotonic() - t0
    try:
        msg, finish = first_message(payload)
        # the shape rules name the likelier cause (a missing reasoning or tool parser) of what they see
        ok, why = validate(payload)
        leak = _leaked(target, msg)
        ok, why = (False, leak) if ok and leak else (ok, why)
    except (ValueError, KeyError, TypeError) as exc:
        return CheckResult(name, FAIL, f"malformed response: {exc}", dt)
    details: dict[str, Any] = {"finish_reason": finish, "content": str(msg.get("content") or "")[:200]}
    if leak:
        details["special_token"] = leak
    if reasoning_text(msg):
        details["reasoning"] = reasoning_text(msg)[:200]
    if msg.get("tool_calls"):
        details["tool_calls"] = msg["tool_calls"][:2]
    return CheckResult(name, PASS if ok else FAIL, why, dt, details)


def sampled(name: str, target: CheckTarget, one: Callable[[int], CheckResult]) -> CheckResult:
    """Ask one probe ``target.samples`` times and judge the rate against :data:`THRESHOLDS`.

    The reason starts with the rate (``4/5 passed, needs 4``) and names the first failed sample even when
    the rate passes; a special token in any sample fails the check.

    >>> t = CheckTarget("http://h:1", "m", "vllm", {}, samples=2)
    >>> sampled("instant", t, lambda i: CheckResult("instant", PASS if i else FAIL, f"why {i}")).reason
    '1/2 passed, needs 2; sample 1: why 0'
    """
    n = max(1, target.samples)
    runs = [one(i) for i in range(n)]
    passed = sum(r.status == PASS for r in runs)
    need = max(1, math.ceil(THRESHOLDS.get(name, 1.0) * n - 1e-9))
    bad = next((i for i, r in enumerate(runs) if r.status == FAIL), None)
    leak = next((r for r in runs if r.details.get("special_token")), None)
    shown = runs[bad] if bad is not None else runs[0]
    reason = f"{passed}/{n} passed, needs {need}; "
    reason += f"sample {bad + 1}: {shown.reason}" if bad is not None else shown.reason
    ok = passed >= need and leak is None
    base = next((r for r in runs if r.status == PASS), runs[0])
    details = dict(base.details)
    details["samples"] = {"passed": passed, "total": n, "needs": need, "threshold": THRESHOLDS.get(name, 1.0)}
    details["sample_results"] = [{"status": r.status, "reason": r.reason} for r in runs]
    if leak is not None:
        details["special_token"] = leak.details["special_token"]
    return CheckResult(name, PASS if ok else FAIL, reason, sum(r.seconds for r in runs), details)


def _chat_check(
    name: str, target: CheckTarget, kind: str, validate: Callable[[dict[str, Any]], tuple[bool, str]]
) -> CheckResult:
    return sampled(name, target, lambda i: _chat_sample(name, target, kind, validate, i))


def check_instant(target: CheckTarget) -> CheckResult:
    return _chat_check("instant", target, "instant", validate_instant)


def check_thinking(target: CheckTarget) -> CheckResult:
    if not target.capabilities.get("reasoning"):
        return CheckResult("thinking", SKIP, f"no reasoning declared ({target.capabilities_source})")
    documented = providers.flavor(target.flavor).reasoning_field

    def validate(payload: dict[str, Any]) -> tuple[bool, str]:
        ok, why = validate_thinking(payload)
        msg, _ = first_message(payload)
        used = "reasoning_content" if msg.get("reasoning_content") else "reasoning"
        if ok and target.hosted and documented and used != documented:
            why += f" ({target.flavor} documents {documented}; clients reading only that field see none)"
        return ok, why

    return _chat_check("thinking", target, "thinking", validate)


def check_tool_call(target: CheckTarget) -> CheckResult:
    if not target.capabilities.get("tools"):
        return CheckResult("tool_call", SKIP, f"no tool use declared ({target.capabilities_source})")
    return _chat_check(
        "tool_call", target, "tool", lambda p: validate_tool_call(p, [WEATHER_TOOL], target.id_rule)
    )


def _stream_sample(target: CheckTarget, sample: int) -> CheckResult:
    t0 = time.monotonic()
    ttft = None
    chunks: list[dict[str, Any]] = []
    try:
        for event in create(target, chat_request(target, "stream", sample)):
            chunk = event.model_dump()
            chunks.append(chunk)
            if ttft is None:
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or reasoning_text(delta) or delta.get("tool_calls"):
                        ttft = time.monotonic() - t0
    except Exception as exc:  # noqa: BLE001
        return CheckResult(
            "streaming", FAIL, error_reason(exc, target), time.monotonic() - t0, {"chunks": len(chunks)}
        )
    dt = time.monotonic() - t0
    target.meter.add_usage(next((c for c in chunks if c.get("usage")), None))
    details: dict[str, Any] = {"chunks": len(chunks), "ttft_s": round(ttft, 3) if ttft is not None else None}
    if not chunks:
        return CheckResult("streaming", FAIL, "no SSE chunks", dt, details)
    if ttft is None:
        return CheckResult("streaming", FAIL, f"{len(chunks)} chunks but no token in any delta", dt, details)
    folded = assemble_stream(chunks)
    ok, why = validate_instant(folded)
    leak = _leaked(target, first_message(folded)[0])
    if leak:
        details["special_token"] = leak
        ok, why = (False, why if not ok else leak)
    if not ok:
        return CheckResult("streaming", FAIL, f"streamed answer: {why}", dt, details)
    return CheckResult(
        "streaming", PASS, f"{len(chunks)} chunks, first token after {ttft:.2f} s", dt, details
    )


def check_streaming(target: CheckTarget) -> CheckResult:
    """SSE chunks arrive; time to first token is recorded; the folded answer passes the instant rules and
    carries no special token."""
    return sampled("streaming", target, lambda i: _stream_sample(target, i))


def check_vision(target: CheckTarget) -> CheckResult:
    if not target.vision:
        return CheckResult("vision", SKIP, target.vision_source or "vision not served")
    return _chat_check("vision", target, "vision", validate_instant)


_METRIC_LINE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?\s+\S+")


def check_metrics(target: CheckTarget) -> CheckResult:
    if not target.metrics:
        return CheckResult("metrics", SKIP, target.metrics_source or "metrics not enabled")
    t0 = time.monotonic()
    try:
        r = bounded.get(f"{target.base_url}/metrics", headers=headers(target), timeout_s=10.0)
    except requests.RequestException as exc:
        return CheckResult("metrics", FAIL, error_reason(exc, target), time.monotonic() - t0)
    dt = time.monotonic() - t0
    if r.status_code != 200:
        return CheckResult("metrics", FAIL, f"GET /metrics {r.status_code} ({target.metrics_source})", dt)
    samples = [line for line in r.text.splitlines() if _METRIC_LINE.match(line)]
    if not samples:
        return CheckResult("metrics", FAIL, "GET /metrics 200 but no Prometheus samples", dt)
    return CheckResult("metrics", PASS, f"{len(samples)} Prometheus samples", dt, {"samples": len(samples)})


CHECKS: list[tuple[str, Callable[[CheckTarget], CheckResult]]] = [
    ("liveness", check_liveness),
    ("rpc_workers", check_rpc_workers),
    ("models", check_models),
    ("instant", check_instant),
    ("thinking", check_thinking),
    ("tool_call", check_tool_call),
    ("streaming", check_streaming),
    ("vision", check_vision),
    ("metrics", check_metrics),
    ("sampling", check_sampling),
]


#: Checks that always run and, when one fails, leave the rest not run (models: only when the model is
#: not served at all, since every chat request would then fail the same way).
GATES = ("liveness", "rpc_workers", "models")


def run_checks(target: CheckTarget, only: Iterable[str] | None = None) -> CheckReport:
    """Run the suite in order; when a gate fails (the server is not live, an RPC worker is unreachable)
    the rest fail as not run (not skipped). rpc_workers is there only when the target has RPC workers."""
    wanted = set(only) if only else None
    results: list[CheckResult] = []
    blocked = ""
    for name, fn in CHECKS:
        if name == "rpc_workers" and not target.rpc_servers:
            continue
        if name == "sampling" and not sampling.applies(target):
            continue
        if wanted is not None and name not in wanted and name not in GATES:
            continue
        if blocked and name not in ("liveness", "rpc_workers"):
            results.append(CheckResult(name, FAIL, f"not run: {blocked}"))
            continue
        result = fn(target)
        results.append(result)
        if name == "models" and not result.details.get("not_served"):
            continue
        if name in GATES and result.status == FAIL and not blocked:
            blocked = {
                "liveness": "the server is not live",
                "rpc_workers": "an RPC worker is unreachable",
                "models": f"the model {target.model!r} is not served",
            }[name]
    return CheckReport(target=target.describe(), results=results)
