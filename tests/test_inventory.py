"""`kimi-deploy inventory`: the real no-GPU path on this machine, and recorded GPU/CPU/route outputs.

The GPU paths cannot run for real here (no GPU, no NVML library), so they are fed outputs in the tools'
exact formats (tests/fixtures/inventory/) or a small fake NVML module (a mock, standing in for a driver).
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pynvml
import pytest
import yaml

from deploy.constants import GIB, MIB
from deploy.errors import InputError
from deploy.hardware import inventory
from deploy.hardware.profiles import gpu_spec, load_profile, profile_from_dict

FIXTURES = Path(__file__).parent / "fixtures" / "inventory"
KD = [sys.executable, "-m", "deploy"]
REPO = Path(__file__).resolve().parents[1]


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_GPU = _nvml_works() or shutil.which("nvidia-smi") is not None


def _kd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KD, *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)


def _cpuinfo_facts(text: str) -> tuple[set[str], set[str], int]:
    """Flags, socket ids and physical cores, read the simple way (per-socket 'cpu cores' x sockets)."""
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    sockets = set(re.findall(r"^physical id\s*:\s*(\d+)", text, re.M))
    cores_per_socket = int(re.search(r"^cpu cores\s*:\s*(\d+)", text, re.M).group(1))
    return flags, sockets, cores_per_socket * len(sockets)


class FakeNvml:
    """A mock NVML binding (pynvml's call surface) reporting recorded device values; there is no GPU here."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[tuple[str | bytes, int, tuple[int, int]]], fail_init: bool = False):
        self.devices = devices
        self.fail_init = fail_init
        self.shut_down = False

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetName(self, h: int) -> str | bytes:  # noqa: N802
        return self.devices[h][0]

    def nvmlDeviceGetMemoryInfo(self, h: int):  # noqa: N802
        return type("Memory", (), {"total": self.devices[h][1], "free": self.devices[h][1], "used": 0})()

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:  # noqa: N802
        return self.devices[h][2]


def _no_smi() -> None:
    return None


# --- the real node ------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_GPU, reason="this test checks the no-GPU path of a machine without GPUs")
def test_this_machine_has_no_gpu_and_reports_its_host(tmp_path: Path) -> None:
    profile = inventory.probe(tmp_path / "models")
    node = profile.head
    assert (node.gpu_model, node.gpu_count, node.gpu_memory_mib) == ("none", 0, 0)
    assert profile.name == node.name == socket.gethostname()
    assert node.cpu.physical_cores == psutil.cpu_count(logical=False)
    assert node.ram_gib == pytest.approx(psutil.virtual_memory().total / GIB, abs=0.01)
    flags, sockets, _ = _cpuinfo_facts(Path("/proc/cpuinfo").read_text())
    assert set(node.cpu.isa) == flags & set(inventory.ISA_FLAGS)
    assert node.cpu.sockets == max(1, len(sockets))
    sys_nodes = [p for p in Path("/sys/devices/system/node").glob("node*") if p.name[4:].isdigit()]
    assert node.cpu.numa_nodes == max(1, len(sys_nodes))
    assert node.weights_dir == str(tmp_path / "models")
    assert node.disk_free_gib == pytest.approx(shutil.disk_usage(tmp_path).free / GIB, abs=1.0)
    assert node.shm_gib == pytest.approx(shutil.disk_usage("/dev/shm").total / GIB, abs=0.01)
    assert node.network_interface in psutil.net_if_stats()
    ipv4 = [
        a.address for a in psutil.net_if_addrs().get(node.network_interface, []) if a.family == socket.AF_INET
    ]
    assert node.address == (ipv4[0] if ipv4 else "127.0.0.1")


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without NVML and nvidia-smi")
def test_real_nvml_and_nvidia_smi_are_absent_here() -> None:
    with pytest.raises(pynvml.NVMLError):
        inventory.gpus_from_nvml(pynvml)
    assert inventory._run_nvidia_smi() is None
    assert inventory.probe_gpus() == ([], "none")


def test_cli_yaml_round_trips_through_load_profile(tmp_path: Path) -> None:
    out = tmp_path / "this-node.yaml"
    done = _kd("inventory", "--weights-dir", str(tmp_path / "w"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    written = yaml.safe_load(out.read_text())
    loaded = load_profile(out)
    assert loaded.to_dict() == written
    assert loaded.head.cpu.physical_cores == psutil.cpu_count(logical=False)
    assert loaded.head.weights_dir == str(tmp_path / "w")
    assert oct(out.stat().st_mode & 0o777) == oct(0o644)
    assert not list(tmp_path.glob(".this-node.yaml.*"))  # no temp file left behind


def test_cli_json_matches_yaml(tmp_path: Path) -> None:
    as_yaml = _kd("inventory", "--weights-dir", str(tmp_path))
    as_json = _kd("inventory", "--weights-dir", str(tmp_path), "--json")
    assert as_yaml.returncode == as_json.returncode == 0, as_yaml.stderr + as_json.stderr
    y, j = yaml.safe_load(as_yaml.stdout), json.loads(as_json.stdout)
    for d in (y, j):
        d["nodes"][0].pop("disk_free_gib")  # the disk may change between the two runs
        # measured twice: RAM bandwidth varies between runs, but both runs measured it
        for key in ("memory_bandwidth_gbs", "memory_bandwidth_per_thread_gbs"):
            assert d["nodes"][0].pop(key) > 0
        d["nodes"][0].pop("disk_read_gbps", None)  # and so does its measured read rate
    assert y == j
    assert (
        profile_from_dict(json.loads(as_json.stdout), "stdout").to_dict()["nodes"][0]["cpu"]
        == y["nodes"][0]["cpu"]
    )


def test_cli_output_json_by_suffix(tmp_path: Path) -> None:
    out = tmp_path / "node.json"
    assert _kd("inventory", "--weights-dir", str(tmp_path), "-o", str(out)).returncode == 0
    assert load_profile(out).to_dict() == json.loads(out.read_text())


@pytest.mark.skipif(
    not (REPO / "deploy" / "cli" / "plan_cmd.py").exists(), reason="planner CLI not built yet"
)
def test_inventory_output_is_accepted_by_plan(tmp_path: Path) -> None:
    out = tmp_path / "this-node.yaml"
    assert _kd("inventory", "--weights-dir", str(tmp_path), "-o", str(out)).returncode == 0
    done = _kd("plan", "--hardware", str(out))
    # 0 (something runs) or 3 (nothing runnable) are answers; 2 would mean the profile was rejected.
    assert done.returncode in (0, 3), done.stderr


@pytest.mark.parametrize(
    "weights_dir, why",
    [("{file}/models", "is not a directory"), ("{file}", "is not a directory")],
)
def test_bad_weights_dir_is_one_line_exit_2(tmp_path: Path, weights_dir: str, why: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    done = _kd("inventory", "--weights-dir", weights_dir.format(file=a_file))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --weights-dir")
    assert why in done.stderr and "Traceback" not in done.stderr


def test_weights_dir_with_nul_byte_is_input_error() -> None:
    with pytest.raises(InputError, match="not a usable path"):
        inventory.nearest_existing("/tmp/bad\x00dir")


def test_missing_weights_dir_measures_nearest_parent(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    assert inventory.nearest_existing(deep) == tmp_path
    assert inventory.disk_free_gib(deep) == pytest.approx(shutil.disk_usage(tmp_path).free / GIB, abs=1.0)


# --- recorded GPU outputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture, profile_file",
    [("nvidia-smi-h100x8.csv", "h100x8"), ("nvidia-smi-rtx4090.csv", "rtx4090-256g")],
)
def test_nvidia_smi_recorded_output(tmp_path: Path, fixture: str, profile_file: str) -> None:
    csv = (FIXTURES / fixture).read_text()
    rows = [line.split(", ") for line in csv.splitlines() if line.strip()]
    # The real NVML binding fails here (no library), so probe() really falls through to nvidia-smi.
    nvml = pynvml if not HAS_GPU else FakeNvml([], fail_init=True)
    profile = inventory.probe(tmp_path, nvml=nvml, nvidia_smi=lambda: csv)
    node = profile.head
    assert node.gpu_model == gpu_spec(rows[0][0]).name
    assert node.gpu_count == len(rows)
    assert node.gpu_memory_mib == int(rows[0][1])
    assert "(nvidia-smi)" in profile.description and f"sm {rows[0][2]}" in profile.description
    # The probed node agrees with the hand-written profile of the same machine and with the spec table.
    ref = load_profile(profile_file).head
    assert (node.gpu_model, node.gpu_count, node.gpu_memory_mib) == (
        ref.gpu_model,
        ref.gpu_count,
        ref.gpu_memory_mib,
    )
    assert node.gpu_memory_mib == gpu_spec(node.gpu_model).memory_mib
    out = tmp_path / "p.yaml"
    out.write_text(inventory.dump_profile(profile))
    assert load_profile(out).to_dict() == profile.to_dict()


def test_nvml_recorded_values_win_over_nvidia_smi(tmp_path: Path) -> None:
    h100 = gpu_spec("H100")
    nvml = FakeNvml([(h100.nvml_names[0].encode(), h100.memory_mib * MIB, (9, 0))] * 8)
    profile = inventory.probe(tmp_path, nvml=nvml, nvidia_smi=lambda: pytest.fail("nvidia-smi not needed"))
    node = profile.head
    assert (node.gpu_model, node.gpu_count, node.gpu_memory_mib) == ("H100", 8, h100.memory_mib)
    assert "(nvml)" in profile.description and "sm 9.0" in profile.description
    assert nvml.shut_down


def test_nvml_failure_falls_back_to_nvidia_smi_then_to_none() -> None:
    broken = FakeNvml([], fail_init=True)  # fault injection: a driver that is not loaded
    csv = (FIXTURES / "nvidia-smi-rtx4090.csv").read_text()
    gpus, source = inventory.probe_gpus(broken, lambda: csv)
    assert source == "nvidia-smi" and [g.name for g in gpus] == ["NVIDIA GeForce RTX 4090"]
    assert inventory.probe_gpus(broken, _no_smi) == ([], "none")


def test_unknown_gpu_keeps_its_name_and_memory_and_round_trips(tmp_path: Path) -> None:
    a10g_bytes = 23028 * MIB  # what NVML reports for an A10G (not in the spec table)
    nvml = FakeNvml([("NVIDIA A10G", a10g_bytes, (8, 6))] * 4)
    profile = inventory.probe(tmp_path, nvml=nvml, nvidia_smi=_no_smi)
    node = profile.head
    assert (node.gpu_model, node.gpu_count, node.gpu_memory_mib) == ("NVIDIA A10G", 4, a10g_bytes // MIB)
    out = tmp_path / "a10g.yaml"
    out.write_text(inventory.dump_profile(profile))
    assert load_profile(out).to_dict() == profile.to_dict()


def test_mixed_gpus_keep_the_most_numerous_model() -> None:
    h100, l40s = gpu_spec("H100"), gpu_spec("L40S")
    gpus = [inventory.GpuInfo(h100.nvml_names[0], h100.memory_mib, "9.0")] * 2 + [
        inventory.GpuInfo(l40s.nvml_names[0], l40s.memory_mib, "8.9")
    ]
    model, count, memory, note = inventory.summarize_gpus(gpus)
    assert (model, count, memory) == ("H100", 2, h100.memory_mib)
    assert f"ignored 1x {l40s.nvml_names[0]}" in note


def test_malformed_nvidia_smi_line_is_input_error() -> None:
    with pytest.raises(InputError, match="nvidia-smi"):
        inventory.parse_nvidia_smi_csv("NVIDIA H100, [N/A], 9.0\n")


# --- recorded host outputs ----------------------------------------------------------------------------


def test_cpuinfo_of_a_dual_socket_amx_xeon() -> None:
    text = (FIXTURES / "cpuinfo-spr-2s-amx.txt").read_text()
    flags, sockets, cores = _cpuinfo_facts(text)
    info = inventory.parse_cpuinfo(text)
    assert info.model == re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1)
    assert set(info.isa) == set(inventory.ISA_FLAGS) & flags == set(inventory.ISA_FLAGS)
    assert info.sockets == len(sockets) == 2
    assert info.physical_cores == cores
    assert info.physical_cores * 2 == text.count("processor\t:")  # Hyper-Threading: two threads per core


def test_numa_tree(tmp_path: Path) -> None:
    for i in range(2):
        (tmp_path / f"node{i}").mkdir()
        (tmp_path / f"node{i}" / "cpulist").write_text(f"{i * 12}-{i * 12 + 11}\n")
    for name in ("online", "possible", "has_cpu", "has_memory"):
        (tmp_path / name).write_text("0-1\n")
    assert inventory.count_numa_nodes(tmp_path) == 2
    assert inventory.count_numa_nodes(tmp_path / "absent") == 1


def test_probe_of_the_recorded_kt_box(tmp_path: Path) -> None:
    """A KTransformers box from recorded parts: 4x RTX 4090 over NVML, AMX Xeon, 2 NUMA nodes."""
    rtx = gpu_spec("RTX4090")
    for i in range(2):
        (tmp_path / "sys" / f"node{i}").mkdir(parents=True)
    nvml = FakeNvml([(rtx.nvml_names[0], rtx.memory_mib * MIB, (8, 9))] * 4)
    profile = inventory.probe(
        tmp_path,
        nvml=nvml,
        nvidia_smi=_no_smi,
        cpuinfo_text=(FIXTURES / "cpuinfo-spr-2s-amx.txt").read_text(),
        sys_node_dir=tmp_path / "sys",
        route_text=(FIXTURES / "route-eno1-ib0.txt").read_text(),
    )
    node, ref = profile.head, load_profile("kt-4x4090-768g").head
    assert (node.gpu_model, node.gpu_count, node.gpu_memory_mib) == (
        ref.gpu_model,
        ref.gpu_count,
        ref.gpu_memory_mib,
    )
    assert (
        node.cpu.has_amx and node.cpu.numa_nodes == ref.cpu.numa_nodes and node.cpu.sockets == ref.cpu.sockets
    )
    assert node.network_interface == ref.network_interface == "eno1"
    if "eno1" not in psutil.net_if_addrs():
        assert node.address == "127.0.0.1"


def test_default_route_prefers_lowest_metric_then_falls_back() -> None:
    route = (FIXTURES / "route-eno1-ib0.txt").read_text()
    assert inventory.default_route_interface(route) == "eno1"
    header_and_links = "\n".join(line for line in route.splitlines() if line.split()[1] != "00000000")
    assert inventory.default_route_interface(header_and_links) is None
    stats = type(next(iter(psutil.net_if_stats().values())))  # psutil's own record type
    ifs = {
        "lo": stats(True, 0, 0, 65536, "up,loopback,running"),
        "eth1": stats(False, 0, 0, 1500, "broadcast"),
        "eth2": stats(True, 0, 0, 1500, "up,broadcast,running"),
    }
    assert inventory.pick_interface(header_and_links, ifs) == "eth2"
    assert inventory.pick_interface("", {"lo": ifs["lo"]}) == "lo"


def test_module_doctests() -> None:
    result = doctest.testmod(inventory, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted >= 3


def test_memory_bandwidth_probe_is_bounded_and_all_cores_read_at_least_one_thread() -> None:
    import time

    from deploy.hardware.inventory import measure_memory_bandwidth

    t0 = time.monotonic()
    total, one = measure_memory_bandwidth(2, seconds=0.2)
    assert time.monotonic() - t0 < 30
    # a copy of 64 MiB arrays runs faster than 0.1 GB/s on any machine that runs the demo
    assert one > 0.1 and total >= one


def test_read_rate_probe_is_bounded_and_leaves_nothing(tmp_path: Path) -> None:
    # an empty weights folder: a temporary file is written, synced, read back and removed
    empty = tmp_path / "empty"
    empty.mkdir()
    t0 = time.monotonic()
    rate = inventory.read_rate_gbps(empty)
    assert rate is not None and rate > 0
    assert time.monotonic() - t0 < 60 and list(empty.iterdir()) == []
    # a folder with weights: its largest file is read (not written to), at most READ_PROBE_BYTES
    big = tmp_path / "w" / "model-00001.safetensors"
    big.parent.mkdir()
    big.write_bytes(os.urandom(inventory.READ_PROBE_MIN_FILE + 1))
    assert inventory._largest_file(big.parent) == big
    assert inventory.read_rate_gbps(big.parent) > 0 and sorted(big.parent.iterdir()) == [big]
    # the profile carries it, and plan reads it back
    node = inventory.probe(empty).nodes[0]
    assert node.disk_read_gbps and node.disk_read_gbps > 0
    assert inventory.probe(empty, measure_read=False).nodes[0].disk_read_gbps is None
