"""A fleet's replicas as render sees them: each replica's candidate, endpoint and node commands.

    >>> from deploy.serving.replicas import node_name
    >>> node_name("r1", "gpu-a")
    'r1-gpu-a'

A plan whose ``fleet.router`` is null is one replica serving on the candidate's own port: its nodes keep
their own names, so a one-replica release is exactly what it always was. With a router, replica ``r<i>``
runs the same candidate on the nodes ``fleet.replicas[i].nodes`` names, on its own port (and, where
replicas share a CPU node, with its share of the cores), and each of its nodes is named ``r<i>-<node>`` in
the release: the files, units and run state of two replicas on one machine never collide.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import PlanError
from deploy.planning.contract import Candidate, Plan
from deploy.schema import check_host, check_port
from deploy.serving.argv import Endpoint, NodeCommand, is_loopback, node_commands


@dataclass(frozen=True)
class Replica:
    """One replica of a release: ``id`` is None for a release without a router (the single endpoint)."""

    id: str | None
    candidate: Candidate
    endpoint: Endpoint
    port: int
    nodes: list[NodeCommand]
    #: where the router reaches it (``http://host:port``); "" without a router
    url: str = ""
    #: "prefill" or "decode" in a prefill/decode split; None when aggregated
    role: str | None = None

    @property
    def head(self) -> NodeCommand:
        return self.nodes[0]


def node_name(replica_id: str | None, node: str) -> str:
    """The release's name for ``node`` of replica ``replica_id`` (its own name without a router)."""
    return f"{replica_id}-{node}" if replica_id else node


def fleet_of(plan: Plan) -> dict[str, Any] | None:
    """The plan's fleet when it has a router (several replicas), else None (one endpoint)."""
    fleet = plan.fleet
    if fleet.router is None:
        return None
    return {"router": dict(fleet.router), "replicas": [r.to_dict() for r in fleet.replicas]}


def role_candidate(plan: Plan, cand: Candidate, replica: dict[str, Any]) -> Candidate:
    """What ``replica`` runs: ``cand`` in an aggregated fleet; in a prefill/decode split its role's
    candidate with the engine_args the role adds (plan.json ``fleet.disaggregation.<role>``)."""
    role = replica.get("role")
    split = plan.fleet.disaggregation
    if not role or split is None:
        return cand
    spec = split[role]
    base = plan.candidate(str(spec["candidate"]))
    return dataclasses.replace(base, engine_args={**base.engine_args, **spec["engine_args"]})


def _replica_candidate(cand: Candidate, replica: dict[str, Any]) -> Candidate:
    args = {**cand.engine_args, "port": check_port(replica["port"], f"fleet replica {replica['id']} port")}
    if replica.get("threads"):
        args["threads"] = int(replica["threads"])
    return dataclasses.replace(cand, engine_args=args)


def _replica_plan(plan: Plan, cand: Candidate, replica: dict[str, Any]) -> Plan:
    """The plan as the replica's nodes see it: the hardware lists its nodes only, head first."""
    by_name = {str(n.get("name")): n for n in plan.hardware.get("nodes") or []}
    missing = [n for n in replica["nodes"] if n not in by_name]
    if missing:
        raise PlanError(
            f"fleet replica {replica['id']}: node(s) {', '.join(missing)} are not in the plan's hardware"
        )
    hardware = {**plan.hardware, "nodes": [by_name[n] for n in replica["nodes"]]}
    candidates = [cand if c.id == cand.id else c for c in plan.candidates]
    return dataclasses.replace(plan, hardware=hardware, candidates=candidates)


def node_address(plan: Plan, node: str) -> str:
    """The profile's address of ``node`` ("" when it has none)."""
    found = next((n for n in plan.hardware.get("nodes") or [] if str(n.get("name")) == node), {})
    return str(found.get("address") or "")


def reachable(plan: Plan, spec: dict[str, Any], endpoint: Endpoint) -> dict[str, Any]:
    """``spec`` (a replica or the router) with the host the others reach it at: a plan made for a loopback
    bind names 127.0.0.1, which a router on another node cannot reach once render binds beyond loopback, so
    the node's own address is used then."""
    host = str(spec.get("host") or "")
    if host and not endpoint.loopback and is_loopback(host):
        node = spec["nodes"][0] if spec.get("nodes") else str(spec.get("node") or "")
        return {**spec, "host": node_address(plan, node) or host}
    return spec


def replica_url(replica: dict[str, Any]) -> str:
    """Where the router reaches the replica; a plan from ``--gpus`` has no addresses to reach."""
    host = str(replica.get("host") or "")
    if not host:
        raise PlanError(
            f"fleet replica {replica['id']} has no address (a plan from --gpus): plan with a hardware "
            "profile that names the nodes' addresses"
        )
    check_host(host, f"fleet replica {replica['id']} host")
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{int(replica['port'])}"


def replicas(
    plan: Plan,
    cand: Candidate,
    model_path: str,
    endpoint: Endpoint,
    chat_template: Path | None = None,
) -> list[Replica]:
    """The replicas the release runs, head node of each first in its list (see the module docstring)."""
    fleet = fleet_of(plan)
    if fleet is None:
        nodes = node_commands(plan, cand, model_path, endpoint, chat_template)
        port = int(endpoint.port or cand.engine_args.get("port") or 8000)
        return [Replica(None, cand, endpoint, port, nodes)]
    if endpoint.port is not None:
        raise PlanError("--port names one server's port; a fleet's ports are the plan's (plan --router-port)")
    out = []
    for spec in fleet["replicas"]:
        spec = reachable(plan, spec, endpoint)
        rc = _replica_candidate(role_candidate(plan, cand, spec), spec)
        ep = dataclasses.replace(endpoint, port=int(rc.engine_args["port"]))
        nodes = node_commands(_replica_plan(plan, rc, spec), rc, model_path, ep, chat_template)
        for n in nodes:
            n.node = node_name(str(spec["id"]), n.node)
        out.append(
            Replica(
                str(spec["id"]),
                rc,
                ep,
                int(rc.engine_args["port"]),
                nodes,
                replica_url(spec),
                spec.get("role"),
            )
        )
    return out


__all__ = [
    "Replica",
    "fleet_of",
    "node_address",
    "node_name",
    "reachable",
    "replica_url",
    "replicas",
    "role_candidate",
]
