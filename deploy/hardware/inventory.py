"""Probe this node into a hardware profile (the ``hardware/*.yaml`` format) for `kimi-deploy inventory`.

    >>> from deploy.hardware.inventory import probe
    >>> profile = probe("/data/models")
    >>> profile.head.gpu_count, profile.head.cpu.physical_cores  # doctest: +SKIP
    (0, 2)

GPUs come from NVML (nvidia-ml-py), then ``nvidia-smi``, then "no GPU". Host values come from psutil,
/proc/cpuinfo, /sys/devices/system/node, /proc/net/route and ``shutil.disk_usage``. Every probe takes
its input (a path, a text, a module or a callable) as a parameter, so tests feed it recorded outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import yaml

from deploy.constants import GIB, MIB
from deploy.errors import InputError
from deploy.hardware.profiles import Cpu, HardwareProfile, Node, gpu_spec

#: The ISA flags the planner and engines care about (AVX2/AVX-512 kernels, AMX for KTransformers).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=name,memory.total,compute_cap",
    "--format=csv,noheader,nounits",
]

DEFAULT_WEIGHTS_DIR = "models"  # relative to the working directory


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the driver reports it."""

    name: str
    memory_mib: int
    compute_capability: str


@dataclass(frozen=True)
class CpuInfo:
    """What /proc/cpuinfo says about the CPU."""

    model: str
    isa: tuple[str, ...]
    sockets: int
    physical_cores: int  # distinct (physical id, core id) pairs; 0 when cpuinfo lacks them


# --- GPUs ---------------------------------------------------------------------------------------------


def gpus_from_nvml(nvml: ModuleType | Any) -> list[GpuInfo]:
    """Read the GPUs through an NVML binding (``import pynvml``); raises the binding's NVMLError.

    >>> import pynvml
    >>> gpus_from_nvml(pynvml)  # doctest: +SKIP
    [GpuInfo(name='NVIDIA H100 80GB HBM3', memory_mib=81559, compute_capability='9.0'), ...]
    """
    nvml.nvmlInit()
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            # Bindings before nvidia-ml-py 11.515 return bytes.
            name = name.decode() if isinstance(name, bytes) else str(name)
            total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    name=name.strip(),
                    memory_mib=total // MIB,
                    compute_capability=f"{major}.{minor}",
                )
            )
        return gpus
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def parse_nvidia_smi_csv(text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits``.

    >>> parse_nvidia_smi_csv("NVIDIA GeForce RTX 4090, 24564, 8.9\\n")
    [GpuInfo(name='NVIDIA GeForce RTX 4090', memory_mib=24564, compute_capability='8.9')]
    """
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        # Names may hold commas in theory, so split the two numeric columns off the right.
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3:
            raise InputError(f"nvidia-smi: unexpected line {line.strip()!r}")
        name, memory, cc = parts
        try:
            gpus.append(GpuInfo(name=name, memory_mib=int(float(memory)), compute_capability=cc))
        except ValueError:
            raise InputError(f"nvidia-smi: unexpected memory.total {memory!r} in {line.strip()!r}") from None
    return gpus


def _run_nvidia_smi() -> str | None:
    try:
        done = subprocess.run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _import_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def probe_gpus(
    nvml: ModuleType | Any | None = None, nvidia_smi: Callable[[], str | None] = _run_nvidia_smi
) -> tuple[list[GpuInfo], str]:
    """The GPUs and how they were found: ``"nvml"``, ``"nvidia-smi"`` or ``"none"``.

    ``nvml`` defaults to the installed pynvml; ``nvidia_smi`` returns the CSV, or None when the tool is
    missing or fails.
    """
    nvml = nvml if nvml is not None else _import_nvml()
    if nvml is not None:
        try:
            return gpus_from_nvml(nvml), "nvml"
        except Exception:  # any NVML failure (no library, no driver, no device) means: try nvidia-smi
            pass
    text = nvidia_smi()
    if text is not None:
        gpus = parse_nvidia_smi_csv(text)
        if gpus:
            return gpus, "nvidia-smi"
    return [], "none"


def summarize_gpus(gpus: Sequence[GpuInfo]) -> tuple[str, int, int, str]:
    """Reduce the probed GPUs to a node's (model, count, memory_mib per GPU, note).

    A node is homogeneous: with mixed GPUs the most numerous model is kept and the note names the rest.
    The model is the GPU table's key when the NVML name is known, else the NVML name itself (the
    measured memory goes with it, which is what lets `load_profile` accept an unknown model).

    >>> summarize_gpus([GpuInfo("NVIDIA H100 80GB HBM3", 81559, "9.0")] * 8)
    ('H100', 8, 81559, '8x NVIDIA H100 80GB HBM3 (sm 9.0)')
    """
    if not gpus:
        return "none", 0, 0, "none found"
    counts = Counter(g.name for g in gpus)
    name, count = counts.most_common(1)[0]
    kept = [g for g in gpus if g.name == name]
    try:
        model = gpu_spec(name).name
    except InputError:
        model = name
    note = f"{count}x {name} (sm {kept[0].compute_capability})"
    others = [f"{n}x {other}" for other, n in counts.items() if other != name]
    if others:
        note += f"; ignored {', '.join(others)} (a node profile holds one GPU model)"
    return model, count, min(g.memory_mib for g in kept), note


# --- CPU, NUMA, memory --------------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> CpuInfo:
    """Model name, ISA flags of interest, sockets and physical cores from /proc/cpuinfo text.

    >>> parse_cpuinfo("model name : Xeon\\nphysical id : 0\\ncore id : 0\\nflags : fpu avx2 amx_tile\\n")
    CpuInfo(model='Xeon', isa=('avx2', 'amx_tile'), sockets=1, physical_cores=1)
    """
    model, flags = "unknown", set()
    sockets, cores = set(), set()
    physical_id = "0"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "model name" and model == "unknown":
            model = " ".join(value.split())
        elif key == "flags":
            flags.update(value.split())
        elif key == "physical id":
            physical_id = value
            sockets.add(value)
        elif key == "core id":
            cores.add((physical_id, value))
    return CpuInfo(
        model=model,
        isa=tuple(f for f in ISA_FLAGS if f in flags),
        sockets=max(1, len(sockets)),
        physical_cores=len(cores),
    )


def count_numa_nodes(sys_node_dir: str | Path = "/sys/devices/system/node") -> int:
    """NUMA nodes = the ``node<N>`` directories; 1 when the kernel exposes none."""
    root = Path(sys_node_dir)
    try:
        found = [p for p in root.iterdir() if p.name.startswith("node") and p.name[4:].isdigit()]
    except OSError:
        return 1
    return max(1, len(found))


def physical_cores(cpuinfo: CpuInfo) -> int:
    """psutil's physical core count, else cpuinfo's, else the logical count."""
    return psutil.cpu_count(logical=False) or cpuinfo.physical_cores or os.cpu_count() or 1


# --- disk -------------------------------------------------------------------------------------------


def nearest_existing(path: str | Path) -> Path:
    """The path itself or its nearest existing ancestor (where the weights dir will be created)."""
    p = Path(path).expanduser().absolute()
    for candidate in (p, *p.parents):
        try:
            candidate.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except ValueError as exc:
            raise InputError(f"--weights-dir {str(path)!r}: not a usable path ({exc})") from None
        except OSError as exc:
            raise InputError(
                f"--weights-dir {str(path)!r}: cannot stat {candidate} ({exc.strerror})"
            ) from None
        if not candidate.is_dir():
            raise InputError(f"--weights-dir {str(path)!r}: {candidate} is not a directory")
        return candidate
    raise InputError(f"--weights-dir {str(path)!r}: no existing parent directory")


def disk_free_gib(path: str | Path) -> float:
    """Free space in GiB on the filesystem that holds (or will hold) ``path``."""
    return shutil.disk_usage(nearest_existing(path)).free / GIB


#: The read-rate probe: at most this many bytes and this many seconds, on an existing file of at least
#: READ_PROBE_MIN_FILE bytes under the weights folder, else on a temporary file it writes and removes.
READ_PROBE_BYTES = 256 * MIB
READ_PROBE_MAX_S = 3.0
READ_PROBE_TEMP_BYTES = 64 * MIB
READ_PROBE_MIN_FILE = 64 * MIB
#: Files looked at when searching the weights folder for a large one.
READ_PROBE_SCAN = 2000


def _largest_file(root: Path) -> Path | None:
    best, size, seen = None, READ_PROBE_MIN_FILE - 1, 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            seen += 1
            if seen > READ_PROBE_SCAN:
                return best
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                st = p.stat()
                if p.is_file() and st.st_size > size:
                    best, size = p, st.st_size
    return best


def _timed_read(path: Path, limit: int, max_s: float) -> tuple[int, float]:
    """(bytes, seconds) of a sequential read of ``path``, page cache dropped first (POSIX_FADV_DONTNEED)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.set_blocking(fd, True)
        total, t0 = 0, time.monotonic()
        while total < limit and time.monotonic() - t0 < max_s:
            chunk = os.read(fd, 8 * MIB)
            if not chunk:
                break
            total += len(chunk)
        return total, time.monotonic() - t0
    finally:
        os.close(fd)


def read_rate_gbps(weights_dir: str | Path) -> float | None:
    """The sequential read rate (GB/s) of the filesystem that holds ``weights_dir``: a bounded read
    (READ_PROBE_BYTES, READ_PROBE_MAX_S) of its largest file, or of a temporary file written, synced and
    dropped from the page cache, then removed. None when nothing could be measured (read-only, full disk).

    >>> read_rate_gbps("/data/models")  # doctest: +SKIP
    1.84
    """
    root = nearest_existing(weights_dir)
    target = _largest_file(root) if Path(weights_dir).expanduser().exists() else None
    tmp: Path | None = None
    try:
        if target is None:
            fd, name = tempfile.mkstemp(prefix=".kimi-deploy-read-probe.", dir=root)
            tmp = Path(name)
            with os.fdopen(fd, "wb") as fh:
                block = os.urandom(MIB)
                for _ in range(READ_PROBE_TEMP_BYTES // MIB):
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
            target = tmp
        nbytes, seconds = _timed_read(target, READ_PROBE_BYTES, READ_PROBE_MAX_S)
    except OSError:
        return None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if nbytes < MIB or seconds <= 0:
        return None
    return round(nbytes / seconds / 1e9, 3)


def shm_gib(shm: str | Path = "/dev/shm") -> float:
    """Size of /dev/shm in GiB (engines put NCCL and multiprocessing buffers there); 0 when absent."""
    try:
        return shutil.disk_usage(shm).total / GIB
    except OSError:
        return 0.0


# --- network ------------------------------------------------------------------------------------------


def default_route_interface(route_text: str) -> str | None:
    """The interface of the default route in /proc/net/route text (destination 0, flag RTF_UP)."""
    best: tuple[int, str] | None = None
    for line in route_text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 7:
            continue
        iface, dest, flags, metric = cols[0], cols[1], cols[3], cols[6]
        try:
            up = int(flags, 16) & 0x1
            metric_n = int(metric)
        except ValueError:
            continue
        if dest == "00000000" and up and (best is None or metric_n < best[0]):
            best = (metric_n, iface)
    return best[1] if best else None


def pick_interface(route_text: str, if_stats: dict[str, Any]) -> str:
    """The default route's interface, else the first up non-loopback one, else ``lo``."""
    iface = default_route_interface(route_text)
    if iface:
        return iface
    for name in sorted(if_stats):
        stats = if_stats[name]
        if stats.isup and name != "lo" and "loopback" not in str(getattr(stats, "flags", "")):
            return name
    return "lo"


def interface_address(iface: str, if_addrs: dict[str, list[Any]]) -> str:
    """The first IPv4 address of ``iface``; 127.0.0.1 when it has none."""
    for addr in if_addrs.get(iface, []):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return "127.0.0.1"


def probe_network(iface: str, sys_class: str | Path = "/sys/class") -> dict[str, Any]:
    """The profile's ``network`` facts: the RDMA devices (their ports' link layer says InfiniBand or RoCE)
    and the interface's link speed, from sysfs. ``gid_index`` is left to the profile's author (RoCE v2
    usually 3, but only the fabric's admin knows).

    >>> probe_network("lo", "/nonexistent")
    {'fabric': 'ethernet'}
    """
    root = Path(sys_class)
    devices, layers = [], set()
    for dev in sorted((root / "infiniband").glob("*")):
        devices.append(dev.name)
        for port in (dev / "ports").glob("*"):
            with contextlib.suppress(OSError):
                layers.add((port / "link_layer").read_text().strip())
    fabric = "infiniband" if "InfiniBand" in layers else "roce" if devices else "ethernet"
    out: dict[str, Any] = {"fabric": fabric}
    if devices:
        out["rdma_devices"] = devices
    with contextlib.suppress(OSError, ValueError):
        speed = int((root / "net" / iface / "speed").read_text().strip())
        if speed > 0:  # virtual links report -1
            out["link_gbps"] = speed / 1000
    return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# --- the node -----------------------------------------------------------------------------------------


def _copy_rate_gbs(size_mib: int, seconds: float) -> float:
    """Best STREAM-style copy rate of one thread over ``seconds``: bytes read + written per second, GB/s."""
    import numpy as np

    # both arrays written first, so no page fault lands inside a timed copy
    a = np.ones(size_mib * MIB // 8)
    b = np.ones_like(a)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        np.copyto(b, a)
        dt = time.perf_counter() - t0
        if dt > 0:
            best = max(best, 2 * a.nbytes / dt)
    return best / 1e9


def measure_memory_bandwidth(
    workers: int, seconds: float = 0.5, max_workers: int = 16
) -> tuple[float, float]:
    """(all workers, one thread) RAM copy bandwidth in GB/s: a short bounded probe (about 2 x ``seconds``
    plus process start-up) with one process per physical core, at most ``max_workers``.

    >>> measure_memory_bandwidth(2)  # doctest: +SKIP
    (14.2, 8.9)
    """
    one = _copy_rate_gbs(64, seconds)
    n = max(1, min(workers, max_workers))
    if n == 1:
        return round(one, 2), round(one, 2)
    size = 64 if n <= 4 else 32
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("fork")) as pool:
        rates = list(pool.map(_copy_rate_gbs, [size] * n, [seconds] * n, timeout=60 + 4 * seconds))
    return round(max(sum(rates), one), 2), round(one, 2)


def probe(
    weights_dir: str | Path | None = None,
    *,
    memory_bandwidth: bool = False,
    nvml: ModuleType | Any | None = None,
    nvidia_smi: Callable[[], str | None] = _run_nvidia_smi,
    cpuinfo_text: str | None = None,
    sys_node_dir: str | Path = "/sys/devices/system/node",
    route_text: str | None = None,
    measure_read: bool = True,
) -> HardwareProfile:
    """Probe this node into a one-node hardware profile named after the hostname.

    ``measure_read`` runs the weights folder's read-rate probe (read_rate_gbps, a few seconds at most); the
    plan's time to ready uses it.

    The keyword arguments replace a source (NVML module, nvidia-smi runner, cpuinfo text, NUMA tree,
    route table) for tests; by default each is read from this machine. ``memory_bandwidth`` runs the short
    RAM bandwidth probe (:func:`measure_memory_bandwidth`, about a second) for the decode expectation.

    >>> probe("/data/models").to_dict()["nodes"][0]["gpus"]  # doctest: +SKIP
    {'model': 'none', 'count': 0, 'memory_mib': 0}
    """
    weights = Path(weights_dir if weights_dir is not None else DEFAULT_WEIGHTS_DIR).expanduser()
    disk = disk_free_gib(weights)
    gpus, gpu_source = probe_gpus(nvml, nvidia_smi)
    model, count, memory_mib, gpu_note = summarize_gpus(gpus)
    cpuinfo = parse_cpuinfo(cpuinfo_text if cpuinfo_text is not None else _read("/proc/cpuinfo"))
    iface = pick_interface(
        route_text if route_text is not None else _read("/proc/net/route"), psutil.net_if_stats()
    )
    host = socket.gethostname() or "localhost"
    node = Node(
        name=host,
        gpu_model=model,
        gpu_count=count,
        gpu_memory_mib=memory_mib,
        cpu=Cpu(
            model=cpuinfo.model,
            physical_cores=physical_cores(cpuinfo),
            isa=cpuinfo.isa,
            numa_nodes=count_numa_nodes(sys_node_dir),
            sockets=cpuinfo.sockets,
        ),
        ram_gib=round(psutil.virtual_memory().total / GIB, 2),
        weights_dir=str(weights.absolute()),
        disk_free_gib=round(disk, 2),
        shm_gib=round(shm_gib(), 2),
        network_interface=iface,
        address=interface_address(iface, psutil.net_if_addrs()),
        disk_read_gbps=read_rate_gbps(weights) if measure_read else None,
        network=probe_network(iface),
    )
    if memory_bandwidth:
        total, one = measure_memory_bandwidth(node.cpu.physical_cores)
        node = dataclasses.replace(node, memory_bandwidth_gbs=total, memory_bandwidth_per_thread_gbs=one)
    how = "NVML and nvidia-smi" if gpu_source == "none" else gpu_source
    return HardwareProfile(
        name=host,
        nodes=(node,),
        description=f"probed on {host}; GPUs ({how}): {gpu_note}",
        source=f"kimi-deploy inventory on {host}",
    )


def dump_profile(profile: HardwareProfile, as_json: bool = False) -> str:
    """The profile as the text of a ``hardware/*.yaml`` file (or JSON), which `load_profile` reads back.

    >>> print(dump_profile(probe()))  # doctest: +SKIP
    name: vm
    ...
    """
    data = profile.to_dict()
    if as_json:
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


__all__ = [
    "CpuInfo",
    "GpuInfo",
    "ISA_FLAGS",
    "count_numa_nodes",
    "default_route_interface",
    "disk_free_gib",
    "dump_profile",
    "gpus_from_nvml",
    "interface_address",
    "nearest_existing",
    "parse_cpuinfo",
    "parse_nvidia_smi_csv",
    "pick_interface",
    "probe",
    "probe_gpus",
    "shm_gib",
    "summarize_gpus",
]
