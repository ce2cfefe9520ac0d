"""The engine command and environment of a LeaderWorkerSet's leader and workers, from the same functions as
the systemd render (deploy.serving.argv.node_commands, deploy.serving.render.engine_environment).

    >>> k8s_word(EnvRef("KIMI_API_KEY")), k8s_word("$(LWS_LEADER_ADDRESS)")
    ('$(KIMI_API_KEY)', '$(LWS_LEADER_ADDRESS)')

The plan's nodes are replaced by LWS's: the head's address is ``$(LWS_LEADER_ADDRESS)`` (every rank reaches
the leader through it), each pod's own address is ``$(KIMI_POD_IP)`` (the downward API), and the interface
is the one an option names or none (Kubernetes pods rarely share the host's interface names). Workers share
one template: a rank flag's value becomes ``$(LWS_WORKER_INDEX)``, and every worker's command must then be
the same, or the render fails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.engines import registry
from deploy.errors import PlanError
from deploy.planning.contract import Candidate, Plan
from deploy.serving.argv import Arg, Endpoint, EnvPath, EnvRef, NodeCommand, node_commands, plan_nodes
from deploy.serving.render import engine_environment

LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
WORKER_INDEX = "$(LWS_WORKER_INDEX)"
#: the pod's own IP, from the downward API (status.podIP)
POD_IP_VAR = "KIMI_POD_IP"
#: flags whose value is the worker's rank times a stride (the stride read from ``stride_flag`` or 1)
RANK_FLAGS = {"--node-rank": None, "--data-parallel-start-rank": "--data-parallel-size-local"}


@dataclass(frozen=True)
class PodCommand:
    """What one LWS template runs: argv (strings, ``$(VAR)`` expanded by the kubelet) and env (name -> value,
    a value may hold ``$(VAR)``); ``shell_rank`` names flags whose value the shell computes."""

    argv: list[str]
    env: dict[str, str]
    node: NodeCommand
    shell_rank: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class LwsCommands:
    """The leader's and (multi-node) the workers' command; ``size`` is the LWS group size."""

    leader: PodCommand
    worker: PodCommand | None
    size: int
    nodes: list[NodeCommand]


def k8s_word(arg: Arg, engine_dir: str = "") -> str:
    """One argv word for a container: an environment reference becomes ``$(NAME)`` (the kubelet's expansion);
    an engine path (``${KIMI_ENGINE_DIR}/bin/x``) is taken inside the image's ``engine_dir``."""
    if isinstance(arg, EnvRef):
        return f"$({arg.name})"
    if isinstance(arg, EnvPath):
        return f"{engine_dir}{arg.rest}" if engine_dir else f"$({arg.name}){arg.rest}"
    return str(arg)


def lws_plan(plan: Plan, cand: Candidate, interface: str | None) -> Plan:
    """The plan with its nodes as LWS sees them: addresses from LWS, the interface from ``interface``."""
    nodes = []
    for rank, n in enumerate(plan_nodes(plan, cand)):
        address = LEADER_ADDRESS if rank == 0 else f"$({POD_IP_VAR})"
        name = "leader" if rank == 0 else f"worker-{rank}"
        nodes.append({**n, "name": name, "address": address, "network_interface": interface or ""})
    return dataclasses.replace(plan, hardware={**plan.hardware, "nodes": nodes})


def _flag_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _worker_template(workers: list[NodeCommand], engine_dir: str) -> tuple[list[str], dict[str, int]]:
    """The one argv every worker runs: rank flags as $(LWS_WORKER_INDEX) (stride 1) or for the shell."""
    shapes, shell_rank = [], {}
    for n in workers:
        argv = [k8s_word(a, engine_dir) for a in n.argv]
        for flag, stride_flag in RANK_FLAGS.items():
            value = _flag_value(argv, flag)
            if value is None:
                continue
            stride = int(_flag_value(argv, stride_flag) or 1) if stride_flag else 1
            if value != str(n.rank * stride):
                raise PlanError(f"{n.node}: {flag} {value} is not rank {n.rank} x {stride}")
            i = argv.index(flag) + 1
            if stride == 1:
                argv[i] = WORKER_INDEX
            else:
                # the kubelet substitutes but cannot multiply: the pod's shell computes rank x stride
                del argv[i - 1 : i + 1]
                shell_rank[flag] = stride
        shapes.append(argv)
    if any(s != shapes[0] for s in shapes[1:]):
        raise PlanError("the workers' commands differ beyond their rank: no single LWS worker template")
    return shapes[0], shell_rank


def _env(cand: Candidate, nodes: list[NodeCommand], n: NodeCommand) -> dict[str, str]:
    """The systemd render's environment of ``n``, with the engine's own host-IP variable on the pod's IP."""
    env = {
        k: k8s_word(v) if isinstance(v, (EnvRef, EnvPath)) else str(v)
        for k, v in engine_environment(cand, nodes, n).items()
    }
    host_ip = registry.get(cand.engine).host_ip_env
    if host_ip and host_ip in env:
        env[host_ip] = f"$({POD_IP_VAR})"
    return env


def lws_commands(
    plan: Plan,
    cand: Candidate,
    model_path: str,
    ep: Endpoint,
    chat_template: Path | None = None,
    interface: str | None = None,
    engine_dir: str = "",
) -> LwsCommands:
    """The leader's and the workers' commands of ``cand`` on LWS (see the module docstring)."""
    nodes = node_commands(
        lws_plan(plan, cand, interface), cand, model_path, ep, chat_template, addresses_from_scheduler=True
    )
    for n in nodes:
        if n.pre:
            raise PlanError(
                f"candidate {cand.id!r}: {n.node} runs a command before the engine (Ray): render "
                "--target k8s takes the mp backend (--multinode-backend mp)"
            )
        if n.program != nodes[0].program:
            raise PlanError(
                f"candidate {cand.id!r}: its workers run {n.program}, not the engine: no LWS template for it"
            )
    leader = PodCommand(
        [k8s_word(a, engine_dir) for a in nodes[0].argv], _env(cand, nodes, nodes[0]), nodes[0]
    )
    worker = None
    if len(nodes) > 1:
        argv, shell_rank = _worker_template(nodes[1:], engine_dir)
        worker = PodCommand(argv, _env(cand, nodes, nodes[1]), nodes[1], shell_rank)
    return LwsCommands(leader, worker, len(nodes), nodes)


def shell_command(cmd: PodCommand) -> list[str]:
    """The container command: the argv itself, or (a rank the kubelet cannot compute) through ``sh -c``,
    which appends each such flag with ``$((LWS_WORKER_INDEX * stride))``."""
    if not cmd.shell_rank:
        return list(cmd.argv)
    extra = " ".join(f'{flag} "$((LWS_WORKER_INDEX * {stride}))"' for flag, stride in cmd.shell_rank.items())
    return ["/bin/sh", "-c", f'exec "$@" {extra}', "sh", *cmd.argv]


def env_list(env: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": k, "value": str(v)} for k, v in env.items()]


__all__ = [
    "LEADER_ADDRESS",
    "POD_IP_VAR",
    "WORKER_INDEX",
    "LwsCommands",
    "PodCommand",
    "env_list",
    "k8s_word",
    "lws_commands",
    "lws_plan",
    "shell_command",
]
