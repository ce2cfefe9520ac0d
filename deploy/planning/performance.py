"""What one stream should decode per second: bytes read per decode step over memory bandwidth, times an
efficiency factor per engine and placement calibrated on published measurements.

    >>> from deploy.catalog import load_model
    >>> from deploy.planning.architecture import architecture_for
    >>> m = load_model("kimi-k2.5")
    >>> arch = architecture_for(m, m.variant("int4"))
    >>> est = decode_estimate(arch, "vllm", "gpu", tensor_parallel=8, gpu_bandwidth_gbs=4800, context=8192)
    >>> round(est["bytes_per_token_gib"], 1), est["decode_tokens_per_s_c1"] > 0
    (4.1, True)

Per decode step, one stream reads (on the busiest device of the critical path):

- every non-routed weight (attention, shared experts, dense layers, norms, routers, ``lm_head``; the input
  embedding is a row lookup, so it counts only when it is also the output head, tied), divided by the tensor
  parallel degree for split groups and whole for replicated ones (pipeline stages run one after another, so
  their bytes add up: the sum over the model divided by TP);
- the ``num_experts_per_tok`` routed experts of each MoE layer, divided by TP (or spread over the EP ranks,
  never less than one expert per layer on the busiest rank);
- the KV cache of the context: per token per layer, whole on every rank for MLA (the latent is not split by
  TP), divided by TP for GQA.

Time per token is GPU bytes / (GPU bandwidth x efficiency) plus host bytes / (host bandwidth x efficiency)
for what lives in RAM (routed experts of hybrid layouts, everything on CPU). The GPU bandwidth comes from
``hardware/gpus.yaml``; the host's from the profile (``memory_bandwidth_gbs``, measured by
``kimi-deploy inventory``); without it the estimate is null and says why. llama.cpp splits layers across GPUs
(one after another), so its GPU divisor is 1.
"""

from __future__ import annotations

from typing import Any

from deploy.planning.architecture import Architecture
from deploy.planning.memory import memory_model

GIB = 1024**3

#: Efficiency (achieved / bandwidth-bound decode rate at concurrency 1) per (engine, where the weights are),
#: with the measurement it comes from. Derivations: tests/test_performance.py recomputes each factor from the
#: cited measurement and this module's byte count, so a change to either shows up there.
EFFICIENCY: dict[tuple[str, str], tuple[float, str]] = {
    ("vllm", "gpu"): (
        0.12,
        "Kimi K2.7-Code (same K2.5 INT4 architecture) on 8xH200 TP8 with vLLM: ~96 tok/s at concurrency 1 "
        "(aarora79/agentic-coding-harness-benchmarks#56) against 4.8 TB/s per GPU",
    ),
    ("sglang", "gpu"): (
        0.12,
        "as vLLM; SGLang's Kimi-K2 at max-concurrency 1 decodes at 11.4 ms TPOT, 88 tok/s (sgl-project/sglang"
        "#13466), the same band",
    ),
    ("ktransformers", "hybrid"): (
        0.46,
        "Kimi-K2.5 on KTransformers+SGLang, experts on a Xeon w7-3465X (8 ch DDR5-5600, 358 GB/s) with one "
        "RTX PRO 6000: 10.3 tok/s (kvcache-ai/ktransformers#1816)",
    ),
    ("llama.cpp", "cpu"): (
        0.39,
        "Kimi-K2.5 on llama.cpp, CPU only, EPYC 9175F (12 ch DDR5-6400, 614 GB/s): 10-13 tok/s decode "
        "(website-7t7.pages.dev, deepseek-v3.2-performance-analysis)",
    ),
    ("llama.cpp", "hybrid"): (
        0.33,
        "Kimi-K2 UD-Q4_K_XL on llama.cpp, experts on 2x EPYC 9355 (23 ch DDR5-6400, ~1.18 TB/s) + RTX PRO "
        "6000: 22 tok/s tg at batch 1 (ggml-org/llama.cpp#14642)",
    ),
}
#: placements without a published measurement borrow the nearest calibrated factor and say so
FALLBACK = {
    ("llama.cpp", "gpu"): ("vllm", "gpu"),
    ("llama.cpp", "rpc"): ("llama.cpp", "cpu"),
    ("vllm", "cpu"): ("llama.cpp", "cpu"),
    ("vllm", "hybrid"): ("ktransformers", "hybrid"),
    ("sglang", "hybrid"): ("ktransformers", "hybrid"),
}


def efficiency(engine: str, placement: str) -> tuple[float, str]:
    """(factor, source) for an engine and placement; borrowed factors name where they come from."""
    key = (engine, placement)
    if key in EFFICIENCY:
        return EFFICIENCY[key]
    borrowed = FALLBACK.get(key, ("vllm", "gpu") if placement == "gpu" else ("llama.cpp", "cpu"))
    factor, source = EFFICIENCY[borrowed]
    return (
        factor,
        f"not measured for {engine}/{placement}; borrowed from {borrowed[0]}/{borrowed[1]}: {source}",
    )


def decode_bytes(
    arch: Architecture,
    engine: str,
    tensor_parallel: int = 1,
    expert_ranks: int = 1,
    context: int = 0,
    kv_dtype: str = "bf16",
) -> dict[str, float]:
    """Bytes one decode step reads on the busiest device, by term: ``dense`` (non-routed weights),
    ``experts`` (active routed experts) and ``kv`` (the context's cache)."""
    tp = 1 if memory_model(engine).layer_split else max(1, tensor_parallel)
    names = {g.name for g in arch.groups}
    dense = 0.0
    for g in arch.groups:
        if g.routed_experts or g.name == "vision":
            continue
        if g.name == "embed" and "lm_head" in names:
            continue  # a row lookup; the output head is read whole instead
        dense += g.bytes / (1 if g.split == "replicated" else tp)
    experts = 0.0
    if arch.num_experts_per_tok and arch.one_expert_bytes:
        k = arch.num_experts_per_tok
        ranks = max(tp, expert_ranks)
        per_layer = max(1.0, k / ranks) if expert_ranks > 1 else k / tp
        experts = per_layer * arch.one_expert_bytes * len(arch.moe_layers)
    kv = arch.kv_bytes_per_token(kv_dtype) * context / (1 if arch.mla else tp) if context else 0.0
    return {"dense": dense, "experts": experts, "kv": kv}


def decode_estimate(
    arch: Architecture,
    engine: str,
    placement: str,
    tensor_parallel: int = 1,
    expert_ranks: int = 1,
    gpu_bandwidth_gbs: float | None = None,
    host_bandwidth_gbs: float | None = None,
    context: int = 0,
    kv_dtype: str = "bf16",
) -> dict[str, Any]:
    """``performance`` of a candidate: ``decode_tokens_per_s_c1`` (null when a bandwidth is unknown) with
    its terms, bandwidths, efficiency and sources."""
    terms = decode_bytes(arch, engine, tensor_parallel, expert_ranks, context, kv_dtype)
    gpu_side = {
        "gpu": terms["dense"] + terms["experts"] + terms["kv"],
        "hybrid": terms["dense"] + terms["kv"],
    }
    gpu_bytes = gpu_side.get(placement, 0.0)
    host_bytes = sum(terms.values()) - gpu_bytes
    factor, source = efficiency(engine, "cpu" if placement == "rpc" else placement)
    out: dict[str, Any] = {
        "decode_tokens_per_s_c1": None,
        "bytes_per_token_gib": round((gpu_bytes + host_bytes) / GIB, 3),
        "bytes_terms_gib": {k: round(v / GIB, 4) for k, v in terms.items()},
        "context_tokens": context,
        "gpu_bandwidth_gbs": gpu_bandwidth_gbs,
        "host_bandwidth_gbs": host_bandwidth_gbs,
        "efficiency": factor,
        "basis": f"memory-bandwidth model x efficiency {factor:g}",
        "sources": {"efficiency": source},
    }
    missing = []
    if gpu_bytes and not gpu_bandwidth_gbs:
        missing.append("the GPU's memory bandwidth (hardware/gpus.yaml memory_bandwidth_gbs)")
    if host_bytes and not host_bandwidth_gbs:
        missing.append("the node's memory bandwidth (profile memory_bandwidth_gbs; `kimi-deploy inventory`)")
    if missing:
        out["sources"]["missing"] = "no " + " and no ".join(missing)
        return out
    seconds = 0.0
    if gpu_bytes:
        seconds += gpu_bytes / (float(gpu_bandwidth_gbs or 0) * 1e9 * factor)
    if host_bytes:
        seconds += host_bytes / (float(host_bandwidth_gbs or 0) * 1e9 * factor)
    out["decode_tokens_per_s_c1"] = round(1.0 / seconds, 2) if seconds else None
    return out


#: the context the expectation assumes: a short conversation (bench's default shapes are 1k-8k in)
EXPECTED_CONTEXT = 2048


def for_candidate(
    arch: Architecture,
    engine: str,
    placement: str,
    lay: Any,
    node: Any,
    max_len: int,
    kv_dtype: str,
    engine_args: dict[str, Any],
) -> dict[str, Any]:
    """``Candidate.performance`` for a planned layout on its head node (``lay``: memory.Layout,
    ``node``: profiles.Node). llama.cpp's CPU threads cap the host bandwidth at threads x one thread's."""
    from deploy.hardware.profiles import gpu_spec

    gpu_bw = None
    if node.gpu_count and node.gpu_model != "none":
        gpu_bw = gpu_spec(node.gpu_model).memory_bandwidth_gbs or None
    host_bw = node.memory_bandwidth_gbs
    host_src = "measured by inventory" if host_bw else "not in the profile"
    threads = engine_args.get("threads")
    if (
        memory_model(engine).layer_split
        and isinstance(threads, int)
        and threads > 0
        and node.memory_bandwidth_per_thread_gbs
    ):
        capped = threads * node.memory_bandwidth_per_thread_gbs
        if host_bw is None or capped < host_bw:
            host_bw, host_src = round(capped, 2), f"{threads} thread(s) x one thread's measured bandwidth"
    est = decode_estimate(
        arch,
        engine,
        placement,
        tensor_parallel=lay.tensor_parallel,
        expert_ranks=lay.tensor_parallel * lay.data_parallel if lay.expert_parallel else 1,
        gpu_bandwidth_gbs=gpu_bw,
        host_bandwidth_gbs=host_bw,
        context=min(max_len, EXPECTED_CONTEXT) if max_len else 0,
        kv_dtype=kv_dtype if kv_dtype in ("bf16", "fp8") else "bf16",
    )
    est["sources"]["host_bandwidth"] = host_src
    if gpu_bw:
        est["sources"]["gpu_bandwidth"] = f"hardware/gpus.yaml {node.gpu_model}.memory_bandwidth_gbs"
    return est


__all__ = ["EFFICIENCY", "decode_bytes", "decode_estimate", "efficiency", "for_candidate"]
