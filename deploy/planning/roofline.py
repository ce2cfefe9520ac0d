"""The roofline of one replica: what it serves per second at a batch, from the architecture and the GPU.

    >>> from deploy.catalog import load_model
    >>> from deploy.planning.architecture import architecture_for
    >>> m = load_model("kimi-k2.5")
    >>> arch = architecture_for(m, m.variant("int4"))
    >>> s = Setup(gpu="H200", gpus=8, tensor_parallel=8, variant="int4")
    >>> r = serve_rate(arch, s, Shape(isl=1024, osl=1024), batch=8, efficiency=0.1, prefill_efficiency=0.4)
    >>> r["itl_s"] > 0 and r["output_tok_s"] > 0
    True

Decode: each step reads, on every GPU, the non-routed weights (split by TP, whole where replicated), the
routed experts the step's tokens touch (``E x (1 - (1 - k/E)^T)`` distinct experts per MoE layer for T
tokens routed uniformly, split by TP or spread over the expert ranks) and the KV cache of the batch's
context (MLA's latent is whole on every TP rank; with DP attention each rank holds only its own
sequences). A step takes those bytes over HBM bandwidth x efficiency and yields ``acceptance`` tokens per
sequence (speculative decoding; 1 without). Prefill: ``2 x active parameters`` FLOPs per uncached prompt
token over the replica's dense BF16 FLOPs x prefill efficiency (capacity_points.prefill_efficiency derives
it from a published prefill rate; the defaults here are an H200's figures, for doctests and quick looks).
In an aggregated replica the GPUs share their time between the two, so a request costs its prefill time
plus its share of the decode steps; a decode-only instance (prefill/decode split) pays no prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploy.planning.architecture import Architecture

#: bytes per parameter of variants the catalog does not carry as files but published points ran
#: (Kimi-K2's FP8 release: block-scaled FP8 for every linear layer)
BYTES_PER_PARAM = {"fp8": 1.0}


@dataclass(frozen=True)
class Setup:
    """One replica as the roofline sees it."""

    gpu: str
    gpus: int
    tensor_parallel: int
    variant: str
    #: ranks the routed experts are spread over (1: each expert split by TP instead)
    expert_ranks: int = 1
    #: each rank holds only its own sequences' KV (SGLang's DP attention under large EP)
    dp_attention: bool = False
    #: decode-only instance of a prefill/decode split (no prefill on these GPUs)
    decode_only: bool = False
    #: KV capacity of the replica in tokens (None: unbounded here; the caller caps the batch)
    kv_tokens: int | None = None
    #: the engine's batch limit (max_num_seqs and the like)
    batch_limit: int | None = None


@dataclass(frozen=True)
class Shape:
    """A workload shape: prompt and output tokens, prefix-cache hit rate, speculative acceptance."""

    isl: int
    osl: int
    prefix_hit: float = 0.0
    acceptance: float = 1.0


def _weights(arch: Architecture, variant: str) -> tuple[float, float, float]:
    """(non-routed bytes split by TP, replicated non-routed bytes, one expert's bytes) for ``variant``."""
    per_param = BYTES_PER_PARAM.get(variant)
    split = replicated = 0.0
    names = {g.name for g in arch.groups}
    for g in arch.groups:
        if g.routed_experts or g.name == "vision" or (g.name == "embed" and "lm_head" in names):
            continue
        nbytes = g.params * per_param if per_param else g.bytes
        if g.split == "replicated":
            replicated += nbytes
        else:
            split += nbytes
    expert = float(arch.one_expert_bytes)
    if per_param and arch.moe_layers:
        expert = 3 * arch.hidden_size * arch.moe_intermediate_size * per_param
    return split, replicated, expert


def active_params(arch: Architecture) -> float:
    """Parameters one token multiplies through: every non-routed one plus k experts per MoE layer."""
    dense = sum(g.params for g in arch.groups if not g.routed_experts and g.name not in ("vision", "embed"))
    expert = 3 * arch.hidden_size * arch.moe_intermediate_size
    return float(dense + arch.num_experts_per_tok * expert * len(arch.moe_layers))


def step_bytes(
    arch: Architecture, s: Setup, batch: float, context: float, tokens_per_seq: float = 1.0
) -> float:
    """Bytes one decode step reads on the busiest GPU for ``batch`` sequences of ``context`` tokens, each
    step routing ``tokens_per_seq`` tokens per sequence (the accepted ones under speculative decoding)."""
    split, replicated, expert = _weights(arch, s.variant)
    tp = max(1, s.tensor_parallel)
    tokens = max(1.0, batch * tokens_per_seq)
    total = split / tp + replicated
    if arch.moe_layers and arch.n_routed_experts:
        e, k = arch.n_routed_experts, arch.num_experts_per_tok
        touched = e * (1.0 - (1.0 - k / e) ** tokens)
        total += touched * expert * len(arch.moe_layers) / max(tp, s.expert_ranks)
    kv = batch * context * arch.kv_bytes_per_token("bf16")
    if s.dp_attention:
        kv /= max(1, s.gpus)
    elif not arch.mla:
        kv /= tp
    return total + kv


def prefill_seconds(
    arch: Architecture, s: Setup, shape: Shape, gpu_tflops: float, efficiency: float
) -> float:
    """Seconds of the whole replica one request's uncached prompt takes (0 on a decode-only instance)."""
    if s.decode_only:
        return 0.0
    flops = 2.0 * active_params(arch) * shape.isl * (1.0 - shape.prefix_hit)
    return flops / (s.gpus * gpu_tflops * 1e12 * efficiency)


def serve_rate(
    arch: Architecture,
    s: Setup,
    shape: Shape,
    batch: int,
    efficiency: float,
    bandwidth_gbs: float = 4800.0,
    gpu_tflops: float = 989.0,
    prefill_efficiency: float = 0.4,
    step_overhead_s: float = 0.0,
) -> dict[str, Any]:
    """What the replica serves with ``batch`` sequences decoding: ``itl_s`` (seconds between a user's
    tokens), ``output_tok_s``, ``requests_s`` and ``tok_s_per_user``."""
    context = shape.isl + shape.osl / 2.0
    step = step_overhead_s + step_bytes(arch, s, batch, context, shape.acceptance) / (
        bandwidth_gbs * 1e9 * efficiency
    )
    decode_per_request = shape.osl * step / (batch * shape.acceptance)
    prefill = prefill_seconds(arch, s, shape, gpu_tflops, prefill_efficiency)
    requests_s = 1.0 / (decode_per_request + prefill)
    output = requests_s * shape.osl
    return {
        "batch": batch,
        "step_s": step,
        "prefill_s": prefill,
        "itl_s": batch / output,
        "output_tok_s": output,
        "requests_s": requests_s,
        "tok_s_per_user": output / batch,
    }


def max_batch(arch: Architecture, s: Setup, shape: Shape) -> int:
    """The most sequences the replica holds at once: its KV capacity over a request's tokens, and the
    engine's batch limit (each at least 1)."""
    limits = [1 << 20]
    if s.kv_tokens:
        limits.append(max(1, s.kv_tokens // max(1, shape.isl + shape.osl)))
    if s.batch_limit:
        limits.append(s.batch_limit)
    return max(1, min(limits))


def at_itl(
    arch: Architecture, s: Setup, shape: Shape, itl_limit_s: float | None, efficiency: float, **gpu: float
) -> dict[str, Any] | None:
    """The largest batch whose ITL stays within ``itl_limit_s`` (None: the batch limit), or None when even
    one sequence misses it. ITL grows with the batch, so a bisection finds it."""
    top = max_batch(arch, s, shape)
    if itl_limit_s is None:
        return serve_rate(arch, s, shape, top, efficiency, **gpu)
    if serve_rate(arch, s, shape, 1, efficiency, **gpu)["itl_s"] > itl_limit_s:
        return None
    lo, hi = 1, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if serve_rate(arch, s, shape, mid, efficiency, **gpu)["itl_s"] <= itl_limit_s:
            lo = mid
        else:
            hi = mid - 1
    return serve_rate(arch, s, shape, lo, efficiency, **gpu)


__all__ = [
    "Setup",
    "Shape",
    "active_params",
    "at_itl",
    "max_batch",
    "prefill_seconds",
    "serve_rate",
    "step_bytes",
]
