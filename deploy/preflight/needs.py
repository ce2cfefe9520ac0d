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


def plan_needs(plan: dict[str, Any]) -> Needs:
    """The needs of ``plan``'s chosen candidate on each of its nodes."""
    c = chosen(plan)
    nodes = list((plan.get("hardware") or {}).get("nodes") or [])[: max(1, int(c.get("nodes") or 1))]
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
