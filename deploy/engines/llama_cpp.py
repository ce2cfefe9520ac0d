"""llama.cpp (llama-server, rpc-server): GGUF weights on GPUs, CPUs or both, and over RPC across nodes.

>>> from deploy.engines.llama_cpp import ENGINE
>>> ENGINE.weight_formats, ENGINE.metrics.slot_based
(('gguf',), True)
"""

from __future__ import annotations

import re

from deploy import pins
from deploy.engines.base import Engine, EngineMetrics, Feature, Health, Install, StartupLog
from deploy.engines.startup import MIB_PER_GIB, NUM, StartupFacts, last, to_float

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

# ---- the start-up log (src/llama-model.cpp load_tensors, src/llama-kv-cache.cpp, src/llama-context.cpp)
_L_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+" + NUM + r" MiB")
_L_KV_SIZE = re.compile(r"llama_kv_cache(?:_unified)?: size =\s+" + NUM + r" MiB \(\s*(\d+) cells")
_L_KV_BUF = re.compile(r"llama_kv_cache(?:_unified|_init)?:\s+(\S+) KV buffer size =\s+" + NUM + r" MiB")
_L_NCTX = re.compile(r"llama_context: n_ctx\s*=\s*(\d+)")
_L_COMPUTE = re.compile(r"(?:llama_context|sched_reserve):\s+(\S+) compute buffer size =\s+" + NUM + r" MiB")
_L_BUILD = re.compile(r"build:? (\d+) \(([0-9a-f]+)\)")
#: llama.cpp's log prefix (minutes.seconds.milliseconds.microseconds since start) on its "model loaded" line
_L_LOADED = re.compile(r"^(\d+)\.(\d\d)\.(\d\d\d)\.\d\d\d \w .*(?:model loaded|listening on)", re.M)


def _parse_llama(text: str, facts: StartupFacts) -> None:
    if m := _L_BUILD.search(text):
        facts.engine_version = m.group(2)
    gpu, host = 0.0, 0.0
    for m in _L_MODEL_BUF.finditer(text):
        mib = to_float(m.group(2))
        if m.group(1).upper().startswith(("CPU", "RPC")):
            host += mib
        else:
            gpu = max(gpu, mib)
    if host:
        facts.weights_gib_host = round(host / MIB_PER_GIB, 7)
    if gpu:
        facts.weights_gib_per_gpu = round(gpu / MIB_PER_GIB, 7)
    else:
        facts.device = "cpu"
    sizes = list(_L_KV_SIZE.finditer(text))
    if sizes:
        # one line per cache (a sliding-window model has two: full and SWA); the context is the largest
        facts.kv_cache_gib = round(sum(to_float(m.group(1)) for m in sizes) / MIB_PER_GIB, 7)
        facts.kv_cache_tokens = max(int(m.group(2)) for m in sizes)
        facts.lines["kv_cache_tokens"] = "; ".join(m.group(0).strip() for m in sizes)
    else:
        bufs = [to_float(m.group(2)) for m in _L_KV_BUF.finditer(text)]
        if bufs:
            facts.kv_cache_gib = round(sum(bufs) / MIB_PER_GIB, 7)
            facts.lines["kv_cache_gib"] = _L_KV_BUF.search(text).group(0).strip()  # type: ignore[union-attr]
    if m := last(_L_NCTX, text):
        facts.ctx_size = int(m.group(1))
        if facts.kv_cache_tokens is None and facts.kv_cache_gib is not None:
            facts.kv_cache_tokens = facts.ctx_size
    if m := _L_LOADED.search(text):
        facts.load_s = int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1000
    computes = [to_float(m.group(2)) for m in _L_COMPUTE.finditer(text)]
    if computes:
        facts.compute_buffer_gib = round(max(computes) / MIB_PER_GIB, 7)


def _detect(text: str) -> bool:
    return bool(_L_KV_SIZE.search(text))


STARTUP_LOG = StartupLog(
    family="llama.cpp",
    signs=("llama_model_loader", "load_tensors:", "llama_context:", "llama_kv_cache", "llama_new_context"),
    required="the KV cache line ('llama_kv_cache: size = X MiB (N cells')",
    parse=_parse_llama,
    detect=_detect,
)

ENGINE = Engine(
    # llama-server /props: default_generation_settings.params holds --temp/--top-p (probed on the pin)
    sampling_report=("/props", "default_generation_settings.params"),
    name="llama.cpp",
    display_name="llama.cpp",
    memory_model="llama.cpp",
    launcher="llama.cpp",
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
    chat_template_file=True,
    openmp_threads=True,
    # llama-server's chunked content provider returns false after the last chunk, which cpp-httplib takes as
    # a cancelled response: the socket closes about a millisecond after the terminating chunk (measured;
    # tests/test_bench_llamacpp.py checks it against the pinned build)
    closes_after_stream=True,
    # the demo's turn markers are --reverse-prompt stops (planning/engine_args.py)
    server_stop_strings=True,
    startup_overhead_s=20,
    log_build_in_version=True,
    props_path="/props",
    source_dist="llama-cpp-python",
    router="sglang-router",
    router_reason=(
        "sglang-router keeps reasoning_content in the history it forwards, the only field llama-server reads "
        "there (vllm-router drops it: the thinking check fails through it)"
    ),
    router_policies={
        # vllm-router 0.1.17's cache_aware matches prefixes on token ids, which it gets only from a worker
        # that describes its model (vLLM's server_info); llama-server does not, so every decision ended as
        # outcome="missing_tokens" and all requests went to one replica. round_robin spreads but the router
        # then counts no in-flight requests (a drain could not wait on them); power_of_two does both
        "vllm-router": (
            "power_of_two",
            "power of two: the less busy replica by the router's own in-flight count; cache_aware needs "
            "token ids llama-server workers do not give vllm-router (it sent every request to one replica)",
        ),
        # sglang-router 0.3.2's HTTP cache_aware matches prefixes on the request text (no tokenizer needed)
        # and counts in-flight requests per worker; its power_of_two and round_robin count none (power_of_two
        # reads loads from a /get_load llama-server does not have). Measured: tests/test_router_fleet.py,
        # docs/explanation/router.md
        "sglang-router": (
            "cache_aware",
            "cache-aware on the request text (sglang-router needs no tokenizer for it): a conversation's "
            "next turn goes to the replica holding its prefix, a busy replica's load sends new ones to the "
            "other",
        ),
    },
)
