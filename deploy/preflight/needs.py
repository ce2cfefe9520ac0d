"""What a plan needs from its nodes, read from plan.json: ports, GPUs, driver, /dev/shm, disk, RAM, ISA.

>>> from deploy.preflight.needs import plan_needs
>>> needs = plan_needs(plan)                    # doctest: +SKIP
>>> needs.ports                                 # doctest: +SKIP
{'engine': 8001, 'rpc_port': 50052}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.constants import GIB, MIB
from deploy.engines import registry
from deploy.engines.builds import LLAMA_CPP_CACHE_SUBDIR
from deploy.errors import InputError, PlanError
from deploy.hardware.profiles import gpu_spec
from deploy.preflight.driver import DriverNeed, required_driver

#: Docker's default /dev/shm, under which the engines' own CPU and one-GPU starts are documented to run.
SHM_FLOOR = 64 * MIB
#: NCCL's SHM transport between the GPUs of a node: NCCL's troubleshooting guide asks containers for
#: ``--shm-size=1g`` (docs.nvidia.com/deeplearning/nccl/user-guide/docs/troubleshooting.html).
SHM_MULTI_GPU = 1 * GIB


@dataclass(frozen=True)
class Needs:
    engine: str
    nodes: list[dict[str, Any]]
    gpus_per_node: int
    gpu_model: str
    driver: DriverNeed | None
    shm_bytes: int
    weights_bytes: int
    weights_dir: str
    host_ram_bytes: int
    isa: dict[str, list[str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    nvswitch: bool = False
    #: what ``facts.engine_version`` is asked: the engine venv and its distribution, or the llama.cpp cache
    engine_probe: dict[str, str] = field(default_factory=dict)
    #: a prefill/decode split's KV transfer path (None: aggregated replicas)
    transfer: Transfer | None = None

    def ports_on(self, node: str) -> dict[str, int]:
        """Every port ``node`` listens on: the plan's, and the KV transfer's where the node listens."""
        return {**self.ports, **(self.transfer.ports_on(node) if self.transfer else {})}


@dataclass(frozen=True)
class TransferListener:
    """One node that listens for the KV transfer: its ``role``, its ports by name, and the nodes of the
    other role that connect to it (``clients``)."""

    node: str
    role: str
    ports: dict[str, int]
    clients: tuple[str, ...]


@dataclass(frozen=True)
class Transfer:
    """The KV transfer path of a prefill/decode split: the backend, the RDMA devices it moves KV over
    (plan.json ``fleet.disaggregation.rdma_devices``), each node's role and who listens where.

    >>> t = Transfer("mooncake", ("mlx5_0",), {"n0": "prefill", "n1": "decode"},
    ...              (TransferListener("n0", "prefill", {"KV bootstrap": 8998}, ("n1",)),))
    >>> t.ports_on("n0"), t.ports_on("n1")
    ({'KV bootstrap': 8998}, {})
    """

    backend: str
    rdma_devices: tuple[str, ...]
    roles: dict[str, str]
    listeners: tuple[TransferListener, ...]

    def ports_on(self, node: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for listener in self.listeners:
            if listener.node == node:
                out.update(listener.ports)
        return out


def chosen(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan's chosen candidate; PlanError when the plan chose none."""
    for c in plan.get("candidates", []):
        if c.get("id") == plan.get("chosen"):
            return dict(c)
    raise PlanError(f"plan.json: chosen candidate {plan.get('chosen')!r} is not among its candidates")


def plan_ports(plan: dict[str, Any], candidate: dict[str, Any]) -> dict[str, int]:
    """Every port the deployment listens on: the engine's, its multi-node ones, the router's and replicas'."""
    args = candidate.get("engine_args") or {}
    ports = {"engine": int(args["port"])} if isinstance(args.get("port"), int) else {}
    multinode = args.get("multinode") or {}
    for key in ("master_port", "dist_init_port", "rpc_port", "ray_port"):
        if isinstance(multinode.get(key), int):
            ports[key] = multinode[key]
    fleet = plan.get("fleet") or {}
    router = fleet.get("router") or {}
    for key in ("port", "metrics_port"):
        if isinstance(router.get(key), int):
            ports[f"router_{key}"] = router[key]
    for replica in fleet.get("replicas") or []:
        if isinstance(replica.get("port"), int):
            ports[f"replica_{replica.get('id', '')}"] = replica["port"]
    return ports


def _dp_ranks_on(candidate: dict[str, Any], index: int) -> range:
    """The data-parallel ranks the ``index``-th node of one instance of ``candidate`` holds (spread evenly,
    head first: DP 8 on one node holds 0-7; DP 1 on two nodes, TP across them, holds 0 on the head only)."""
    dp = max(1, int(candidate.get("data_parallel") or 1))
    per_node = max(1, dp // max(1, int(candidate.get("nodes") or 1)))
    return range(index * per_node, min(dp, (index + 1) * per_node))


def transfer_needs(plan: dict[str, Any]) -> Transfer | None:
    """The KV transfer path of a prefill/decode split (plan.json ``fleet.mode`` "disaggregated"), None for
    aggregated replicas. A prefill instance's bootstrap server (``bootstrap_port``) runs with its HTTP
    server, on the instance's head node, and every decode node asks it; each instance's side channel
    (``side_channel_port``, plus the data-parallel rank where the engine says so) listens on its nodes and
    the other role's nodes connect to it."""
    fleet = plan.get("fleet") or {}
    split = fleet.get("disaggregation")
    if fleet.get("mode") != "disaggregated" or not isinstance(split, dict):
        return None
    replicas = [r for r in fleet.get("replicas") or [] if r.get("role") in ("prefill", "decode")]
    roles = {str(n): str(r["role"]) for r in replicas for n in r.get("nodes") or []}
    by_role = {role: [n for n, rr in roles.items() if rr == role] for role in ("prefill", "decode")}
    other = {"prefill": tuple(by_role["decode"]), "decode": tuple(by_role["prefill"])}
    candidates = {str(c.get("id")): c for c in plan.get("candidates") or []}
    listeners: list[TransferListener] = []
    bootstrap, side = split.get("bootstrap_port"), split.get("side_channel_port")
    for r in replicas:
        role, nodes = str(r["role"]), [str(n) for n in r.get("nodes") or []]
        cand = candidates.get(str((split.get(role) or {}).get("candidate")), {})
        for i, node in enumerate(nodes):
            ports: dict[str, int] = {}
            if isinstance(bootstrap, int) and role == "prefill" and i == 0:
                ports["KV bootstrap"] = bootstrap
            if isinstance(side, int):
                ranks = _dp_ranks_on(cand, i) if _side_channel_per_rank(cand) else range(int(i == 0))
                for rank in ranks:
                    ports[f"KV side channel{f' (DP rank {rank})' if rank else ''}"] = side + rank
            if ports:
                listeners.append(TransferListener(node, role, ports, other[role]))
    return Transfer(
        backend=str(split.get("transfer_backend") or ""),
        rdma_devices=tuple(str(d) for d in split.get("rdma_devices") or ()),
        roles=roles,
        listeners=tuple(listeners),
    )


def _side_channel_per_rank(candidate: dict[str, Any]) -> bool:
    try:
        spec = registry.get(str(candidate.get("engine", ""))).disaggregation
    except InputError:  # an engine the registry lacks: one side channel per instance
        return False
    return spec is not None and spec.side_channel_per_dp_rank


def _plan_nodes(plan: dict[str, Any], c: dict[str, Any], transfer: Transfer | None) -> list[dict[str, Any]]:
    """The nodes pre-flight checks, head first: the chosen candidate's; in a prefill/decode split every
    node a role runs on (each runs an engine and takes part in the KV transfer)."""
    nodes = list((plan.get("hardware") or {}).get("nodes") or [])
    if transfer is not None:
        return [n for n in nodes if str(n.get("name")) in transfer.roles]
    return nodes[: max(1, int(c.get("nodes") or 1))]


def plan_needs(plan: dict[str, Any]) -> Needs:
    """The needs of ``plan``'s chosen candidate on each of its nodes (every role's, in a split)."""
    c = chosen(plan)
    transfer = transfer_needs(plan)
    nodes = _plan_nodes(plan, c, transfer)
    if not nodes:
        raise PlanError("plan.json: hardware.nodes is empty; re-run `kimi-deploy plan`")
    gpus = int(c.get("gpus_per_node") or 0)
    weights = c.get("weights") or {}
    builds = (c.get("engine_args") or {}).get("builds") or {}
    head_gpus = nodes[0].get("gpus") or {}
    return Needs(
        engine=str(c.get("engine", "")),
        nodes=nodes,
        gpus_per_node=gpus,
        gpu_model=str(head_gpus.get("model", "none")),
        driver=required_driver(str(c.get("engine", ""))) if gpus else None,
        shm_bytes=SHM_MULTI_GPU if gpus > 1 else SHM_FLOOR,
        weights_bytes=int(weights.get("bytes") or 0),
        weights_dir=str(weights.get("local_dir") or Path(str(nodes[0].get("weights_dir", "models")))),
        host_ram_bytes=int(float((c.get("memory") or {}).get("host") or 0) * GIB),
        isa={name: list(b.get("cpu_isa") or []) for name, b in builds.items() if isinstance(b, dict)},
        ports=plan_ports(plan, c),
        nvswitch=gpus >= 8 and _nvlink(str(head_gpus.get("model", ""))),
        engine_probe=engine_probe(str(c.get("engine", ""))),
        transfer=transfer,
    )


def engine_probe(engine: str) -> dict[str, str]:
    """Where a node holds the pinned ``engine``: its venv and the distribution it installs, or (a cache
    build) the llama.cpp cache folder, ``~`` standing for the ssh user's home on the other nodes.

    >>> engine_probe("vllm")["engine_dist"]
    'vllm'
    """
    try:
        install = registry.get(engine).install
    except InputError:  # an engine the registry lacks has nothing to probe
        return {}
    if install.venv and install.packages:
        return {
            "engine_venv": f"{constants.ENGINE_VENV_ROOT}/{install.venv}",
            "engine_dist": install.packages[0].split("==")[0],
        }
    if install.cache_install:
        cache = constants.CACHE_DIR / LLAMA_CPP_CACHE_SUBDIR
        home = Path.home()
        shown = f"~/{cache.relative_to(home)}" if cache.is_relative_to(home) else str(cache)
        return {"llama_cpp_builds": shown}
    return {}


def _nvlink(model: str) -> bool:
    """HGX boards: 8 SXM GPUs on NVLink go through NVSwitches, which the fabric manager must bring up."""
    try:
        return gpu_spec(model).interconnect == "nvlink"
    except InputError:  # an unknown model is not an NVSwitch board we know of
        return False
