"""Pre-flight on this host: the driver minimum derived from the pins, nvidia-smi parsing, the table and
JSON, and the faults this machine cannot produce for real (an old driver, a stopped fabric manager on an
NVSwitch board), fed through small `nvidia-smi`/`systemctl` scripts that print fixtures of the real tools'
output (tests/fixtures/preflight/README.md). The two-host checks are in test_preflight_twohost.py."""

from __future__ import annotations

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


def _fake_tools(tmp_path: Path, smi: str, fabric: str, fabric_rc: int) -> dict[str, str]:
    """nvidia-smi and systemctl that print the fixtures (no GPU or systemd on this machine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\ncat '{FIXTURES / smi}'\n")
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
