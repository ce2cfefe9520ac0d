"""Pre-flight across two real hosts (network namespaces with sshd, tests/netns.py): a clean run passes in
under a minute and reports Gbit/s between them; each injected fault, made for real, fails its own check
with exit 9. The lab uses its own names and subnet, so it can run beside the Ansible two-host tests."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_support as support
import netns
import pytest
import yaml

from deploy.errors import PreflightFailed

pytestmark = pytest.mark.slow

PREFIX, BRIDGE, SUBNET = "kdp-", "kdpbr0", "10.214.0"
SSH_OPTIONS = ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netns.TwoHostLab]:
    reason = netns.why_unavailable()
    if reason == "network namespaces need root":
        pytest.skip(reason)
    assert reason is None, reason
    netns.cleanup_leftovers(PREFIX, BRIDGE)
    the_lab = netns.TwoHostLab(tmp_path_factory.mktemp("pflab"), prefix=PREFIX, bridge=BRIDGE, subnet=SUBNET)
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.stop()


def _plan(lab: netns.TwoHostLab, name: str, worker_iface: str = "kd0") -> Path:
    """The planner's two-node demo plan (llama.cpp over RPC) for the lab's hosts; link_gbps 1 is the
    profile's figure the bandwidth is held against."""
    nodes = []
    for host in lab.hosts.values():
        nodes.append(
            {
                "name": host.name,
                "address": host.address,
                "gpus": {"model": "none", "count": 0},
                "cpu": {"physical_cores": 1, "isa": []},
                "ram_gib": 4,
                "disk_free_gib": 4,
                "shm_gib": 1,
                "network_interface": worker_iface if host.name == "worker" else host.iface,
                "network": {"fabric": "ethernet", "link_gbps": 1},
            }
        )
    profile = lab.workdir / f"{name}.yaml"
    profile.write_text(yaml.safe_dump({"name": "lab", "nodes": nodes}))
    plan = lab.workdir / f"{name}.json"
    subprocess.run(
        [
            support.KD,
            "plan",
            "--model",
            "demo",
            "--hardware",
            str(profile),
            "--nodes",
            "2",
            "--weights-dir",
            str(lab.node_root / "models"),
            "-o",
            str(plan),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return plan


@pytest.fixture(scope="module")
def plan(lab: netns.TwoHostLab) -> Path:
    return _plan(lab, "plan")


def preflight(
    lab: netns.TwoHostLab, plan: Path, measure: bool = False
) -> tuple[int, dict[tuple[str, str], dict[str, Any]], float]:
    """`kimi-deploy preflight --json` run on the head, as a user there runs it; checks by (name, node).
    The fault tests leave out the measurements (iperf3, the Gloo all-reduce): the clean run has them."""
    argv = [
        support.KD,
        "preflight",
        "--plan",
        str(plan),
        "--json",
        "--ssh-user",
        "root",
        "--ssh-key",
        str(lab.key),
        "--remote-python",
        f"{support.VENV}/bin/python",
    ]
    for option in SSH_OPTIONS:
        argv += ["--ssh-option", option]
    argv += [] if measure else ["--no-measure"]
    started = time.monotonic()
    p = subprocess.run(lab.ssh_argv("head", shlex.join(argv)), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    assert p.stdout.strip(), p.stderr
    return p.returncode, {(c["name"], c["node"]): c for c in json.loads(p.stdout)}, took


def _failed(checks: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted(k for k, c in checks.items() if c["status"] == "fail")


def test_clean_run_passes_and_measures(lab: netns.TwoHostLab, plan: Path) -> None:
    rc, checks, took = preflight(lab, plan, measure=True)
    assert rc == 0 and not _failed(checks), checks
    assert took < 60
    bandwidth = checks[("bandwidth", "worker")]
    assert bandwidth["status"] == "pass" and "Gbit/s head -> worker" in bandwidth["value"]
    assert float(bandwidth["value"].split()[0]) >= 0.5  # the profile's link_gbps x LINK_FRACTION
    rpc_port = json.loads(plan.read_text())["candidates"][0]["engine_args"]["multinode"]["rpc_port"]
    assert str(rpc_port) in checks[("reachable", "worker")]["value"]
    for name in ("interface", "shm", "disk", "ram", "ports_free"):
        assert checks[(name, "head")]["status"] == checks[(name, "worker")]["status"] == "pass", name
    assert checks[("mtu", "")]["status"] == checks[("versions", "")]["status"] == "pass"
    # the Gloo all-reduce through the cached venv's torch, rendezvous on the head, over kd0
    collective = checks[("collective", "")]
    assert collective["status"] == "pass" and "Gbit/s bus bandwidth (Gloo all-reduce" in collective["value"]
    assert float(collective["value"].split()[0]) > 0


def test_blocked_port(lab: netns.TwoHostLab, plan: Path) -> None:
    rpc_port = str(json.loads(plan.read_text())["candidates"][0]["engine_args"]["multinode"]["rpc_port"])
    rule = ["INPUT", "-p", "tcp", "--dport", rpc_port, "-j", "REJECT", "--reject-with", "tcp-reset"]
    worker = lab.hosts["worker"]
    subprocess.run(worker.exec_argv("iptables", "-A", *rule), check=True)
    try:
        rc, checks, _ = preflight(lab, plan)
    finally:
        subprocess.run(worker.exec_argv("iptables", "-D", *rule), check=True)
    assert rc == PreflightFailed.exit_code
    assert _failed(checks) == [("reachable", "worker")]
    assert f"rpc_port {rpc_port}: Connection refused" in checks[("reachable", "worker")]["value"]
    assert "open these ports from the head to worker" in checks[("reachable", "worker")]["hint"]


def test_missing_interface(lab: netns.TwoHostLab) -> None:
    rc, checks, _ = preflight(lab, _plan(lab, "plan-kd9", worker_iface="kd9"))
    assert rc == PreflightFailed.exit_code
    assert ("interface", "worker") in _failed(checks)
    assert checks[("interface", "worker")]["value"] == "kd9 does not exist"
    assert "kd0" in checks[("interface", "worker")]["hint"]


def test_mtu_mismatch(lab: netns.TwoHostLab, plan: Path) -> None:
    worker = lab.hosts["worker"]
    subprocess.run(["ip", "-n", worker.netns, "link", "set", worker.iface, "mtu", "1400"], check=True)
    try:
        rc, checks, _ = preflight(lab, plan)
    finally:
        subprocess.run(["ip", "-n", worker.netns, "link", "set", worker.iface, "mtu", "1500"], check=True)
    assert rc == PreflightFailed.exit_code
    assert _failed(checks) == [("mtu", "")]
    assert checks[("mtu", "")]["value"] == "head 1500, worker 1400"


def test_small_shm(lab: netns.TwoHostLab, plan: Path) -> None:
    """A 1 MiB tmpfs over /dev/shm in the head's mount namespace (the plan needs the 64 MiB floor)."""
    subprocess.run(lab.ssh_argv("head", "mount -t tmpfs -o size=1m kdp-shm /dev/shm"), check=True)
    try:
        rc, checks, _ = preflight(lab, plan)
    finally:
        subprocess.run(lab.ssh_argv("head", "umount /dev/shm"), check=True)
    assert rc == PreflightFailed.exit_code
    assert _failed(checks) == [("shm", "head")]
    assert checks[("shm", "head")]["value"] == "1 MiB (need 64 MiB)"


def _write_locks(lab: netns.TwoHostLab, plan: Path, locks: dict[str, dict[str, Any]]) -> list[Path]:
    local_dir = Path(json.loads(plan.read_text())["candidates"][0]["weights"]["local_dir"])
    written = []
    for host, lock in locks.items():
        path = lab.hosts[host].disk / local_dir.relative_to(lab.node_root) / "weights.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(lock))
        written.append(path)
    return written


def _lock(commit: str, sha256: str, endpoint: str) -> dict[str, Any]:
    """A weights.lock as `download` writes it (deploy/weights/lockfile.py)."""
    files = [{"path": "model.gguf", "size": 253113024, "sha256": sha256, "git_oid": None}]
    return {
        "schema": 1,
        "repo": "kimi-deploy-demo/gemma-3-270m-GGUF",
        "commit": commit,
        "revision": "main",
        "endpoint": endpoint,
        "files": files,
    }


def test_differing_weights_lock(lab: netns.TwoHostLab, plan: Path) -> None:
    locks = _write_locks(
        lab, plan, {"head": _lock("a" * 40, "1" * 64, ""), "worker": _lock("a" * 40, "2" * 64, "")}
    )
    try:
        rc, checks, _ = preflight(lab, plan)
    finally:
        for lock in locks:
            lock.unlink()
    assert rc == PreflightFailed.exit_code
    assert _failed(checks) == [("weights_lock", "")]
    assert "re-run `kimi-deploy download`" in checks[("weights_lock", "")]["hint"]


def test_same_weights_from_the_head_mirror_match(lab: netns.TwoHostLab, plan: Path) -> None:
    """The worker's lock names the head's LAN mirror as its endpoint: the same weights all the same (found
    by the Ansible two-host run, whose second pass failed on the lock's bytes)."""
    head, worker = _lock("a" * 40, "1" * 64, ""), _lock("a" * 40, "1" * 64, "http://10.214.0.1:8090")
    locks = _write_locks(lab, plan, {"head": head, "worker": worker})
    try:
        rc, checks, _ = preflight(lab, plan)
    finally:
        for lock in locks:
            lock.unlink()
    assert rc == 0, _failed(checks)
    assert checks[("weights_lock", "")]["status"] == "pass"


def _split_plan(lab: netns.TwoHostLab) -> Path:
    """The planner's vLLM split for hardware/h200x8-4nodes cut to one prefill (head) and one decode
    (worker) on the lab's hosts: a valid plan.json of a 1P1D split (the planner splits 4+ nodes only; the
    contract holds any split). vLLM: each instance's NIXL side channel, reached by the other role."""
    out = lab.workdir / "split-4nodes.json"
    subprocess.run(
        [
            support.KD,
            "plan",
            "--hardware",
            "h200x8-4nodes",
            "--engine",
            "vllm",
            "--fleet-mode",
            "disaggregated",
        ]
        + ["-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    data = json.loads(out.read_text())
    names = {"node0": "head", "node1": "worker"}
    nodes = []
    for node, host in zip(data["hardware"]["nodes"], lab.hosts.values(), strict=False):
        nodes.append({**node, "name": host.name, "address": host.address, "network_interface": host.iface})
    data["hardware"]["nodes"] = nodes
    fleet = data["fleet"]
    fleet["replicas"] = [{**r, "nodes": [names[r["nodes"][0]]]} for r in fleet["replicas"][:2]]
    fleet["router"]["node"] = "head"
    fleet["disaggregation"]["decode"]["instances"] = 1
    fleet["options"] = []
    data["candidates"] = [c for c in data["candidates"] if c["nodes"] <= len(nodes)]
    plan = lab.workdir / "split.json"
    plan.write_text(json.dumps(data))
    return plan


def test_split_transfer_ports_between_the_roles(lab: netns.TwoHostLab) -> None:
    """The side channel held on each role's host and connected to from the other's, over the lab's ssh:
    the head's rejected by iptables fails from the worker (the connection ran there)."""
    plan = _split_plan(lab)
    port = json.loads(plan.read_text())["fleet"]["disaggregation"]["side_channel_port"]
    _rc, checks, _ = preflight(lab, plan)
    head, worker = checks[("transfer_reachable", "head")], checks[("transfer_reachable", "worker")]
    assert head["status"] == worker["status"] == "pass", (head, worker)
    assert head["value"] == f"prefill node {lab.hosts['head'].address}: KV side channel {port} from worker"
    assert worker["value"] == f"decode node {lab.hosts['worker'].address}: KV side channel {port} from head"
    assert checks[("rdma", "worker")]["value"].startswith("decode node, KV transfer over mlx5_0")
    rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-j", "REJECT", "--reject-with", "tcp-reset"]
    subprocess.run(lab.hosts["head"].exec_argv("iptables", "-A", *rule), check=True)
    try:
        rc, checks, _ = preflight(lab, plan)
    finally:
        subprocess.run(lab.hosts["head"].exec_argv("iptables", "-D", *rule), check=True)
    assert rc == PreflightFailed.exit_code
    blocked = checks[("transfer_reachable", "head")]
    assert blocked["status"] == "fail"
    assert f"from worker: KV side channel {port}: Connection refused" in blocked["value"]
    assert blocked["hint"].startswith(f"open {port} on head to the decode nodes")
    assert checks[("transfer_reachable", "worker")]["status"] == "pass"
