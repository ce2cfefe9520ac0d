"""SGLang: NVIDIA GPUs, one or several nodes; sizes its KV pool from --mem-fraction-static.

>>> from deploy.engines.sglang import ENGINE
>>> ENGINE.metrics.kv_usage, ENGINE.metrics_flag
('sglang:token_usage', 'enable_metrics')
"""

from __future__ import annotations

import re
from typing import Any

from deploy import pins
from deploy.engines.base import (
    Disaggregation,
    Engine,
    EngineMetrics,
    ErrorRatio,
    Feature,
    Health,
    Install,
    KvTransferMetrics,
    StartupLog,
    TransferCounter,
)
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
    # with --disaggregation-mode (and --enable-metrics) the scheduler observes each request's transfer:
    # a prefill the KV it sent (a histogram, one observation per request), a decode the stage in which
    # the KV arrived (per-stage latency, stage "decode_transferred"); both count failed transfers
    kv_transfer=KvTransferMetrics(
        sent=TransferCounter(
            "sglang:kv_transfer_total_mb_count",
            "KV transfers sent",
            source=f"sglang {pins.SGLANG_VERSION} srt/observability/metrics_collector.py "
            "SchedulerMetricsCollector (sglang:kv_transfer_total_mb), observed by "
            "srt/observability/req_time_stats.py compute_and_observe_kv_transfer_metrics, which "
            "srt/disaggregation/prefill.py calls for each request whose KV went out",
        ),
        received=TransferCounter(
            "sglang:per_stage_req_latency_seconds_count",
            "KV transfers received",
            labels={"stage": "decode_transferred"},
            source=f"sglang {pins.SGLANG_VERSION} srt/observability/req_time_stats.py "
            "set_wait_queue_entry_time (RequestStage.DECODE_TRANSFERRED), which "
            "srt/disaggregation/decode.py DecodeTransferQueue._commit_transfer_to_req calls once a "
            "request's KV has arrived",
        ),
        failed=("sglang:num_transfer_failed_reqs_total",),
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

#: SGLang's prefill bootstrap server (--disaggregation-bootstrap-port's default in 0.5.23,
#: srt/arg_groups/fields/disagg.py): the router hands each prefill worker's port to the decode side
BOOTSTRAP_PORT = 8998


def _role_args(
    role: str, backend: str, rdma: tuple[str, ...], args: dict[str, Any], kv_batch: int
) -> dict[str, Any]:
    """SGLang 0.5.23's flags for one role of a prefill/decode split (srt/arg_groups/fields/disagg.py): the
    mode, the transfer backend, the HCAs it moves KV over; a decode instance caps its running requests at
    the batch its KV pool holds for the workload (the planner's figure) and, under expert parallelism,
    rebalances hot experts (--enable-eplb, LMSYS's Kimi-K2 large-EP decode); a prefill instance keeps the
    candidate's chunked prefill."""
    out: dict[str, Any] = {
        "disaggregation_mode": role,
        "disaggregation_transfer_backend": backend,
        "disaggregation_ib_device": ",".join(rdma) or None,
    }
    if role == "prefill":
        out["disaggregation_bootstrap_port"] = BOOTSTRAP_PORT
    else:
        out["max_running_requests"] = max(1, kv_batch)
        out["enable_eplb"] = bool(args.get("enable_dp_attention"))
    return out


DISAGGREGATION = Disaggregation(
    transfer_backends=("mooncake", "nixl"),
    router_kv_connector=None,
    bootstrap_port=BOOTSTRAP_PORT,
    side_channel_port=None,
    role_args=_role_args,
    source=(
        f"sglang {pins.SGLANG_VERSION} srt/arg_groups/fields/disagg.py (--disaggregation-mode, "
        "-transfer-backend, -ib-device, -bootstrap-port); LMSYS blog 2025-07-17 (Kimi-K2 4P12D, Mooncake)"
    ),
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
    disaggregation=DISAGGREGATION,
    startup_overhead_s=300,
)
