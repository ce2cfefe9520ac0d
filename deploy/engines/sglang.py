"""SGLang: NVIDIA GPUs, one or several nodes; sizes its KV pool from --mem-fraction-static.

>>> from deploy.engines.sglang import ENGINE
>>> ENGINE.metrics.kv_usage, ENGINE.metrics_flag
('sglang:token_usage', 'enable_metrics')
"""

from __future__ import annotations

from deploy import pins
from deploy.engines.base import Engine, EngineMetrics, ErrorRatio, Feature, Health, Install, StartupLog

METRICS = EngineMetrics(
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

HEALTH = Health(
    "/health",
    (503,),
    "starting (port not open yet)",
    "warming up (503 until warm-up)",
    not_ready_hint="SGLang is still warming up (or its health generation failed)",
)

STARTUP_LOG = StartupLog(
    family="sglang",
    signs=("sglang", "Load weight begin", "KV Cache is allocated", "max_total_num_tokens"),
    ready_lines=("The server is fired up and ready to roll", "Application startup complete"),
    required="the KV cache line ('KV Cache is allocated. #tokens: N')",
)

ENGINE = Engine(
    name="sglang",
    display_name="SGLang",
    memory_model="sglang",
    pin_key="sglang",
    health=HEALTH,
    metrics=METRICS,
    startup_log=STARTUP_LOG,
    install=Install(
        venv=f"sglang-{pins.SGLANG_VERSION}",
        packages=(f"sglang=={pins.SGLANG_VERSION}",),
        parser_venv="parsers",
        parser_version_key="sglang",
        env_report_module="sglang.check_env",
    ),
    unsupported={
        Feature.CPU_SERVING: "SGLang serves on NVIDIA GPUs only",
        Feature.EXPERT_OFFLOAD: (
            "SGLang keeps every routed expert on the GPUs (plan --engine ktransformers offloads them)"
        ),
        Feature.DECODE_CONTEXT_PARALLEL: "--decode-context-parallel is vLLM's",
    },
    weight_formats=("safetensors",),
    multinode_backends=("mp",),
    needs_gpu=True,
    metrics_flag="enable_metrics",
    host_ip_env="SGLANG_HOST_IP",
    startup_overhead_s=300,
)
