"""Capacity: U users (or R requests/s) at an SLO -> replicas, nodes, GPUs and cost per million tokens.

    >>> from deploy.hardware.profiles import profile_from_gpus
    >>> from deploy.planning.planner import plan
    >>> p = plan(profile_from_gpus("8xH200"))
    >>> r = replica_of(p, p.chosen_candidate)
    >>> cap = capacity(r, WORKLOADS["chat"], Slo(tokens_per_user=20), Load(users=100), bench_records=[])
    >>> cap.per_replica.source, cap.replicas.value >= 1
    ('modelled', True)

The per-replica figure comes from, in this order: (1) **measured**: `bench` points of this exact candidate
(model, engine, variant, layout, GPU and count) and workload shape in the bench store
(deploy/calibration/bench_store.py); (2) **published**: a bundled point (capacity_points.yaml) whose every
condition matches and which meets the SLO; (3) **modelled**: the roofline (deploy/planning/roofline.py) at
the efficiency fitted to the published points, with the band their leave-one-out errors give. The fleet
is then ``ceil(users / per-replica concurrency)`` (or ``ceil(rate / per-replica requests/s)``) replicas.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy.errors import InputError, PlanError
from deploy.planning import capacity_points as published
from deploy.planning.roofline import Setup, Shape, at_itl, prefill_seconds

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class Workload:
    """Request shape: prompt and output tokens, prefix-cache hit rate, speculative decoding."""

    name: str
    isl: int
    osl: int
    prefix_hit: float = 0.0
    speculative: str | None = None
    acceptance: float = 1.0

    @property
    def shape(self) -> Shape:
        return Shape(self.isl, self.osl, self.prefix_hit, self.acceptance)


#: presets: chat (Dynamo's and InferenceMAX's 1k/1k), agentic (Dynamo's 64k/400), long (128k in, 1k out)
WORKLOADS = {
    "chat": Workload("chat", 1024, 1024),
    "agentic": Workload("agentic", 65536, 400),
    "long": Workload("long", 131072, 1024),
}


@dataclass(frozen=True)
class Slo:
    """Limits in seconds (TTFT and ITL p95) or a per-user rate (tok/s); None: not asked for."""

    ttft_p95_s: float | None = None
    itl_p95_s: float | None = None
    tokens_per_user: float | None = None

    @property
    def itl_limit_s(self) -> float | None:
        limits = [
            x for x in (self.itl_p95_s, 1.0 / self.tokens_per_user if self.tokens_per_user else None) if x
        ]
        return min(limits) if limits else None


@dataclass(frozen=True)
class Load:
    """Concurrent users, or requests per second."""

    users: int | None = None
    rate: float | None = None


@dataclass(frozen=True)
class Replica:
    """One replica of a planned candidate: its key in the bench store and what the roofline needs."""

    model: str
    engine: str
    variant: str
    layout: str
    gpu: str
    gpus: int
    nodes: int
    candidate: str
    setup: Setup | None
    #: replicas of the plan's fleet on the busiest node: more than 1 when replicas share a node's cores
    sharing_a_node: int = 1

    def key(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("model", "engine", "variant", "layout", "gpu", "gpus", "nodes")}


@dataclass(frozen=True)
class Figure:
    """A value with the range the truth lies in (``low``..``high``)."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class PerReplica:
    """What one replica serves at the SLO, and where the figure comes from."""

    requests_s: Figure
    output_tok_s: Figure
    output_tok_s_per_gpu: Figure | None  # None for a CPU replica
    concurrency: Figure
    source: str  # measured | published | modelled
    basis: str


@dataclass(frozen=True)
class Capacity:
    """The answer: per replica, then the fleet for the load, GPU-hours and cost."""

    per_replica: PerReplica
    replicas: Figure
    nodes: Figure
    gpus: Figure
    gpu_hours_month: Figure
    cost_per_million_output_tokens: Figure | None
    workload: Workload
    slo: Slo
    load: Load
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The `capacity --json` document: every figure as value, low and high; ``source`` (measured,
        published or modelled) and ``basis`` say where the per-replica figure (so every figure) comes from."""
        doc = asdict(self)
        return {"source": self.per_replica.source, "basis": self.per_replica.basis, **doc}


def _batch_limit(engine_args: dict[str, Any]) -> int | None:
    # the engines' batch caps as the plan writes them (bench reads the same keys, a later stage)
    for key in ("max_num_seqs", "max_running_requests", "parallel"):
        value = engine_args.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def setup_of(cand: Any, gpu: str, decode_only: bool = False) -> Setup | None:
    """How the roofline sees one instance of ``cand`` (a planned Candidate) on ``gpu``: None for a layout
    off the GPUs. ``decode_only``: the decode instance of a prefill/decode split."""
    gpus = cand.nodes * cand.gpus_per_node if cand.placement == "gpu" else 0
    if not gpus:
        return None
    ep = cand.expert_parallel and cand.tensor_parallel * cand.data_parallel > 1
    return Setup(
        gpu=gpu,
        gpus=gpus,
        tensor_parallel=cand.tensor_parallel,
        variant=cand.variant,
        expert_ranks=cand.tensor_parallel * cand.data_parallel if ep else 1,
        dp_attention=ep and cand.data_parallel > 1,
        decode_only=decode_only,
        kv_tokens=cand.kv_cache_tokens or None,
        batch_limit=_batch_limit(cand.engine_args),
    )


def replica_of(plan: Any, cand: Any) -> Replica:
    """The replica of ``cand`` (a planned Candidate) in ``plan`` (a Plan)."""
    from deploy.planning.calibrated import gpu_name

    gpu = gpu_name(plan.hardware, cand)
    gpus = cand.nodes * cand.gpus_per_node if cand.placement == "gpu" else 0
    return Replica(
        model=str(plan.model.get("name")),
        engine=cand.engine,
        variant=cand.variant,
        layout=cand.layout or cand.id,
        gpu=gpu,
        gpus=gpus,
        nodes=cand.nodes,
        candidate=cand.id,
        setup=setup_of(cand, gpu),
        sharing_a_node=_replicas_per_node(plan, cand),
    )


def _replicas_per_node(plan: Any, cand: Any) -> int:
    fleet = getattr(plan, "fleet", None)
    if fleet is None or getattr(plan, "chosen", cand.id) != cand.id:
        return 1
    per_node = Counter(name for r in fleet.replicas for name in r.nodes)
    return max(per_node.values(), default=1)


def _point_meets(p: dict[str, Any], slo: Slo) -> bool:
    if p.get("errors") or not p.get("requests") or not p.get("output_tokens_per_s"):
        return False
    checks = ((slo.ttft_p95_s, "ttft_ms"), (slo.itl_p95_s, "itl_ms"))
    for limit, metric in checks:
        value = (p.get(metric) or {}).get("p95")
        if limit is not None and (value is None or value > limit * 1000.0):
            return False
    return not slo.tokens_per_user or p["output_tokens_per_s"] / p["concurrency"] >= slo.tokens_per_user


def _from_rates(out: Figure, conc: Figure, osl: int, gpus: int, source: str, basis: str) -> PerReplica:
    def per(f: Figure, d: float) -> Figure:
        return Figure(f.value / d, f.low / d, f.high / d)

    return PerReplica(per(out, osl), out, per(out, gpus) if gpus else None, conc, source, basis)


def measured_figure(r: Replica, w: Workload, slo: Slo, records: list[dict[str, Any]]) -> PerReplica | None:
    """From the newest bench record of this candidate and shape: the highest concurrency meeting the SLO;
    the truth lies between it and the next measured point (which misses)."""
    mine = [
        x
        for x in records
        if all(x[k] == v for k, v in r.key().items()) and (x["isl"], x["osl"]) == (w.isl, w.osl)
    ]
    if not mine:
        return None
    rec = mine[-1]
    points = sorted(rec["points"], key=lambda p: p["concurrency"])
    meeting = [p for p in points if _point_meets(p, slo)]
    if not meeting:
        raise PlanError(
            f"measured: no concurrency of {r.candidate} ({rec.get('source', 'bench')}) meets the SLO, "
            "not even "
            f"{points[0]['concurrency']}: loosen it or bench lower concurrencies"
        )
    best = meeting[-1]
    after = [p for p in points if p["concurrency"] > best["concurrency"]]
    out, conc = float(best["output_tokens_per_s"]), float(best["concurrency"])
    hi_out, hi_conc = (
        (float(after[0]["output_tokens_per_s"]), float(after[0]["concurrency"])) if after else (out, conc)
    )
    basis = (
        f"bench of {r.candidate} at concurrency {best['concurrency']} "
        f"({rec.get('source', '')}, {rec.get('recorded_at', '')})"
    )
    return _from_rates(
        Figure(out, out, max(out, hi_out)), Figure(conc, conc, hi_conc), w.osl, r.gpus, "measured", basis
    )


def _matches(p: published.PublishedPoint, r: Replica, w: Workload, slo: Slo) -> bool:
    layout_ok = (
        r.setup is not None
        and p.layout == "tp"
        and r.setup.tensor_parallel == r.gpus
        and r.setup.expert_ranks == 1
    )
    same = (
        p.phase == "aggregated"
        and layout_ok
        and p.engine == r.engine
        and p.variant == r.variant
        and p.gpu == r.gpu
        and p.gpus_per_replica == r.gpus
        and (p.isl, p.osl) == (w.isl, w.osl)
        and abs(p.prefix_hit - w.prefix_hit) < 0.01
        and p.speculative == w.speculative
        and p.model == r.model
    )
    itl = slo.itl_limit_s
    meets = p.tok_s_per_user is not None and (itl is None or 1.0 / p.tok_s_per_user <= itl)
    return same and meets and slo.ttft_p95_s is None


def published_figure(r: Replica, w: Workload, slo: Slo) -> PerReplica | None:
    """A bundled point of exactly this setup and workload that meets the SLO (a looser SLO serves at least
    as much: the band's top is the roofline's gain, at the point's own efficiency, from its rate to yours)."""
    for p in published.load_points():
        if not _matches(p, r, w, slo) or r.setup is None:
            continue
        out = p.output_tok_s_per_gpu * p.gpus_per_replica
        conc = out / float(p.tok_s_per_user or 1)
        gain = 1.0
        rates = published.gpu_rates(r.gpu)
        at_slo = at_itl(
            published.architecture(),
            r.setup,
            w.shape,
            slo.itl_limit_s,
            published.point_efficiency(p),
            **rates,
        )
        at_point = published.predict_point(p, published.point_efficiency(p)) * p.gpus_per_replica
        if at_slo and at_point:
            gain = max(1.0, at_slo["output_tok_s"] / at_point)
        basis = f"published {p.id}: {p.source} ({p.date}); {p.setup}"
        return _from_rates(
            Figure(out, out, out * gain), Figure(conc, conc, conc * gain), w.osl, r.gpus, "published", basis
        )
    return None


def modelled_figure(r: Replica, w: Workload, slo: Slo) -> PerReplica:
    """The roofline at the fitted efficiency, with the leave-one-out band; PlanError where it cannot say."""
    if r.setup is None:
        raise PlanError(
            f"no measured figure for {r.candidate} ({r.engine}, {r.layout}) and the roofline covers GPU "
            "layouts only: `kimi-deploy bench --plan PLAN` records one (or `calibrate import bench.json "
            "--plan PLAN`)"
        )
    fit = published.bundled_fit()
    rates = published.gpu_rates(r.gpu)
    if not rates["bandwidth_gbs"] or not rates["gpu_tflops"]:
        raise PlanError(f"hardware/gpus.yaml has no memory_bandwidth_gbs or dense_bf16_tflops for {r.gpu}")
    arch = published.architecture()
    res = at_itl(arch, r.setup, w.shape, slo.itl_limit_s, fit.efficiency, **rates)
    one = prefill_seconds(arch, r.setup, w.shape, rates["gpu_tflops"], rates["prefill_efficiency"])
    if res is None:
        raise InputError(
            f"the SLO's {slo.itl_limit_s * 1000:.1f} ms per token is below what one token takes on "
            f"{r.candidate} even alone (modelled)"
        )
    if slo.ttft_p95_s is not None and one > slo.ttft_p95_s:
        raise InputError(
            f"--ttft-p95 {slo.ttft_p95_s:g}s is below what one {w.isl}-token prompt takes on "
            f"{r.candidate} alone ({one:.2f}s, modelled)"
        )
    low, high = fit.band
    out = res["output_tok_s"]

    def band(v: float) -> Figure:
        return Figure(v, v / (1.0 + high), v / (1.0 + low))

    basis = (
        f"roofline at efficiency {fit.efficiency:.3f} (fitted to {len(fit.per_point)} published points; "
        f"leave-one-out errors {low:+.0%}..{high:+.0%})"
    )
    return _from_rates(band(out), band(float(res["batch"])), w.osl, r.gpus, "modelled", basis)


def _ceil_div(a: float, b: float) -> int:
    return max(1, math.ceil(a / b - 1e-9)) if b > 0 else 0


def capacity(
    r: Replica,
    w: Workload,
    slo: Slo,
    load: Load,
    gpu_hour_price: float | None = None,
    bench_records: list[dict[str, Any]] | None = None,
) -> Capacity:
    """Size the fleet for ``load`` at ``slo`` from the best per-replica figure there is."""
    if bench_records is None:
        from deploy.calibration.bench_store import load_bench_records

        bench_records = load_bench_records()
    per = (
        measured_figure(r, w, slo, bench_records) or published_figure(r, w, slo) or modelled_figure(r, w, slo)
    )

    def replicas(conc: float, req: float) -> int:
        return (
            _ceil_div(load.users, conc) if load.users is not None else _ceil_div(float(load.rate or 0), req)
        )

    n = Figure(
        replicas(per.concurrency.value, per.requests_s.value),
        replicas(per.concurrency.high, per.requests_s.high),
        replicas(per.concurrency.low, per.requests_s.low),
    )
    gpus = Figure(n.value * r.gpus, n.low * r.gpus, n.high * r.gpus)
    hours = Figure(*(g * HOURS_PER_MONTH for g in (gpus.value, gpus.low, gpus.high)))
    cost = None
    if gpu_hour_price is not None and r.gpus:
        served = (
            load.users * per.output_tok_s.value / per.concurrency.value
            if load.users is not None
            else float(load.rate or 0) * w.osl
        )
        cost = Figure(
            *(gpu_hour_price * g * 1e6 / (served * 3600.0) for g in (gpus.value, gpus.low, gpus.high))
        )
    notes = [] if r.gpus else ["a CPU replica: no GPU-hours or GPU cost"]
    if r.sharing_a_node > 1:
        # measured on the demo (docs/how-to/capacity.md): two replicas' decode on one node's cores ran
        # slower together than one alone, which a per-replica figure does not see
        notes.append(
            f"{r.sharing_a_node} replicas share a node's cores and memory bandwidth: the per-replica figure "
            "is one replica's, and replicas sharing a node slow each other (decode most)"
        )
    return Capacity(
        per,
        n,
        Figure(n.value * r.nodes, n.low * r.nodes, n.high * r.nodes),
        gpus,
        hours,
        cost,
        w,
        slo,
        load,
        notes,
    )


def plan_for_load(
    profile: Any, request: Any, records: list, result: Any, workload: Workload, slo: Slo, load: Load
) -> tuple[Any, Capacity]:
    """The plan again with ``replicas`` from the chosen candidate's capacity for ``load`` at ``slo``, and
    that capacity (`plan --users U`); the planner caps the replicas at what the profile holds."""
    import dataclasses

    from deploy.planning.planner import plan

    cap = capacity(replica_of(result, result.chosen_candidate), workload, slo, load)
    again = plan(profile, dataclasses.replace(request, replicas=int(cap.replicas.value)), calibration=records)
    return again, cap


__all__ = [
    "WORKLOADS",
    "Capacity",
    "Figure",
    "Load",
    "PerReplica",
    "Replica",
    "Slo",
    "Workload",
    "capacity",
    "measured_figure",
    "modelled_figure",
    "plan_for_load",
    "published_figure",
    "replica_of",
    "setup_of",
]
