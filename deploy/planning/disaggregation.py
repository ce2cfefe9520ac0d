"""Prefill/decode disaggregated fleets (xPyD): the split of a profile's nodes between prefill and decode
instances, ranked against aggregated replicas by the output tok/s per GPU each is predicted to serve.

    >>> from deploy.hardware.profiles import profile_from_gpus
    >>> from deploy.planning.planner import plan
    >>> from deploy.planning.request import PlanRequest
    >>> p = plan(profile_from_gpus("4x8xH200"), PlanRequest(engine="sglang"))
    >>> [o["label"].split(" ")[0] for o in p.fleet.options][:2]  # doctest: +SKIP
    ['1P3D', '4']

Why split: an aggregated replica prefills new prompts between its decode steps, so every user's next token
waits on other users' prompts; a decode instance never prefills, and with expert parallelism and DP
attention (each rank holds only its own sequences' KV) it holds a bigger batch within the same inter-token
latency. The cost is the KV cache moved from prefill to decode over RDMA (Mooncake or NIXL) and the nodes
the prefill side takes.

How the split is sized, from the roofline (deploy/planning/roofline.py) at the efficiency fitted to the
published points (deploy/planning/capacity_points.py): a prefill instance serves ``1 / prefill_seconds``
requests per second (its FLOPs for the workload's ISL); a decode instance the most requests per second
whose ITL stays within the target (``at_itl``, decode only). With N instance-sized node groups the split
``x`` prefill + ``N - x`` decode that serves the most requests, ``min(x * prefill, (N - x) * decode)``, is
the option; aggregated replicas are the same roofline with the prefill in every replica's time. Both are
modelled at one efficiency, so the band moves both together: the ranking is sturdier than either figure.

Pure, like the planner: the profile, the planned candidates and the request in, plain values out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from deploy.engines import registry as engines
from deploy.errors import InputError
from deploy.hardware.profiles import HardwareProfile
from deploy.planning import capacity_points as published
from deploy.planning.architecture import Architecture
from deploy.planning.calibrated import gpu_name
from deploy.planning.capacity import setup_of
from deploy.planning.contract import Candidate
from deploy.planning.request import PlanRequest
from deploy.planning.roofline import at_itl, max_batch, prefill_seconds

#: A split needs this many nodes: with fewer, one prefill node idles while the others decode (the
#: brief's and LMSYS's scale; operators with 2-3 nodes run aggregated replicas)
MIN_NODES = 4
#: `--fleet-mode auto` takes the split only when it predicts this much more per GPU than aggregated
#: replicas: below it, the KV transfer and the second role to run are not worth it
AUTO_MARGIN = 0.10
#: the ITL the options are compared at without `--itl-p95` (20 tok/s per user: an interactive chat)
DEFAULT_ITL_S = 0.05
#: routing per role: a prompt to the prefill instance holding its prefix, a decode to the least loaded
PREFILL_POLICY = "cache_aware"
DECODE_POLICY = "power_of_two"


@dataclass(frozen=True)
class FleetOption:
    """One way to run the profile's nodes: ``aggregated`` replicas, or ``prefill`` + ``decode`` instances of
    ``nodes_per_instance`` nodes each, with the output tok/s per GPU predicted at ``itl_s``."""

    mode: str  # aggregated | disaggregated
    label: str
    prefill: int
    decode: int
    nodes_per_instance: int
    gpus: int
    prefill_candidate: str
    decode_candidate: str
    output_tok_s_per_gpu: float
    low: float
    high: float
    itl_s: float
    #: sequences each decoding instance runs at that ITL
    decode_batch: int
    #: sequences a decode instance's KV cache holds at the workload's ISL + OSL (its running-request cap)
    decode_kv_batch: int
    source: str
    reason: str
    rank: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rdma(profile: HardwareProfile, names: list[str]) -> tuple[str, ...]:
    """The RDMA devices every one of ``names`` declares (in the first node's order); () when one has none."""
    nodes = [n for n in profile.nodes if n.name in names]
    lists = [tuple((n.network or {}).get("rdma_devices") or ()) for n in nodes]
    if not lists or not all(lists):
        return ()
    return tuple(d for d in lists[0] if all(d in other for other in lists[1:]))


def _decode_layouts(chosen: Candidate, candidates: list[Candidate]) -> list[Candidate]:
    """Candidates a decode instance may run: the chosen layout, and the same engine and weights on as many
    nodes with expert parallelism and DP attention (the layout large-EP decode runs), where it runs."""
    ep = [
        c
        for c in candidates
        if c.runs
        and not c.tight
        and c.engine == chosen.engine
        and c.variant == chosen.variant
        and c.nodes == chosen.nodes
        and c.placement == "gpu"
        and c.expert_parallel
        and c.data_parallel > 1
        and c.id != chosen.id
    ]
    return [chosen, *ep[:1]]


def _why_no_split(chosen: Candidate, profile: HardwareProfile) -> str | None:
    eng = engines.get(chosen.engine)
    if eng.disaggregation is None:
        return f"{eng.display_name} has no prefill/decode mode here"
    if chosen.placement != "gpu" or not chosen.gpus_per_node:
        return "a prefill/decode split moves the KV cache between GPUs; this layout is not all on GPUs"
    n = len(profile.nodes)
    if n < MIN_NODES:
        return f"a split needs {MIN_NODES}+ nodes; the profile has {n}"
    if n // max(1, chosen.nodes) < 2:
        return f"{chosen.layout} takes {chosen.nodes} nodes: {n} hold fewer than one prefill and one decode"
    return None


@dataclass(frozen=True)
class _Roofline:
    """What every option is modelled with: the architecture, the GPU's rates, the fitted efficiency and
    its band, the workload and the ITL target, and the profile's node groups for ``chosen``'s layout."""

    arch: Architecture
    gpu: str
    rates: dict[str, float]
    efficiency: float
    band: tuple[float, float]
    workload: Any
    itl_s: float
    groups: int
    instance_gpus: int

    def per_gpu(self, served_requests_s: float, instances: int) -> tuple[float, float, float]:
        """(output tok/s per GPU, low, high) for ``instances`` instances serving that many requests/s."""
        v = served_requests_s * self.workload.osl / (instances * self.instance_gpus)
        lo, hi = self.band
        return round(v, 1), round(v / (1.0 + hi), 1), round(v / (1.0 + lo), 1)

    @property
    def shape_text(self) -> str:
        w = self.workload
        return f"{w.name} {w.isl}/{w.osl} tokens at ITL {self.itl_s * 1000:.0f} ms"


def _aggregated(m: _Roofline, chosen: Candidate) -> FleetOption:
    setup = setup_of(chosen, m.gpu)
    assert setup is not None
    shape = m.workload.shape
    agg = at_itl(m.arch, setup, shape, m.itl_s, m.efficiency, **m.rates)
    replicas = chosen.replicas or m.groups
    value, low, high = m.per_gpu(replicas * agg["requests_s"] if agg else 0.0, replicas)
    each = (
        f"{agg['batch']} sequences each within {m.shape_text}"
        if agg
        else f"no batch meets {m.shape_text} (a prompt's prefill alone exceeds it)"
    )
    return FleetOption(
        mode="aggregated",
        label=f"{replicas} x {chosen.layout}",
        prefill=0,
        decode=replicas,
        nodes_per_instance=chosen.nodes,
        gpus=replicas * m.instance_gpus,
        prefill_candidate=chosen.id,
        decode_candidate=chosen.id,
        output_tok_s_per_gpu=value,
        low=low,
        high=high,
        itl_s=m.itl_s,
        decode_batch=int(agg["batch"]) if agg else 0,
        decode_kv_batch=max_batch(m.arch, setup, shape),
        source="modelled",
        reason=f"{replicas} replicas of {chosen.layout}, each prefilling between its decode steps: {each}",
    )


def _splits(m: _Roofline, chosen: Candidate, candidates: list[Candidate]) -> list[FleetOption]:
    """One split per decode layout: the prefill:decode count that serves the most requests."""
    setup = setup_of(chosen, m.gpu)
    assert setup is not None
    shape = m.workload.shape
    one_prompt = prefill_seconds(m.arch, setup, shape, m.rates["gpu_tflops"], m.rates["prefill_efficiency"])
    if one_prompt <= 0:
        return []
    prefill_rate = 1.0 / one_prompt
    out = []
    for dc in _decode_layouts(chosen, candidates):
        d_setup = setup_of(dc, m.gpu, decode_only=True)
        dec = at_itl(m.arch, d_setup, shape, m.itl_s, m.efficiency, **m.rates) if d_setup else None
        if dec is None or d_setup is None:
            continue
        n = m.groups
        best = max(range(1, n), key=lambda x: (min(x * prefill_rate, (n - x) * dec["requests_s"]), -x))
        value, low, high = m.per_gpu(min(best * prefill_rate, (n - best) * dec["requests_s"]), n)
        out.append(
            FleetOption(
                mode="disaggregated",
                label=f"{best}P{n - best}D (prefill {chosen.layout}, decode {dc.layout})",
                prefill=best,
                decode=n - best,
                nodes_per_instance=chosen.nodes,
                gpus=n * m.instance_gpus,
                prefill_candidate=chosen.id,
                decode_candidate=dc.id,
                output_tok_s_per_gpu=value,
                low=low,
                high=high,
                itl_s=m.itl_s,
                decode_batch=int(dec["batch"]),
                decode_kv_batch=max_batch(m.arch, d_setup, shape),
                source="modelled",
                reason=(
                    f"{best} prefill instance(s) at {prefill_rate:.3g} requests/s each "
                    f"({m.workload.isl}-token prompts) feed {n - best} decode instance(s) of {dc.layout} at "
                    f"{dec['requests_s']:.3g} requests/s each ({dec['batch']} sequences within "
                    f"{m.shape_text}); the split that serves the most of both"
                ),
            )
        )
    return out


def fleet_options(
    profile: HardwareProfile,
    chosen: Candidate,
    candidates: list[Candidate],
    req: PlanRequest,
    arch: Architecture,
) -> tuple[list[FleetOption], str | None]:
    """Every option for the profile's nodes with ``chosen``'s engine and weights, best first, and why there
    is no split when there is none (None when there is one). Empty without a GPU roofline."""
    gpu = gpu_name(profile.to_dict(), chosen)
    rates = published.gpu_rates(gpu) if gpu not in ("cpu", "unknown") else {}
    if setup_of(chosen, gpu) is None or not rates.get("bandwidth_gbs") or not rates.get("gpu_tflops"):
        return [], "the roofline covers GPUs with a known bandwidth and FLOPs (hardware/gpus.yaml)"
    fit = published.bundled_fit()
    m = _Roofline(
        arch=arch,
        gpu=gpu,
        rates=rates,
        efficiency=fit.efficiency,
        band=fit.band,
        workload=req.workload_shape(),
        itl_s=req.itl_p95_s or DEFAULT_ITL_S,
        groups=max(1, len(profile.nodes) // max(1, chosen.nodes)),
        instance_gpus=chosen.nodes * chosen.gpus_per_node,
    )
    options = [_aggregated(m, chosen)]
    why_not = _why_no_split(chosen, profile)
    if why_not is None:
        options += _splits(m, chosen, candidates)
    options.sort(key=lambda o: (-o.output_tok_s_per_gpu, o.mode != "aggregated"))
    return [_ranked(o, i + 1) for i, o in enumerate(options)], why_not


def _ranked(o: FleetOption, rank: int) -> FleetOption:
    return FleetOption(**{**asdict(o), "rank": rank})


def choose(
    options: list[FleetOption], why_not: str | None, req: PlanRequest, profile: HardwareProfile
) -> tuple[FleetOption | None, str]:
    """The option the fleet runs (None: the aggregated fleet as sized by deploy.planning.fleet) and why,
    for ``req.fleet_mode``; InputError for a split asked for where there is none."""
    agg = next((o for o in options if o.mode == "aggregated"), None)
    splits = [o for o in options if o.mode == "disaggregated"]
    if req.fleet_mode == "aggregated":
        return None, "aggregated replicas, as asked (--fleet-mode aggregated)"
    if req.fleet_mode == "disaggregated":
        if req.replicas is not None:
            raise InputError("--replicas sizes aggregated replicas; a prefill/decode split takes every node")
        if not splits:
            raise InputError(f"--fleet-mode disaggregated: {why_not or 'no split is modelled here'}")
        return splits[0], f"a prefill/decode split, as asked (--fleet-mode disaggregated): {splits[0].label}"
    if not splits:
        return None, f"aggregated replicas: {why_not or 'no split is modelled'}"
    best = splits[0]
    gain = (
        best.output_tok_s_per_gpu / agg.output_tok_s_per_gpu - 1.0
        if agg and agg.output_tok_s_per_gpu
        else 1.0
    )
    if req.replicas is not None:
        return None, f"aggregated replicas, as asked (--replicas {req.replicas})"
    if gain < AUTO_MARGIN:
        return None, (
            f"aggregated replicas: the best split ({best.label}) predicts {gain:+.0%} per GPU, under the "
            f"{AUTO_MARGIN:.0%} a second role and the KV transfer must earn"
        )
    missing = [n.name for n in profile.nodes if not (n.network or {}).get("rdma_devices")]
    if profile.hypothetical or missing:
        where = "a plan from --gpus names none" if profile.hypothetical else f"{', '.join(missing)} name none"
        return None, (
            f"aggregated replicas: {best.label} would serve {gain:+.0%} per GPU, but the KV transfer needs "
            f"RDMA devices on every node ({where}; --fleet-mode disaggregated takes it anyway)"
        )
    return best, f"{best.label}: {gain:+.0%} output tok/s per GPU over aggregated replicas (modelled)"


def role_engine_args(
    role: str, cand: Candidate, option: FleetOption, backend: str, rdma: tuple[str, ...]
) -> dict[str, Any]:
    """The engine_args a ``role`` instance adds to its candidate's (the engine's own data)."""
    spec = engines.get(cand.engine).disaggregation
    assert spec is not None, cand.engine
    return spec.role_args(role, backend, rdma, cand.engine_args, option.decode_kv_batch)


def transfer_backend(engine: str, req: PlanRequest) -> str:
    """The KV transfer backend: ``req.transfer_backend`` where the engine has it, else the engine's first."""
    spec = engines.get(engine).disaggregation
    assert spec is not None, engine
    if req.transfer_backend is None:
        return spec.transfer_backends[0]
    if req.transfer_backend not in spec.transfer_backends:
        raise InputError(
            f"--transfer-backend {req.transfer_backend}: {engines.get(engine).display_name} moves KV with "
            f"{', '.join(spec.transfer_backends)}"
        )
    return req.transfer_backend


__all__ = [
    "AUTO_MARGIN",
    "DEFAULT_ITL_S",
    "MIN_NODES",
    "FleetOption",
    "choose",
    "fleet_options",
    "role_engine_args",
    "transfer_backend",
]
