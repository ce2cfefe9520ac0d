"""Which metrics each pinned engine exposes on ``/metrics``, and what the rules and dashboards make of them.

    >>> from deploy.monitoring.engines import metrics_for
    >>> metrics_for("vllm").kv_usage
    'vllm:kv_cache_usage_perc'
    >>> metrics_for("ktransformers").family         # KTransformers serves through SGLang
    'sglang'

Each name is read from the pinned engine's own source (see ``sources``); the end-to-end tests compare them
with what the real engines built here expose (llama-server ``--metrics``; vLLM's CPU build when its venv is in
the cache). Where an engine has no metric for a signal (llama.cpp has no KV-usage gauge, no latency histogram,
no preemption or error counter), the field is ``None`` and the rule or panel for it is left out, with the
reason in ``missing``.
"""

from __future__ import annotations

from deploy.engines import llama_cpp, registry, sglang, vllm
from deploy.engines.base import EngineMetrics, ErrorRatio
from deploy.errors import InputError

#: The catalogues live with their engines (deploy/engines/<engine>.py); these names stay for the callers.
VLLM = vllm.METRICS
SGLANG = sglang.METRICS
LLAMA_CPP = llama_cpp.METRICS


def metrics_for(engine: str) -> EngineMetrics:
    """The metric catalogue of a plan's engine (KTransformers runs inside SGLang)."""
    if not registry.is_known(engine):
        raise InputError(
            f"engine {engine!r}: no monitoring for it (expected one of {sorted(registry.names())})"
        )
    return registry.get(engine).metrics


def kv_usage_expr(m: EngineMetrics, selector: str, slots: int) -> str:
    """The KV-usage fraction as PromQL for the series matching ``selector`` (e.g. ``{job="kimi-deploy"}``).

    >>> kv_usage_expr(LLAMA_CPP, '{job="k"}', 4)
    'llamacpp:requests_processing{job="k"} / 4'
    """
    if "{sel}" in m.kv_usage:
        return m.kv_usage.replace("{sel}", selector).replace("{slots}", str(max(1, slots)))
    return f"{m.kv_usage}{selector}"


__all__ = ["EngineMetrics", "ErrorRatio", "LLAMA_CPP", "SGLANG", "VLLM", "kv_usage_expr", "metrics_for"]
