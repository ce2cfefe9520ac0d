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
      "candidates": [<Candidate>, ...]       # ranked best first
    }

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


@dataclass
class Plan:
    model: dict[str, Any]
    hardware: dict[str, Any]
    candidates: list[Candidate]
    chosen: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    explanation: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION

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
        # schema first, for people reading the file
        return {"schema": d.pop("schema"), **d}


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
    try:
        candidates = [candidate_from_dict(c) for c in data["candidates"]]
        return Plan(
            model=data["model"],
            hardware=data["hardware"],
            candidates=candidates,
            chosen=data.get("chosen"),
            request=data.get("request", {}),
            explanation=data.get("explanation", []),
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
    "Memory",
    "Plan",
    "Weights",
    "candidate_from_dict",
    "load_plan",
    "plan_from_dict",
    "save_plan",
]
