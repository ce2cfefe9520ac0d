"""The ``sampling`` check: the server's default sampling is the model card's thinking mode.

    >>> served_values({"params": {"temperature": 0.99999, "top_p": 0.95}}, "params")
    {'temperature': 0.99999, 'top_p': 0.95}

Render gives every engine the catalog's thinking-mode sampling as its default (vLLM
--override-generation-config, SGLang/KTransformers --preferred-sampling-params, llama.cpp --temp/--top-p),
so a client that sends none gets Moonshot's values. Where the engine reports that default over HTTP
(``Engine.sampling_report``: llama-server's /props, SGLang's /model_info) this check reads it back; vLLM
reports none, so the check is not listed there (never passed without reading the server).
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests

from deploy.checking import bounded
from deploy.checking.calls import error_reason, headers
from deploy.checking.result import FAIL, PASS, SKIP, CheckResult
from deploy.checking.target import CheckTarget
from deploy.engines import registry

#: llama-server reports its float32 settings (1.0 may read 0.99999...)
TOLERANCE = 1e-4
KEYS = ("temperature", "top_p")


def served_values(body: Any, path: str) -> dict[str, float]:
    """The ``temperature``/``top_p`` at the dotted ``path`` of a JSON body (a JSON string there is read
    too: SGLang may keep --preferred-sampling-params as the text it was given)."""
    node = body
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, str):
        try:
            node = json.loads(node)
        except ValueError:
            node = None
    if not isinstance(node, dict):
        return {}
    return {k: float(node[k]) for k in KEYS if isinstance(node.get(k), (int, float))}


def applies(target: CheckTarget) -> bool:
    """Whether the target's engine reports its default sampling (hosted APIs and vLLM do not: the check is
    not listed for them, as rpc_workers is not without RPC workers)."""
    if target.router_front:
        return False  # the engine's own endpoint: each replica's check reads it (REPLICA_CHECKS)
    eng = registry.find(target.flavor)
    return eng is not None and eng.sampling_report is not None


def check_sampling(target: CheckTarget) -> CheckResult:
    """The engine's reported default temperature and top_p equal the catalog's thinking mode."""
    want = {k: float(v) for k, v in (target.sampling.get("thinking") or {}).items() if k in KEYS}
    eng = registry.find(target.flavor)
    if not want:
        return CheckResult("sampling", SKIP, "the model declares no thinking-mode sampling")
    if eng is None or eng.sampling_report is None:
        who = eng.display_name if eng is not None else target.flavor
        return CheckResult("sampling", SKIP, f"{who} reports no default sampling over HTTP")
    route, path = eng.sampling_report
    t0 = time.monotonic()
    try:
        r = bounded.get(f"{target.base_url}{route}", headers=headers(target), timeout_s=10.0)
        body = r.json() if r.status_code == 200 else None
    except (requests.RequestException, ValueError) as exc:
        return CheckResult("sampling", FAIL, error_reason(exc, target), time.monotonic() - t0)
    dt = time.monotonic() - t0
    if body is None:
        return CheckResult("sampling", FAIL, f"GET {route} {r.status_code}", dt)
    got = served_values(body, path)
    details = {"served": got, "want": want, "source": f"{path} in {route}"}
    wrong = [k for k in want if k not in got or abs(got[k] - want[k]) > TOLERANCE]
    if wrong:
        shown = ", ".join(f"{k} {got.get(k, 'unset')} (want {want[k]:g})" for k in wrong)
        return CheckResult("sampling", FAIL, f"default sampling in {route}: {shown}", dt, details)
    shown = ", ".join(f"{k} {want[k]:g}" for k in want)
    return CheckResult("sampling", PASS, f"default {shown} ({path} in {route})", dt, details)


__all__ = ["applies", "check_sampling", "served_values"]
