"""SGLang: NVIDIA GPUs, one or several nodes; sizes its KV pool from --mem-fraction-static.

>>> from deploy.engines.sglang import ENGINE
>>> ENGINE.metrics.kv_usage, ENGINE.metrics_flag
('sglang:token_usage', 'enable_metrics')
"""

from __future__ import annotations

import re

from deploy import pins
from deploy.engines.base import Engine, EngineMetrics, ErrorRatio, Feature, Health, Install, StartupLog
from deploy.engines.startup import NUM, StartupFacts, last, span_s, to_float

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

# ---- the start-up log (model_runner.py load_model / init_memory_pool, cuda_graph_runner.py): per GPU
_S_LOAD = re.compile(r"Load weight end\..*?mem usage=" + NUM + r" ?GB")
_S_KV = re.compile(
    r"KV Cache is allocated\. #tokens: "
    + NUM
    + r", (?:KV size: "
    + NUM
    + r" ?GB|K size: "
    + NUM
    + r" ?GB, V size: "
    + NUM
    + r" ?GB)"
)
_S_MAX_TOTAL = re.compile(r"max_total_num_tokens=" + NUM)
_S_GRAPH = re.compile(r"Capture cuda graph end\. Time elapsed: " + NUM + r" ?s\. mem usage=" + NUM + r" ?GB")
_S_TS = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_S_VERSION = re.compile(r"sglang(?:==| version[: ]+)(\d+\.\d+\.\d+[\w.+-]*)", re.IGNORECASE)
_READY = ("The server is fired up and ready to roll", "Application startup complete")


def _parse_sglang(text: str, facts: StartupFacts) -> None:
    if m := _S_VERSION.search(text):
        facts.engine_version = m.group(1)
    if m := last(_S_LOAD, text):
        facts.weights_gib_per_gpu = to_float(m.group(1))
        facts.lines["weights"] = m.group(0)
    if m := last(_S_KV, text):
        facts.kv_cache_tokens = int(to_float(m.group(1)))
        if m.group(2):
            facts.kv_cache_gib = to_float(m.group(2))
        elif m.group(3) and m.group(4):
            facts.kv_cache_gib = round(to_float(m.group(3)) + to_float(m.group(4)), 3)
        facts.lines["kv_cache_tokens"] = m.group(0)
    elif m := last(_S_MAX_TOTAL, text):
        facts.kv_cache_tokens = int(to_float(m.group(1)))
        facts.lines["kv_cache_tokens"] = m.group(0)
    if m := last(_S_GRAPH, text):
        facts.compile_s = to_float(m.group(1))
        facts.lines["cuda_graphs"] = m.group(0)
    if any(s in text for s in _READY):
        facts.load_s = span_s(_S_TS.findall(text), "%Y-%m-%d %H:%M:%S")


def _detect(text: str) -> bool:
    return bool(_S_KV.search(text))


STARTUP_LOG = StartupLog(
    family="sglang",
    signs=("sglang", "Load weight begin", "KV Cache is allocated", "max_total_num_tokens"),
    ready_lines=_READY,
    required="the KV cache line ('KV Cache is allocated. #tokens: N')",
    parse=_parse_sglang,
    detect=_detect,
)

ENGINE = Engine(
    # SGLang /model_info returns --preferred-sampling-params (srt/entrypoints/http_server.py, 0.5.23)
    sampling_report=("/model_info", "preferred_sampling_params"),
    name="sglang",
    display_name="SGLang",
    memory_model="sglang",
    launcher="sglang",
    pin_key="sglang",
    health=HEALTH,
    router="sglang-router",
    router_reason=(
        "sglang-router keeps reasoning_content in the history it forwards, the field SGLang "
        "(protocol.py) reads (vllm-router drops it)"
    ),
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
