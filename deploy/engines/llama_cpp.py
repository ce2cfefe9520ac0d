"""llama.cpp (llama-server, rpc-server): GGUF weights on GPUs, CPUs or both, and over RPC across nodes.

>>> from deploy.engines.llama_cpp import ENGINE
>>> ENGINE.weight_formats, ENGINE.metrics.slot_based
(('gguf',), True)
"""

from __future__ import annotations

from deploy import pins
from deploy.engines.base import Engine, EngineMetrics, Feature, Health, Install, StartupLog

METRICS = EngineMetrics(
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

HEALTH = Health(
    "/health",
    (503,),
    "starting (port not open yet)",
    "503 Loading model",
    not_ready_hint="llama-server is still loading the model",
)

STARTUP_LOG = StartupLog(
    family="llama.cpp",
    signs=("llama_model_loader", "load_tensors:", "llama_context:", "llama_kv_cache", "llama_new_context"),
    required="the KV cache line ('llama_kv_cache: size = X MiB (N cells')",
)

ENGINE = Engine(
    name="llama.cpp",
    display_name="llama.cpp",
    memory_model="llama.cpp",
    pin_key="llama.cpp",
    health=HEALTH,
    metrics=METRICS,
    startup_log=STARTUP_LOG,
    install=Install(cache_install=("llama.cpp",)),
    unsupported={
        Feature.VISION: "the GGUF variants here carry no vision projector (text only)",
        Feature.SPECULATIVE: "no published speculative-decoding recipe for llama.cpp with this model",
        Feature.DECODE_CONTEXT_PARALLEL: "--decode-context-parallel is vLLM's",
        Feature.EXPERT_PARALLEL: "llama.cpp splits layers, not experts",
        Feature.TIGHT: "llama.cpp allocates exactly --ctx-size: there is no knob to tighten",
    },
    weight_formats=("gguf",),
    kv_cache_dtypes=("bf16", "fp8"),
    multinode_backends=("rpc",),
    needs_gpu=False,
    metrics_flag="metrics",
    api_key_env="LLAMA_API_KEY",
    startup_overhead_s=20,
)
