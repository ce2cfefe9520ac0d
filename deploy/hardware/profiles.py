"""Hardware as plain values: the GPU spec table and node profiles (``hardware/*.yaml``).

    >>> from deploy.hardware.profiles import load_profile, profile_from_gpus
    >>> load_profile("hardware/h200x8.yaml").nodes[0].gpu_count
    8
    >>> profile_from_gpus("2x8xH100").total_gpus
    16

A profile lists nodes; each node has homogeneous GPUs (model, count, memory), a CPU (model, physical
cores, ISA flags, NUMA nodes), RAM, free disk at the weights path, /dev/shm and a network interface.
`kimi-deploy inventory` writes the same format, so a probed node round-trips through `plan --hardware`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy import constants, schema
from deploy.errors import InputError, ProfileError
from deploy.hardware.profile_schema import PROFILE_SCHEMA


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_mib: int
    compute_capability: str
    fp8: bool
    fp4: bool
    int4_w4a16: bool
    interconnect: str
    interconnect_gbps: int
    nvml_names: tuple[str, ...] = ()
    #: HBM/GDDR bandwidth per GPU in GB/s (the vendor's figure), for the planner's decode expectation
    memory_bandwidth_gbs: float = 0.0
    #: dense BF16 tensor-core TFLOPS per GPU (the vendor's figure, no sparsity), for capacity's prefill bound
    dense_bf16_tflops: float = 0.0
    #: GPUs one node holds (HGX boards 8, a GB200 compute tray 4): how `plan --gpus` splits a count into nodes
    gpus_per_node: int = 8


@dataclass(frozen=True)
class Cpu:
    model: str
    physical_cores: int
    isa: tuple[str, ...]
    numa_nodes: int = 1
    sockets: int = 1

    def has(self, flag: str) -> bool:
        return flag in self.isa

    @property
    def has_amx(self) -> bool:
        return any(f.startswith("amx") for f in self.isa)


@dataclass(frozen=True)
class Node:
    name: str
    gpu_model: str  # a key of the GPU table, or "none"
    gpu_count: int
    gpu_memory_mib: int  # per GPU; 0 without GPUs
    cpu: Cpu
    ram_gib: float
    weights_dir: str
    disk_free_gib: float
    shm_gib: float
    network_interface: str
    address: str = "127.0.0.1"
    #: sequential read rate of weights_dir in GB/s, measured by `kimi-deploy inventory` (None: not measured)
    disk_read_gbps: float | None = None
    #: RAM bandwidth in GB/s with every core reading, and with one thread (measured by `inventory`)
    memory_bandwidth_gbs: float | None = None
    memory_bandwidth_per_thread_gbs: float | None = None
    #: the fabric to the other nodes: ``{fabric, rdma_devices, gid_index, link_gbps}`` (each optional)
    network: dict[str, Any] | None = None

    @property
    def gpu_memory_gib(self) -> float:
        return self.gpu_memory_mib / 1024


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    nodes: tuple[Node, ...]
    description: str = ""
    source: str = ""  # the file it came from, or how it was made
    #: hardware described, not probed (``plan --gpus``): node names stand in for addresses nobody has yet
    hypothetical: bool = False

    @property
    def total_gpus(self) -> int:
        return sum(n.gpu_count for n in self.nodes)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    def to_dict(self) -> dict[str, Any]:
        """The profile in the YAML/JSON file format (what `load_profile` reads)."""
        nodes = []
        for n in self.nodes:
            d = {
                "name": n.name,
                **({} if self.hypothetical else {"address": n.address}),
                "gpus": {"model": n.gpu_model, "count": n.gpu_count, "memory_mib": n.gpu_memory_mib},
                "cpu": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(n.cpu).items()},
                "ram_gib": n.ram_gib,
                "weights_dir": n.weights_dir,
                "disk_free_gib": n.disk_free_gib,
                "shm_gib": n.shm_gib,
                "network_interface": n.network_interface,
            }
            if n.disk_read_gbps is not None:
                d["disk_read_gbps"] = n.disk_read_gbps
            for key in ("memory_bandwidth_gbs", "memory_bandwidth_per_thread_gbs"):
                if getattr(n, key) is not None:
                    d[key] = getattr(n, key)
            if n.network:
                d["network"] = dict(n.network)
            nodes.append(d)
        out: dict[str, Any] = {"name": self.name, "description": self.description, "nodes": nodes}
        if self.hypothetical:
            # render refuses what needs real addresses or interfaces (deploy.serving.argv.require_real_nodes)
            out["hypothetical"] = True
        return out


_gpu_table_cache: dict[Path, dict[str, GpuSpec]] = {}
GPU_TABLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["gpus"],
    "properties": {
        "gpus": {
            "type": "object",
            "propertyNames": {"pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"},
            "additionalProperties": {
                "type": "object",
                "required": ["memory_mib", "compute_capability", "fp8", "int4_w4a16", "interconnect"],
                "properties": {
                    "memory_mib": schema.POSITIVE,
                    "interconnect_gbps": schema.COUNT,
                    "gpus_per_node": {"type": "integer", "minimum": 1, "maximum": schema.MAX_GPUS_PER_NODE},
                },
            },
        }
    },
}


def load_gpu_table(path: Path | None = None) -> dict[str, GpuSpec]:
    """The GPU spec table from ``hardware/gpus.yaml``, keyed by short name (H200, H100, RTX4090, ...)."""
    path = path or constants.HARDWARE_DIR / "gpus.yaml"
    if path in _gpu_table_cache:
        return _gpu_table_cache[path]
    raw = schema.load_yaml(path, GPU_TABLE_SCHEMA, ProfileError, missing=f"{path}: GPU spec table not found")
    raw = raw["gpus"]
    table = {}
    for name, spec in raw.items():
        try:
            table[name] = GpuSpec(
                name=name,
                memory_mib=int(spec["memory_mib"]),
                compute_capability=str(spec["compute_capability"]),
                fp8=bool(spec["fp8"]),
                fp4=bool(spec.get("fp4", False)),
                int4_w4a16=bool(spec["int4_w4a16"]),
                interconnect=str(spec["interconnect"]),
                interconnect_gbps=int(spec.get("interconnect_gbps", 0)),
                nvml_names=tuple(spec.get("nvml_names", ())),
                memory_bandwidth_gbs=float(spec.get("memory_bandwidth_gbs", 0.0)),
                dense_bf16_tflops=float(spec.get("dense_bf16_tflops", 0.0)),
                gpus_per_node=int(spec.get("gpus_per_node", 8)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{path}: gpus.{name}: missing or bad key {exc}") from None
    _gpu_table_cache[path] = table
    return table


def gpu_spec(name: str) -> GpuSpec:
    """Look a GPU up by table key or NVML name, case-insensitively."""
    table = load_gpu_table()
    wanted = name.strip().lower()
    for key, spec in table.items():
        if wanted == key.lower() or wanted in (n.lower() for n in spec.nvml_names):
            return spec
    raise InputError(f"unknown GPU {name!r}; known: {', '.join(table)}")


def _require(mapping: Any, key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ProfileError(f"{where}: missing key {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProfileError(f"{where}: key {key!r} has the wrong type ({type(value).__name__})")
    return value


def _node_from_dict(d: Any, where: str) -> Node:
    if not isinstance(d, dict):
        raise ProfileError(f"{where}: expected a mapping")
    gpus = _require(d, "gpus", where, dict)
    model = str(_require(gpus, "model", f"{where}.gpus", str))
    count = _require(gpus, "count", f"{where}.gpus", int)
    if count < 0:
        raise ProfileError(f"{where}.gpus: count must be >= 0")
    if count == 0 or model.lower() == "none":
        model, count, memory_mib = "none", 0, 0
    else:
        spec = gpu_spec(model) if "memory_mib" not in gpus else None
        try:
            spec = spec or gpu_spec(model)
            model = spec.name
        except InputError:
            if "memory_mib" not in gpus:
                raise ProfileError(
                    f"{where}.gpus: unknown GPU model {model!r} and no memory_mib given"
                ) from None
        memory_mib = int(gpus.get("memory_mib") or spec.memory_mib)
    cpu_d = _require(d, "cpu", where, dict)
    cpu = Cpu(
        model=str(cpu_d.get("model", "unknown")),
        physical_cores=_require(cpu_d, "physical_cores", f"{where}.cpu", int),
        isa=tuple(str(f) for f in _require(cpu_d, "isa", f"{where}.cpu", list)),
        numa_nodes=int(cpu_d.get("numa_nodes", 1)),
        sockets=int(cpu_d.get("sockets", 1)),
    )
    return Node(
        name=str(_require(d, "name", where, str)),
        gpu_model=model,
        gpu_count=count,
        gpu_memory_mib=memory_mib,
        cpu=cpu,
        ram_gib=float(_require(d, "ram_gib", where, (int, float))),
        weights_dir=str(d.get("weights_dir", "/models")),
        disk_free_gib=float(_require(d, "disk_free_gib", where, (int, float))),
        shm_gib=float(d.get("shm_gib", 0)),
        network_interface=str(_require(d, "network_interface", where, str)),
        address=str(d.get("address", "127.0.0.1")),
        disk_read_gbps=_read_rate(d, where),
        memory_bandwidth_gbs=_bandwidth(d, "memory_bandwidth_gbs", where),
        memory_bandwidth_per_thread_gbs=_bandwidth(d, "memory_bandwidth_per_thread_gbs", where),
        network=dict(d["network"]) if isinstance(d.get("network"), dict) else None,
    )


def _bandwidth(d: dict[str, Any], key: str, where: str) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100000:
        raise ProfileError(f"{where}.{key}: expected a number of GB/s in (0, 100000), got {value!r}")
    return float(value)


def _read_rate(d: dict[str, Any], where: str) -> float | None:
    value = d.get("disk_read_gbps")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1000:
        raise ProfileError(f"{where}.disk_read_gbps: expected a number of GB/s in (0, 1000), got {value!r}")
    return float(value)


def profile_from_dict(data: Any, source: str = "<dict>") -> HardwareProfile:
    """Validate (deploy.hardware.profile_schema) and build a profile; errors name the source and the key."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: expected a mapping at the top level")
    schema.validate(data, PROFILE_SCHEMA, source, ProfileError)
    nodes_raw = _require(data, "nodes", source, list)
    if not nodes_raw:
        raise ProfileError(f"{source}: 'nodes' is empty")
    nodes = tuple(_node_from_dict(n, f"{source}: nodes[{i}]") for i, n in enumerate(nodes_raw))
    return HardwareProfile(
        name=str(data.get("name", Path(source).stem)),
        nodes=nodes,
        description=str(data.get("description", "")),
        source=source,
    )


def load_profile(path: str | Path) -> HardwareProfile:
    """Load a hardware profile file (YAML or JSON; a name like ``h200x8`` looks in HARDWARE_DIR)."""
    p = Path(path)
    if not p.exists() and not p.suffix:
        p = constants.HARDWARE_DIR / f"{path}.yaml"
    if not p.exists():
        raise ProfileError(f"{path}: hardware profile not found")
    data = schema.load_yaml(p, None, ProfileError)
    return profile_from_dict(data, str(p))


_GPUS_RE = re.compile(r"^(?:(\d+)x)?(\d+)x([A-Za-z0-9_.-]+)$")


def _node_shape(spec: str, nodes: int | None, count: int, gpu: GpuSpec) -> tuple[int, int]:
    """(nodes, GPUs per node) for ``--gpus``: a bare count larger than one node holds (``gpu.gpus_per_node``)
    fills whole nodes; a count that does not fill them, or an explicit node wider than the GPU's node, is
    refused rather than planned as a node that cannot be bought."""
    per = gpu.gpus_per_node
    if count > per and nodes is None:
        if count % per:
            raise InputError(
                f"--gpus {spec!r}: a {gpu.name} node holds {per} GPUs and {count} is not a multiple; "
                f"write {count // per + 1}x{per}x{gpu.name} or a smaller count"
            )
        return count // per, per
    if count > per:
        raise InputError(f"--gpus {spec!r}: a {gpu.name} node holds at most {per} GPUs (gpus_per_node)")
    return nodes or 1, count


def profile_from_gpus(spec: str, ram_gib: float = 2048, cpu_cores: int = 112) -> HardwareProfile:
    """A hypothetical profile from ``8xH200`` or ``2x8xH100`` (nodes x GPUs per node x model), for
    planning hardware the user does not have yet. Host values are those of a typical HGX node; a count
    above what one node holds (the GPU table's ``gpus_per_node``) becomes several nodes.

    >>> [n.gpu_count for n in profile_from_gpus("8xGB200").nodes]
    [4, 4]
    """
    m = _GPUS_RE.match(spec.strip())
    if not m:
        raise InputError(
            f"--gpus {spec!r}: expected COUNTxMODEL or NODESxCOUNTxMODEL, e.g. 8xH200 or 2x8xH100"
        )
    n_nodes, count, model = int(m.group(1) or 1), int(m.group(2)), m.group(3)
    if n_nodes < 1 or count < 1:
        raise InputError(f"--gpus {spec!r}: counts must be at least 1")
    gpu = gpu_spec(model)
    n_nodes, count = _node_shape(spec, int(m.group(1)) if m.group(1) else None, count, gpu)
    if n_nodes > schema.MAX_NODES or count > schema.MAX_GPUS_PER_NODE:
        raise InputError(
            f"--gpus {spec!r}: at most {schema.MAX_NODES} nodes of at most {schema.MAX_GPUS_PER_NODE} GPUs"
        )
    cpu = Cpu(
        model="typical 2-socket server",
        physical_cores=cpu_cores,
        isa=("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"),
        numa_nodes=2,
        sockets=2,
    )
    nodes = tuple(
        Node(
            name=f"node{i}",
            gpu_model=gpu.name,
            gpu_count=count,
            gpu_memory_mib=gpu.memory_mib,
            cpu=cpu,
            ram_gib=ram_gib,
            weights_dir="/models",
            disk_free_gib=7000,
            shm_gib=ram_gib / 2,
            # nobody knows the interface yet: a guessed "eth0" made Gloo fail on hosts without one
            network_interface="",
            address=f"node{i}",
        )
        for i in range(n_nodes)
    )
    return HardwareProfile(
        name=spec,
        nodes=nodes,
        description=f"hypothetical {spec}",
        source=f"--gpus {spec}",
        hypothetical=True,
    )


def available_profiles() -> list[str]:
    return sorted(p.stem for p in constants.HARDWARE_DIR.glob("*.yaml") if p.stem != "gpus")


__all__ = [
    "Cpu",
    "GpuSpec",
    "HardwareProfile",
    "Node",
    "available_profiles",
    "gpu_spec",
    "load_gpu_table",
    "load_profile",
    "profile_from_dict",
    "profile_from_gpus",
]
