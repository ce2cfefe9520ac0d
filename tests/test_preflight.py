"""Pre-flight on this host: the driver minimum derived from the pins, nvidia-smi parsing, the table and
JSON, and the faults this machine cannot produce for real (an old driver, a stopped fabric manager on an
NVSwitch board), fed through small `nvidia-smi`/`systemctl` scripts that print fixtures of the real tools'
output (tests/fixtures/preflight/README.md). The two-host checks are in test_preflight_twohost.py."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from deploy import pins
from deploy.errors import PreflightFailed
from deploy.preflight import driver, needs, result
from deploy.preflight.node import node_checks

REPO = Path(__file__).resolve().parent.parent
KD = str(REPO / ".venv" / "bin" / "kimi-deploy")
FIXTURES = REPO / "tests" / "fixtures" / "preflight"


def test_driver_minimum_follows_the_pins() -> None:
    for engine in ("vllm", "sglang"):
        need = driver.required_driver(engine)
        assert need is not None and need.pin == pins.ENGINE_PINS[engine]
        assert need.driver == driver.CUDA_DRIVER[driver.TORCH_CUDA[".".join(need.torch.split(".")[:2])]]
    assert driver.required_driver("llama.cpp") is None


def test_parse_smi_fixture() -> None:
    gpus = driver.parse_smi((FIXTURES / "nvidia-smi-h200x8-535.csv").read_text())
    assert len(gpus) == 8 and {g.driver for g in gpus} == {"535.183.01"}
    assert all(g.memory_mib == 143771 and g.persistence for g in gpus)


def _fake_tools(
    tmp_path: Path, smi: str, fabric: str, fabric_rc: int, header: str = "nvidia-smi-580.txt"
) -> dict[str, str]:
    """nvidia-smi and systemctl that print the fixtures (no GPU or systemd on this machine): the query's
    CSV when asked for it, the plain header (with the CUDA version) otherwise."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "nvidia-smi").write_text(
        f"#!/bin/sh\ncase \"$1\" in --query-gpu=*) cat '{FIXTURES / smi}' ;;\n"
        f"*) cat '{FIXTURES / header}' ;; esac\n"
    )
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\ncat '{FIXTURES / fabric}'\nexit {fabric_rc}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def gpu_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planner's plan for one HGX 8x H100 node (an NVSwitch board)."""
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    subprocess.run(
        [KD, "plan", "--model", "kimi-k2.5", "--hardware", "h200x8", "--engine", "vllm", "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def _preflight(plan: Path, env: dict[str, str]) -> tuple[int, dict[str, dict[str, str]]]:
    p = subprocess.run(
        [KD, "preflight", "--plan", str(plan), "--json"], capture_output=True, text=True, env=env
    )
    return p.returncode, {c["name"]: c for c in json.loads(p.stdout)}


def test_old_driver_from_fixture(tmp_path: Path, gpu_plan: Path) -> None:
    env = _fake_tools(tmp_path, "nvidia-smi-h200x8-535.csv", "systemctl-fabricmanager-active.txt", 0)
    rc, checks = _preflight(gpu_plan, env)
    assert rc == PreflightFailed.exit_code
    need = driver.required_driver("vllm")
    assert need is not None
    assert checks["driver"]["status"] == "fail"
    assert checks["driver"]["value"].startswith(f"535.183.01 (need >= {need.driver}")
    assert f"nvidia-driver-{need.driver.split('.')[0]}" in checks["driver"]["hint"]
    assert checks["fabric_manager"]["status"] == "pass" and checks["gpus"]["status"] == "pass"


def test_missing_fabric_manager_from_fixture(tmp_path: Path, gpu_plan: Path) -> None:
    env = _fake_tools(tmp_path, "nvidia-smi-h200x8-580.csv", "systemctl-fabricmanager-inactive.txt", 3)
    rc, checks = _preflight(gpu_plan, env)
    assert rc == PreflightFailed.exit_code
    assert checks["fabric_manager"] == {
        "name": "fabric_manager",
        "status": "fail",
        "value": "nvidia-fabricmanager inactive",
        "hint": checks["fabric_manager"]["hint"],
        "node": checks["fabric_manager"]["node"],
    }
    assert "systemctl enable --now nvidia-fabricmanager" in checks["fabric_manager"]["hint"]
    assert checks["driver"]["status"] == "pass"


def test_no_gpu_for_a_gpu_plan_is_a_failure_not_a_crash(gpu_plan: Path) -> None:
    """This machine has no GPU and no nvidia-smi: a clear failure with a hint."""
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    rc, checks = _preflight(gpu_plan, env)
    assert rc == PreflightFailed.exit_code
    assert checks["gpus"]["status"] == "fail" and "nvidia-smi not found" in checks["gpus"]["value"]


def test_shm_need_and_node_checks_from_plan(gpu_plan: Path) -> None:
    plan = json.loads(gpu_plan.read_text())
    n = needs.plan_needs(plan)
    assert n.nvswitch and n.gpus_per_node == 8 and n.shm_bytes == needs.SHM_MULTI_GPU
    facts = {"shm_bytes": needs.SHM_MULTI_GPU - 1, "nvidia_smi": None}
    shm = next(c for c in node_checks(facts, n, "head") if c.name == "shm")
    assert shm.status == "fail" and "--shm-size" in shm.hint


def test_table_and_summary() -> None:
    rows = [
        result.Check("shm", "fail", "1 MiB (need 64 MiB)", "enlarge it", "head"),
        result.Check("mtu", "pass"),
    ]
    text = result.format_table(rows)
    assert "    -> enlarge it" in text.splitlines()
    assert result.summary(rows) == "1 passed, 1 failed, 0 skipped"


def test_clean_single_node_demo_passes(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    subprocess.run(
        [KD, "plan", "--model", "demo", "--weights-dir", str(tmp_path / "w"), "-o", str(plan)],
        check=True,
        capture_output=True,
    )
    p = subprocess.run([KD, "preflight", "--plan", str(plan)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert " 0 failed" in p.stdout


def test_missing_iperf3_is_a_skip_with_the_install_line() -> None:
    from deploy.preflight import measured, remote

    check = measured.check_bandwidth(remote.Ssh(), "10.0.0.2", "worker", {}, remote_iperf=False)
    assert (check.status, check.value) == ("skip", "iperf3 missing on worker")
    assert "apt-get install iperf3" in check.hint


def test_skip_option_reports_a_check_as_skipped(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    subprocess.run(
        [KD, "plan", "--model", "demo", "--weights-dir", str(tmp_path / "w"), "-o", str(plan)],
        check=True,
        capture_output=True,
    )
    p = subprocess.run(
        [KD, "preflight", "--plan", str(plan), "--json", "--skip", "ports_free"],
        capture_output=True,
        text=True,
    )
    rows = {c["name"]: c for c in json.loads(p.stdout)}
    assert rows["ports_free"]["status"] == "skip" and "--skip" in rows["ports_free"]["hint"]


def test_network_facts_in_profiles_are_validated(tmp_path: Path) -> None:
    from deploy.errors import InputError
    from deploy.hardware.profiles import load_profile

    assert load_profile(REPO / "hardware" / "ci-24g.yaml").head.network is None  # older profiles stay valid
    good = load_profile(REPO / "hardware" / "h100x8-2nodes.yaml")
    assert good.head.network == {
        "fabric": "infiniband",
        "rdma_devices": [f"mlx5_{i}" for i in range(8)],
        "link_gbps": 400,
    }
    bad = tmp_path / "p.yaml"
    text = (REPO / "hardware" / "ci-24g.yaml").read_text()
    bad.write_text(
        text.replace("network_interface: lo", "network_interface: lo\n    network: {fabric: token-ring}", 1)
    )
    with pytest.raises(InputError, match="fabric"):
        load_profile(bad)


@pytest.mark.parametrize(("layer", "fabric"), [("InfiniBand", "infiniband"), ("Ethernet", "roce")])
def test_inventory_network_facts_from_sysfs(tmp_path: Path, layer: str, fabric: str) -> None:
    """A sysfs tree as a ConnectX node shows it (no RDMA device on this machine)."""
    from deploy.hardware.inventory import probe_network

    for dev in ("mlx5_0", "mlx5_1"):
        port = tmp_path / "infiniband" / dev / "ports" / "1"
        port.mkdir(parents=True)
        (port / "link_layer").write_text(layer + "\n")
    (tmp_path / "net" / "ens10f0").mkdir(parents=True)
    (tmp_path / "net" / "ens10f0" / "speed").write_text("400000\n")
    assert probe_network("ens10f0", tmp_path) == {
        "fabric": fabric,
        "rdma_devices": ["mlx5_0", "mlx5_1"],
        "link_gbps": 400.0,
    }


def test_rdma_ports_must_be_active() -> None:
    """sysfs port states as `ibstat` reports them (no InfiniBand here)."""
    from deploy.preflight.network import check_rdma

    net = {"fabric": "infiniband", "rdma_devices": ["mlx5_0", "mlx5_1"]}
    up = {"infiniband": {"mlx5_0": {"1": "4: ACTIVE"}, "mlx5_1": {"1": "4: ACTIVE"}}}
    down = {"infiniband": {"mlx5_0": {"1": "4: ACTIVE"}, "mlx5_1": {"1": "1: DOWN"}}}
    assert check_rdma(up, net, "head").status == "pass"
    failed = check_rdma(down, net, "head")
    assert failed.status == "fail" and "mlx5_1: 1: DOWN" in failed.value
    assert check_rdma({}, {"fabric": "ethernet"}, "head").status == "skip"


# ------------------------------------------------------------------ NCCL all_reduce_perf (nccl-tests)


def _fake_all_reduce_perf(bin_dir: Path, fixture: str) -> Path:
    """An ``all_reduce_perf`` that records its argv and prints nccl-tests' output from a fixture (no GPU
    here, and nccl-tests needs CUDA): the parsing and the threshold are what is under test."""
    bin_dir.mkdir(exist_ok=True)
    seen = bin_dir / "all_reduce_perf.argv"
    tool = bin_dir / "all_reduce_perf"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > '{seen}'\ncat '{FIXTURES / fixture}'\n")
    tool.chmod(0o755)
    return seen


def _table_busbw(fixture: str) -> float:
    """The mean of the out-of-place and in-place busbw columns of the fixture's data row."""
    row = next(
        r for r in (FIXTURES / fixture).read_text().splitlines() if r.strip() and not r.startswith("#")
    )
    cells = row.split()
    return (float(cells[7]) + float(cells[11])) / 2


def test_nccl_all_reduce_perf_reported_against_nvlink(tmp_path: Path, gpu_plan: Path) -> None:
    """The plan's own GPU count goes to -g; the bus bandwidth is the fixture's, held to half of the GPU
    table's one-way NVLink figure."""
    from deploy.hardware.profiles import gpu_spec
    from deploy.preflight import nccl_tests

    env = _fake_tools(tmp_path, "nvidia-smi-h200x8-580.csv", "systemctl-fabricmanager-active.txt", 0)
    seen = _fake_all_reduce_perf(tmp_path / "bin", "all_reduce_perf-h100x8.txt")
    rc, checks = _preflight(gpu_plan, env)
    plan = json.loads(gpu_plan.read_text())
    n = needs.plan_needs(plan)
    assert seen.read_text().split() == ["-b", "1G", "-e", "1G", "-f", "2", "-g", str(n.gpus_per_node)]
    busbw = nccl_tests.parse_busbw((FIXTURES / "all_reduce_perf-h100x8.txt").read_text())
    assert busbw == pytest.approx(_table_busbw("all_reduce_perf-h100x8.txt"), abs=0.01)
    spec = gpu_spec(n.gpu_model)
    floor = spec.interconnect_gbps / 2 * nccl_tests.NVLINK_FRACTION
    assert checks["collective"]["status"] == "pass", checks["collective"]
    assert checks["collective"]["value"].startswith(f"{busbw:.1f} GB/s bus bandwidth (NCCL all_reduce_perf")
    assert f"need >= {floor:.0f}" in checks["collective"]["value"]


def test_nccl_all_reduce_perf_below_nvlink_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.preflight import nccl_tests, remote

    _fake_all_reduce_perf(tmp_path / "bin", "all_reduce_perf-h100x8-degraded.txt")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    check = nccl_tests.check_nccl_allreduce(remote.Ssh(), {"name": "head"}, 8, "H100", here=True)
    assert check.status == "fail" and "nvlink" in check.hint.lower()
    busbw = _table_busbw("all_reduce_perf-h100x8-degraded.txt")
    assert f"{busbw:.1f} GB/s" in check.value and busbw < (nccl_tests.floor_gbs("H100") or 0)


def test_without_nccl_tests_the_gloo_fallback_stays(gpu_plan: Path, tmp_path: Path) -> None:
    """No all_reduce_perf on PATH: no NCCL collective check (a one-node plan has no Gloo one either)."""
    env = _fake_tools(tmp_path, "nvidia-smi-h200x8-580.csv", "systemctl-fabricmanager-active.txt", 0)
    _rc, checks = _preflight(gpu_plan, env)
    assert "collective" not in checks
    from deploy.preflight import run

    found = {"head": {"nccl_tests": "/usr/bin/all_reduce_perf"}, "w": {"nccl_tests": None}}
    n = needs.plan_needs(json.loads(gpu_plan.read_text()))
    two = dataclasses.replace(n, nodes=[{"name": "head"}, {"name": "w"}])
    assert run._nccl_tests(two, found, None) is None  # type: ignore[arg-type]


# ------------------------------------------------------------------ NCCL_IB_HCA / NCCL_IB_GID_INDEX


@pytest.fixture(scope="module")
def roce_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """The planner's two-node vLLM plan on a RoCE copy of hardware/h100x8-2nodes.yaml, rendered."""
    import yaml

    tmp = tmp_path_factory.mktemp("roce")
    profile = yaml.safe_load((REPO / "hardware" / "h100x8-2nodes.yaml").read_text())
    net = {"fabric": "roce", "rdma_devices": ["mlx5_0", "mlx5_1"], "gid_index": 3, "link_gbps": 200}
    for node in profile["nodes"]:
        node["network"] = net
    (tmp / "roce.yaml").write_text(yaml.safe_dump(profile))
    plan, out = tmp / "plan.json", tmp / "out"
    for args in (
        [
            "plan",
            "--model",
            "kimi-k2.5",
            "--hardware",
            str(tmp / "roce.yaml"),
            "--engine",
            "vllm",
            "-o",
            str(plan),
        ],
        ["render", "--plan", str(plan), "--out", str(out), "--weights-dir", str(tmp / "w")],
    ):
        subprocess.run([KD, *args], check=True, capture_output=True, text=True)
    return plan, out, net


def _sysfs(root: Path, devices: dict[str, str]) -> None:
    """A /sys/class/infiniband tree as a ConnectX RoCE node shows it: device -> the type of GID slot 3."""
    for dev, kind in devices.items():
        port = root / dev / "ports" / "1"
        (port / "gids").mkdir(parents=True)
        (port / "gid_attrs" / "types").mkdir(parents=True)
        (port / "state").write_text("4: ACTIVE\n")
        gid = "0000:0000:0000:0000:0000:ffff:0a00:0015" if kind else "0000:0000:0000:0000:0000:0000:0000:0000"
        (port / "gids" / "3").write_text(gid + "\n")
        (port / "gid_attrs" / "types" / "3").write_text(kind + "\n")


def test_render_sets_nccl_ib_hca_and_gid_from_the_profile(roce_release: tuple[Path, Path, dict]) -> None:
    from deploy.preflight.nccl_env import read_env_files

    plan, out, net = roce_release
    for node in json.loads(plan.read_text())["hardware"]["nodes"]:
        env = read_env_files(out, node["name"])
        assert env is not None
        assert env["NCCL_IB_HCA"] == ",".join(net["rdma_devices"])  # type: ignore[arg-type]
        assert env["NCCL_IB_GID_INDEX"] == str(net["gid_index"])


def test_nccl_env_against_profile_and_sysfs(roce_release: tuple[Path, Path, dict], tmp_path: Path) -> None:
    from deploy.preflight import facts
    from deploy.preflight.nccl_env import check_nccl_env, read_env_files

    _plan, out, net = roce_release
    rendered = read_env_files(out, "worker1")
    good, no_dev, v1 = tmp_path / "good", tmp_path / "nodev", tmp_path / "v1"
    _sysfs(good, {"mlx5_0": "RoCE v2", "mlx5_1": "RoCE v2"})
    _sysfs(no_dev, {"mlx5_0": "RoCE v2"})
    _sysfs(v1, {"mlx5_0": "RoCE v2", "mlx5_1": "IB/RoCE v1"})

    def node(root: Path) -> dict[str, object]:
        return {"infiniband": facts.infiniband(root), "gids": facts.gids([3], root)}

    assert check_nccl_env(node(good), net, rendered, "worker1").status == "pass"
    assert check_nccl_env(node(good), net, None, "worker1").value.startswith("render would set")
    missing = check_nccl_env(node(no_dev), net, rendered, "worker1")
    assert missing.status == "fail" and "not in /sys/class/infiniband: mlx5_1" in missing.value
    assert "mlx5_0" in missing.hint
    wrong = check_nccl_env(node(v1), net, rendered, "worker1")
    assert wrong.status == "fail" and "GID 3 on mlx5_1 port 1 is IB/RoCE v1" in wrong.value
    stale = check_nccl_env(node(good), {**net, "gid_index": 5}, rendered, "worker1")
    assert stale.status == "fail" and "NCCL_IB_GID_INDEX 3 != profile 5" in stale.value
    assert "re-render" in stale.hint


# ------------------------------------------------------------------ versions across nodes


def test_cuda_version_differs_across_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deploy.preflight import facts, network

    seen = {}
    for name, header in (("head", "nvidia-smi-580.txt"), ("worker", "nvidia-smi-535.txt")):
        csv = "nvidia-smi-h200x8-580.csv"
        env = _fake_tools(tmp_path / name, csv, "systemctl-fabricmanager-active.txt", 0, header)
        monkeypatch.setenv("PATH", env["PATH"])
        seen[name] = {"cuda_version": facts.cuda_version()}
    want = {
        n: next(w.split()[0] for w in (FIXTURES / h).read_text().split("CUDA Version:")[1:])
        for n, h in (("head", "nvidia-smi-580.txt"), ("worker", "nvidia-smi-535.txt"))
    }
    assert {n: f["cuda_version"] for n, f in seen.items()} == want
    check = network.check_cuda_versions(seen)
    assert check.status == "fail" and "driver" in check.hint
    assert network.check_cuda_versions({"a": seen["head"], "b": seen["head"]}).status == "pass"


def test_engine_version_from_the_venv_and_the_llama_cpp_cache(tmp_path: Path) -> None:
    """A real venv (this checkout's) asked for a distribution's version, and the real llama.cpp build's
    BUILD_INFO.json in the cache beside a copy that claims another commit."""
    from importlib.metadata import version

    from deploy.preflight import facts, network

    venv = facts.engine_version({"engine_venv": str(REPO / ".venv"), "engine_dist": "click"})
    assert venv == version("click")
    assert facts.engine_version({"engine_venv": str(tmp_path / "none"), "engine_dist": "vllm"}) is None
    probe = needs.engine_probe("llama.cpp")
    head = facts.engine_version(probe)
    if head is None:
        pytest.skip("no llama.cpp build in the cache (kimi-deploy engine install llama.cpp)")
    assert f"llama-cpp-python {pins.LLAMA_CPP_PYTHON_VERSION}" in head
    info = json.loads(
        next(Path(probe["llama_cpp_builds"]).expanduser().glob("*/BUILD_INFO.json")).read_text()
    )
    other = tmp_path / "builds" / "0.0-cpu-rpc"
    other.mkdir(parents=True)
    (other / "BUILD_INFO.json").write_text(json.dumps({**info, "llama_cpp_commit": "deadbee"}))
    worker = facts.engine_version({"llama_cpp_builds": str(tmp_path / "builds")})
    check = network.check_engine_versions(
        {"head": {"engine_version": head}, "w": {"engine_version": worker}}, "llama.cpp"
    )
    assert check.status == "fail" and "deadbee" in check.value
    same = network.check_engine_versions(
        {"head": {"engine_version": head}, "w": {"engine_version": head}}, "llama.cpp"
    )
    assert same.status == "pass"
    missing = network.check_engine_versions({"head": {"engine_version": head}, "w": {}}, "llama.cpp")
    assert missing.status == "fail"
