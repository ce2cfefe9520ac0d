"""The plan as plain values, and plan.json — the contract every stage after `plan` reads.

    >>> from deploy.planning.contract import load_plan
    >>> p = load_plan("plan.json")
    >>> p.chosen_candidate.engine, p.chosen_candidate.max_model_len
    ('vllm', 262144)

plan.json (schema 1)::

    {
      "schema": 1,
      "model": {"name", "display_name", "served_model_name", "capabilities", "parsers", "modes",
                "max_position_embeddings"},
      "hardware": <the hardware profile used, in the hardware/*.yaml format>,
      "request": <the planner's options: engine, variant, context, gpu_memory_utilization, ...>,
      "chosen": "<candidate id>" | null,
      "fleet": {"replicas": [<Replica>, ...], "router": {...} | null, "reason": "..."},
      "candidates": [<Candidate>, ...]       # ranked best first
    }

``fleet`` is the chosen candidate's replicas and the router in front of them (deploy/planning/fleet.py
builds it; :attr:`Plan.fleet` reads it). A plan written before fleets has no ``fleet``: it reads as one
replica on the candidate's own host and port, and no router.

Later stages read only this file (plus the lockfile next to the weights). More keys are welcome;
readers ignore what they do not know.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import PlanError
from deploy.fsutil import atomic_write_json
from deploy.planning.margins import ready_deadline_s

# The schema owns its version and the candidate statuses (runnable at the full context; reduced: runs with
# the smaller max_model_len the plan sets; incompatible); they are re-exported here for the readers.
from deploy.planning.plan_schema import (
    INCOMPATIBLE,
    REDUCED,
    RUNNABLE,
    SCHEMA_VERSION,
    STATUSES,
    plan_schema,
)
from deploy.schema import parse_json, read_text, validate


@dataclass
class Memory:
    """Per-GPU figures in GiB (0 on CPU-only plans) and the host RAM the plan needs, in GiB.

    ``terms`` names every term of the per-GPU budget (e.g. ``cuda_graphs``, ``vision_encoder``,
    ``activation_peak``) and of the host figure (``host_*``), with where each number comes from in
    ``sources``."""

    total: float = 0.0
    budget: float = 0.0
    weights: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    host: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class Weights:
    """What to download: the variant's repo, revision, patterns and expected size.

    ``local_dir`` is where the weights land on every node (the head node's weights_dir + repo)."""

    variant: str
    repo: str
    revision: str
    allow_patterns: list[str]
    bytes: int
    format: str
    local_dir: str = ""
    computed_bytes: int = 0  # from the architecture; `bytes` is the repo's listing


#: What a draft model's folder needs: its config, weights and tokenizer files (no README or images).
DRAFT_ALLOW_PATTERNS = ("*.safetensors", "*.json", "*.py", "*.model", "*.tiktoken", "*.jinja")


@dataclass
class Candidate:
    id: str
    engine: str
    variant: str
    status: str
    nodes: int
    gpus_per_node: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    expert_parallel: bool
    decode_context_parallel: int
    max_model_len: int
    kv_cache_dtype: str
    kv_cache_tokens: int
    gpu_memory_utilization: float
    memory: Memory
    weights: Weights
    placement: str = "gpu"  # gpu | hybrid | cpu | rpc
    engine_args: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    remediation: list[str] = field(default_factory=list)
    layout: str = ""  # human summary, e.g. "TP8", "TP8 x PP2", "experts on CPU"
    time_to_ready_s: int = 600
    rank: int = 0
    #: the pessimistic end of the KV estimate: kv_cache_tokens less the known error (kv_error, a fraction,
    #: from kv_error_source); a reduced plan's max_model_len is sized to it
    kv_cache_tokens_low: int = 0
    kv_error: float = 0.0
    kv_error_source: str = ""
    #: set by `plan --tight`: a knob beyond the engine's own choice (reasons say which, and the risk)
    tight: bool = False
    #: how many measured starts (calibration store) corrected this candidate's figures
    calibrated_from: int = 0
    #: deadline for start-up (up, systemd TimeoutStartSec, Ansible waits, multi-node timeouts): the
    #: predicted time_to_ready_s times ready_safety_factor (deploy/planning/margins.py), never below it
    ready_deadline_s: int = 0
    ready_safety_factor: float = 2.0
    #: what the time to ready assumes: the weights read rate (GB/s) and where it comes from
    read_rate_gbps: float = 0.0
    read_rate_source: str = ""
    #: what one stream should decode (deploy/planning/performance.py): ``decode_tokens_per_s_c1`` (null when a
    #: bandwidth is unknown), the bytes per token, bandwidths, efficiency and their sources
    performance: dict[str, Any] = field(default_factory=dict)
    #: replicas of this layout the plan would run on its profile (``plan --replicas``, else as many as the
    #: profile's nodes hold); a plan from before fleets reads as 1
    replicas: int = 1

    @property
    def runs(self) -> bool:
        return self.status in (RUNNABLE, REDUCED)

    @property
    def draft_weights(self) -> Weights | None:
        """The speculative-decoding draft model the launch loads (``plan --speculative``), as weights to
        download and verify beside the main ones; None without one.

        >>> load_plan("plan.json").chosen_candidate.draft_weights.repo  # doctest: +SKIP
        'lightseekorg/kimi-k2.5-eagle3'
        """
        spec = self.engine_args.get("speculative")
        if not isinstance(spec, dict) or not spec.get("draft_repo"):
            return None
        return Weights(
            variant=f"{spec.get('method', 'speculative')}-draft",
            repo=str(spec["draft_repo"]),
            # the repo's newest commit when downloaded; weights.lock pins it from then on
            revision="main",
            allow_patterns=list(DRAFT_ALLOW_PATTERNS),
            bytes=0,
            format="safetensors",
            local_dir=str(spec.get("draft_model_path") or ""),
        )

    @property
    def start_deadline_s(self) -> int:
        """Seconds a start may take before it counts as failed: ``ready_deadline_s``, or for a plan written
        before it existed, the same derivation from ``time_to_ready_s`` (deploy/planning/margins.py)."""
        return self.ready_deadline_s or ready_deadline_s(self.time_to_ready_s)


@dataclass(frozen=True)
class Replica:
    """One engine group of the fleet: ``nodes`` are profile node names (head first); ``host``/``url`` are
    where the router reaches it ("" for a plan of hardware without addresses, ``plan --gpus``);
    ``threads`` is set only when replicas share a CPU node (the engine's threads split among them)."""

    id: str
    nodes: tuple[str, ...]
    layout: str
    host: str
    port: int
    url: str
    threads: int | None = None
    #: "prefill" or "decode" in a prefill/decode split (``Fleet.disaggregation``); None in aggregated ones
    role: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "nodes": list(self.nodes)}
        if self.role is None:
            d.pop("role")
        return d


@dataclass(frozen=True)
class Fleet:
    """plan.json's ``fleet``: the replicas of the chosen candidate and the router in front of them.

    ``router`` is None with one replica (it serves on the candidate's own port, as a plan always did);
    else the contract's dict: program, version, node, host, port, url, metrics_port and the router's
    settings (deploy.routers.base.RouterSettings.to_dict()).

        >>> load_plan("plan.json").fleet.replicas[0].id  # doctest: +SKIP
        'r0'
    """

    replicas: tuple[Replica, ...]
    router: dict[str, Any] | None = None
    reason: str = ""
    #: "aggregated" (every replica prefills and decodes) or "disaggregated" (``disaggregation`` says how)
    mode: str = "aggregated"
    #: a prefill/decode split: transfer backend, RDMA devices, ports, each role's candidate and engine_args,
    #: the prediction and its reason (deploy.planning.disaggregation); None when aggregated
    disaggregation: dict[str, Any] | None = None
    #: the ways to run the profile's nodes the planner compared, best first (FleetOption.to_dict())
    options: tuple[dict[str, Any], ...] = ()

    @property
    def size(self) -> int:
        return len(self.replicas)

    @property
    def front(self) -> tuple[str, int] | None:
        """(host, port) users reach: the router's, else the one replica's; None without a replica."""
        if self.router is not None:
            return str(self.router["host"]), int(self.router["port"])
        return (self.replicas[0].host, self.replicas[0].port) if self.replicas else None

    def replica(self, replica_id: str) -> Replica:
        for r in self.replicas:
            if r.id == replica_id:
                return r
        raise PlanError(f"the plan's fleet has no replica {replica_id!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "replicas": [r.to_dict() for r in self.replicas],
            "router": dict(self.router) if self.router is not None else None,
            "reason": self.reason,
            "mode": self.mode,
            "options": [dict(o) for o in self.options],
        }
        if self.disaggregation is not None:
            out["disaggregation"] = dict(self.disaggregation)
        return out

    def role_of(self, replica_id: str) -> str | None:
        """The replica's role in a prefill/decode split (None when aggregated)."""
        return self.replica(replica_id).role


def fleet_from_dict(d: dict[str, Any]) -> Fleet:
    """A Fleet from plan.json's ``fleet`` (already validated against the schema).

    >>> fleet_from_dict({"replicas": [], "router": None, "reason": "nothing runs"}).size
    0
    """
    replicas = tuple(
        Replica(
            id=r["id"],
            nodes=tuple(r["nodes"]),
            layout=r["layout"],
            host=r["host"],
            port=r["port"],
            url=r["url"],
            threads=r.get("threads"),
            role=r.get("role"),
        )
        for r in d["replicas"]
    )
    router = d.get("router")
    split = d.get("disaggregation")
    return Fleet(
        replicas,
        dict(router) if router is not None else None,
        str(d.get("reason", "")),
        mode=str(d.get("mode") or "aggregated"),
        disaggregation=dict(split) if split is not None else None,
        options=tuple(dict(o) for o in d.get("options") or ()),
    )


def single_replica_fleet(c: Candidate | None, hardware: dict[str, Any]) -> Fleet:
    """The fleet of a plan written before fleets: the chosen candidate as r0 on its own host and port
    (the profile's first nodes), no router; no replica when nothing was chosen.

        >>> single_replica_fleet(None, {}).size
        0
    """
    if c is None:
        return Fleet((), None, "nothing runs: no replica")
    names = [str(n.get("name", "")) for n in hardware.get("nodes") or []][: max(1, c.nodes)]
    host = str(c.engine_args.get("host", "127.0.0.1"))
    port = int(c.engine_args.get("port", 8000))
    url = f"http://{host}:{port}" if host else ""
    replica = Replica("r0", tuple(names), c.layout, host, port, url, None)
    return Fleet((replica,), None, "one replica (a plan from before fleets)")


@dataclass
class Plan:
    model: dict[str, Any]
    hardware: dict[str, Any]
    candidates: list[Candidate]
    chosen: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    explanation: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION
    #: plan.json's ``fleet`` as planned or read; None (a plan from before fleets): :attr:`fleet` derives it
    fleet_spec: Fleet | None = None

    @property
    def fleet(self) -> Fleet:
        """The replicas and the router of the chosen candidate; a plan without ``fleet`` is one replica
        on the candidate's own port and no router."""
        if self.fleet_spec is not None:
            return self.fleet_spec
        chosen = self.chosen_candidate if self.chosen is not None else None
        return single_replica_fleet(chosen, self.hardware)

    @property
    def chosen_candidate(self) -> Candidate:
        if self.chosen is None:
            raise PlanError("the plan has no chosen candidate (nothing runnable); re-plan on other hardware")
        return self.candidate(self.chosen)

    def candidate(self, candidate_id: str) -> Candidate:
        for c in self.candidates:
            if c.id == candidate_id:
                return c
        raise PlanError(f"plan has no candidate {candidate_id!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fleet_spec")
        # schema first, for people reading the file; the fleet beside the choice it is made of
        out: dict[str, Any] = {"schema": d.pop("schema")}
        for key, value in d.items():
            out[key] = value
            if key == "chosen" and self.fleet_spec is not None:
                out["fleet"] = self.fleet_spec.to_dict()
        return out


def candidate_from_dict(d: dict[str, Any]) -> Candidate:
    d = dict(d)
    d["memory"] = Memory(**d["memory"])
    d["weights"] = Weights(**d["weights"])
    known = Candidate.__dataclass_fields__
    return Candidate(**{k: v for k, v in d.items() if k in known})


def _check_consistent(
    c: dict[str, Any], hardware: dict[str, Any], model: dict[str, Any], source: str
) -> None:
    """What the schema cannot say about a candidate that runs: its layout fits the hardware it names and
    its context fits its KV cache and the model. A plan edited by hand to TP8 x PP64 on one 8-GPU node
    would otherwise render and fail only at start-up, on the node."""
    where = f"{source}: candidate {c['id']!r}"
    nodes = hardware.get("nodes") or []
    if nodes and c["nodes"] > len(nodes):
        raise PlanError(f"{where}: nodes {c['nodes']} but the plan's hardware has {len(nodes)}")
    gpus_here = [int((n.get("gpus") or {}).get("count", 0)) for n in nodes[: c["nodes"]] if "gpus" in n]
    if gpus_here and c["gpus_per_node"] > min(gpus_here):
        raise PlanError(
            f"{where}: gpus_per_node {c['gpus_per_node']} but a node it uses has {min(gpus_here)} GPUs"
        )
    ranks = c["tensor_parallel"] * c["pipeline_parallel"] * c["data_parallel"]
    devices = max(1, c["nodes"] * c["gpus_per_node"])
    if ranks > devices:
        raise PlanError(
            f"{where}: tensor x pipeline x data parallel = {c['tensor_parallel']} x {c['pipeline_parallel']}"
            f" x {c['data_parallel']} = {ranks} ranks on {devices} device(s) ({c['nodes']} node(s) x "
            f"{c['gpus_per_node']} GPUs)"
        )
    if c["max_model_len"] > c["kv_cache_tokens"] > 0:
        raise PlanError(
            f"{where}: max_model_len {c['max_model_len']} is above its KV cache of "
            f"{c['kv_cache_tokens']} tokens (the engine refuses to start)"
        )
    limit = model.get("max_position_embeddings")
    if isinstance(limit, int) and limit > 0 and c["max_model_len"] > limit:
        raise PlanError(f"{where}: max_model_len {c['max_model_len']} is above the model's {limit} positions")


def _check_fleet(fleet: dict[str, Any], hardware: dict[str, Any], source: str) -> None:
    """What the schema cannot say about ``fleet``: replica ids r0, r1, ... in order, nodes the hardware
    names, a router exactly when there is more than one replica, and no port used twice by the router and
    the replicas (a hand-edited plan would otherwise fail at start-up, on the node)."""
    replicas = fleet["replicas"]
    ids = [r["id"] for r in replicas]
    if ids != [f"r{i}" for i in range(len(ids))]:
        raise PlanError(f"{source}: fleet.replicas: ids {ids} are not r0, r1, ... in order")
    names = {n.get("name") for n in hardware.get("nodes") or [] if isinstance(n, dict)}
    for r in replicas:
        unknown = [n for n in r["nodes"] if names and n not in names]
        if unknown:
            raise PlanError(f"{source}: fleet replica {r['id']}: node {unknown[0]!r} is not in the hardware")
    router = fleet["router"]
    if (router is not None) != (len(replicas) > 1):
        raise PlanError(
            f"{source}: fleet: {len(replicas)} replica(s) with{'out' if router is None else ''} a router "
            "(a router fronts two or more replicas, never one)"
        )
    _check_split(fleet, source)
    if router is None:
        return
    ports = [("the router", router["port"]), ("the router's metrics", router["metrics_port"])]
    seen: dict[int, str] = {}
    for name, port in ports + [(f"replica {r['id']}", r["port"]) for r in replicas]:
        if port in seen:
            raise PlanError(f"{source}: fleet: {name} and {seen[port]} both use port {port}")
        seen[port] = name


def _check_split(fleet: dict[str, Any], source: str) -> None:
    """A prefill/decode split names a role for every replica, at least one of each, as many of each as its
    ``disaggregation`` says, and the router's prefill/decode mode; an aggregated fleet names none of it."""
    split = fleet.get("disaggregation")
    roles = [r.get("role") for r in fleet["replicas"]]
    if (fleet.get("mode") or "aggregated") == "aggregated":
        if split is not None or any(roles) or (fleet["router"] or {}).get("pd"):
            raise PlanError(f"{source}: fleet: an aggregated fleet has no roles, disaggregation or router pd")
        return
    if split is None or fleet["router"] is None or not fleet["router"].get("pd"):
        raise PlanError(
            f"{source}: fleet: a disaggregated fleet needs its disaggregation and the router's pd"
        )
    for role in ("prefill", "decode"):
        n = roles.count(role)
        if n < 1 or n != split[role]["instances"]:
            raise PlanError(
                f"{source}: fleet: {n} {role} replica(s), disaggregation.{role}.instances says "
                f"{split[role]['instances']}"
            )
    if len(roles) != roles.count("prefill") + roles.count("decode"):
        raise PlanError(f"{source}: fleet: every replica of a disaggregated fleet is prefill or decode")


def plan_from_dict(data: Any, source: str = "<plan>") -> Plan:
    """A Plan from plan.json's data, validated against deploy.planning.plan_schema first: a wrong type,
    range or character is PlanError (exit 2) naming ``source``, the key and the reason."""
    if not isinstance(data, dict):
        raise PlanError(f"{source}: expected a JSON object")
    if data.get("schema") != SCHEMA_VERSION:
        raise PlanError(
            f"{source}: unsupported plan schema {data.get('schema')!r} (expected {SCHEMA_VERSION})"
        )
    validate(data, plan_schema(), source, PlanError)
    ids = [c["id"] for c in data["candidates"]]
    if data.get("chosen") is not None and data["chosen"] not in ids:
        raise PlanError(f"{source}: chosen: {data['chosen']!r} is not the id of a candidate")
    for c in data["candidates"]:
        if c.get("status") in (RUNNABLE, REDUCED):
            _check_consistent(c, data["hardware"], data["model"], source)
    if "fleet" in data:
        _check_fleet(data["fleet"], data["hardware"], source)
        for role in ("prefill", "decode"):
            wanted = ((data["fleet"].get("disaggregation") or {}).get(role) or {}).get("candidate")
            if wanted is not None and wanted not in ids:
                raise PlanError(
                    f"{source}: fleet.disaggregation.{role}.candidate {wanted!r} is not a candidate"
                )
    try:
        candidates = [candidate_from_dict(c) for c in data["candidates"]]
        return Plan(
            model=data["model"],
            hardware=data["hardware"],
            candidates=candidates,
            chosen=data.get("chosen"),
            request=data.get("request", {}),
            explanation=data.get("explanation", []),
            fleet_spec=fleet_from_dict(data["fleet"]) if "fleet" in data else None,
        )
    except (KeyError, TypeError) as exc:
        raise PlanError(f"{source}: malformed plan ({exc.__class__.__name__}: {exc})") from None


def load_plan(path: str | Path) -> Plan:
    """Read plan.json: a regular file (never blocks on a FIFO), valid JSON, then the schema."""
    p = Path(path)
    text = read_text(p, PlanError, missing=f"{p}: plan not found (run `kimi-deploy plan -o {p}` first)")
    return plan_from_dict(parse_json(text, str(p), PlanError), str(p))


def save_plan(plan: Plan, path: str | Path) -> Path:
    return atomic_write_json(path, plan.to_dict())


__all__ = [
    "DRAFT_ALLOW_PATTERNS",
    "INCOMPATIBLE",
    "REDUCED",
    "RUNNABLE",
    "SCHEMA_VERSION",
    "STATUSES",
    "Candidate",
    "Fleet",
    "Memory",
    "Plan",
    "Replica",
    "Weights",
    "candidate_from_dict",
    "fleet_from_dict",
    "load_plan",
    "plan_from_dict",
    "save_plan",
    "single_replica_fleet",
]
