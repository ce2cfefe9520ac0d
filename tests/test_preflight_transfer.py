"""Pre-flight of a prefill/decode split's KV transfer path (deploy/preflight/needs.py transfer_needs,
network.check_rdma and check_transfer_reachable, node.check_ports_free): the RDMA devices the split names
on every role node, the transfer's ports free where they listen and reachable from the other role's nodes.

As in test_preflight.py: sysfs trees as a ConnectX node shows them (no RDMA device on this machine), real
sockets on loopback. The other nodes' side runs here: ``HereSsh`` runs the command an ssh to the node would
run, on this host (the two-host tests in test_preflight_twohost.py cover the ssh itself). Real RDMA
transfer is not exercised.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.errors import PreflightFailed
from deploy.preflight import facts, network, remote
from deploy.preflight.needs import Transfer, TransferListener, plan_needs, transfer_needs
from deploy.preflight.node import check_ports_free

REPO = Path(__file__).resolve().parent.parent
KD = str(REPO / ".venv" / "bin" / "kimi-deploy")


class HereSsh(remote.Ssh):
    """The node's side of an ssh call, run on this host (its sockets are this host's loopback)."""

    def argv(self, address: str, remote: list[str]) -> list[str]:
        return list(remote)


def _plan(tmp: Path, engine: str, mode: str = "disaggregated") -> dict:
    out = tmp / f"plan-{engine}-{mode}.json"
    subprocess.run(
        [KD, "plan", "--hardware", "h200x8-4nodes", "--engine", engine, "--fleet-mode", mode, "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("plans")
    return {
        "sglang": _plan(tmp, "sglang"),
        "vllm": _plan(tmp, "vllm"),
        "aggregated": _plan(tmp, "sglang", "aggregated"),
    }


def test_who_listens_where_follows_the_plan(plans: dict[str, dict]) -> None:
    """SGLang: the prefill's bootstrap server on its head node, asked by every decode node. vLLM: each
    instance's NIXL side channel, reached by the other role's nodes. Every role node is checked."""
    for engine, listens_on in (("sglang", "prefill"), ("vllm", None)):
        plan = plans[engine]
        split = plan["fleet"]["disaggregation"]
        t = transfer_needs(plan)
        assert t is not None and t.rdma_devices == tuple(split["rdma_devices"]) and t.rdma_devices
        roles = {n: r["role"] for r in plan["fleet"]["replicas"] for n in r["nodes"]}
        assert t.roles == roles
        port, name = (
            (split["bootstrap_port"], "KV bootstrap")
            if engine == "sglang"
            else (split["side_channel_port"], "KV side channel")
        )
        heads = [r["nodes"][0] for r in plan["fleet"]["replicas"] if listens_on in (None, r["role"])]
        assert [listener.node for listener in t.listeners] == heads
        for listener in t.listeners:
            assert listener.ports == {name: port}
            assert set(listener.clients) == {n for n, role in roles.items() if role != listener.role}
        needs = plan_needs(plan)
        assert [n["name"] for n in needs.nodes] == [n["name"] for n in plan["hardware"]["nodes"]]
        assert needs.ports_on(heads[0])[name] == port
    aggregated = plans["aggregated"]
    assert transfer_needs(aggregated) is None
    needs = plan_needs(aggregated)  # unchanged: the chosen candidate's own nodes
    chosen = next(c for c in aggregated["candidates"] if c["id"] == aggregated["chosen"])
    assert needs.transfer is None and len(needs.nodes) == chosen["nodes"] < len(
        aggregated["hardware"]["nodes"]
    )


def test_a_data_parallel_vllm_instance_listens_once_per_rank(plans: dict[str, dict]) -> None:
    """vLLM's side channel is the port plus the DP rank: a DP8 decode instance holds 8 ports."""
    plan = json.loads(json.dumps(plans["vllm"]))
    dp = next(c for c in plan["candidates"] if c["data_parallel"] > 1 and c["nodes"] == 1)
    plan["fleet"]["disaggregation"]["decode"]["candidate"] = dp["id"]
    t = transfer_needs(plan)
    assert t is not None
    base = plan["fleet"]["disaggregation"]["side_channel_port"]
    decode = next(listener for listener in t.listeners if listener.role == "decode")
    assert sorted(decode.ports.values()) == list(range(base, base + dp["data_parallel"]))
    prefill = next(listener for listener in t.listeners if listener.role == "prefill")
    assert list(prefill.ports.values()) == [base]


def _sysfs(root: Path, devices: dict[str, str]) -> Path:
    """A /sys/class/infiniband tree: device -> its port 1's state (as `ibstat` shows it)."""
    for dev, state in devices.items():
        port = root / dev / "ports" / "1"
        port.mkdir(parents=True)
        (port / "state").write_text(state + "\n")
    return root


def test_every_role_node_has_the_splits_rdma_devices(plans: dict[str, dict], tmp_path: Path) -> None:
    plan = plans["sglang"]
    t = transfer_needs(plan)
    assert t is not None
    net = plan["hardware"]["nodes"][1]["network"]
    up = {d: "4: ACTIVE" for d in t.rdma_devices}
    good = {"infiniband": facts.infiniband(_sysfs(tmp_path / "good", up))}
    missing = dict(up)
    gone = missing.pop(t.rdma_devices[-1])
    bad = {"infiniband": facts.infiniband(_sysfs(tmp_path / "bad", missing))}
    ok = network.check_rdma(good, net, "node1", t.roles["node1"], t.rdma_devices)
    assert ok.status == "pass" and ok.value.startswith("decode node, KV transfer over mlx5_0")
    check = network.check_rdma(bad, net, "node1", t.roles["node1"], t.rdma_devices)
    assert check.status == "fail" and check.node == "node1"
    assert (
        check.value.startswith("decode node, KV transfer over ")
        and f"{t.rdma_devices[-1]}: absent" in check.value
    )
    assert f"the decode instance moves KV over {t.rdma_devices[-1]}" in check.hint and gone == "4: ACTIVE"
    # on an Ethernet profile the split's devices are still checked; without a split it stays a skip
    eth = {"fabric": "ethernet"}
    assert network.check_rdma(bad, eth, "node1", "decode", t.rdma_devices).status == "fail"
    assert network.check_rdma(bad, eth, "node1").status == "skip"


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A port something listens on (this test), on every address."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen(1)
        yield sock


def test_a_taken_transfer_port_fails_ports_free(plans: dict[str, dict], held: socket.socket) -> None:
    port = held.getsockname()[1]
    needs = plan_needs(plans["vllm"])
    assert needs.transfer is not None
    moved = Transfer(
        needs.transfer.backend,
        needs.transfer.rdma_devices,
        needs.transfer.roles,
        tuple(dataclasses.replace(x, ports={"KV side channel": port}) for x in needs.transfer.listeners),
    )
    needs = dataclasses.replace(needs, transfer=moved)
    node_facts = {"ports_busy": facts.ports_busy(sorted(set(needs.ports_on("node1").values())))}
    check = check_ports_free(node_facts, needs, "node1")
    assert check.status == "fail" and check.value == f"in use: KV side channel {port}"
    assert "ss -ltnp" in check.hint
    held.close()
    node_facts = {"ports_busy": facts.ports_busy(sorted(set(needs.ports_on("node1").values())))}
    assert check_ports_free(node_facts, needs, "node1").status == "pass"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def test_transfer_ports_reachable_from_the_other_role(plans: dict[str, dict]) -> None:
    """A listener on the node (here for the head, through ``HereSsh`` for the others) and a connection from
    each node of the other role, on loopback."""
    nodes = {n["name"]: {**n, "address": "127.0.0.1"} for n in plans["vllm"]["hardware"]["nodes"]}
    ssh = HereSsh(python=sys.executable)
    port = _free_port()
    prefill = TransferListener("node0", "prefill", {"KV side channel": port}, ("node1", "node2"))
    decode = TransferListener("node1", "decode", {"KV side channel": port}, ("node0",))
    for listener in (prefill, decode):
        check = network.check_transfer_reachable(ssh, listener, nodes, "node0", set(nodes))
        assert check.status == "pass", check
        assert check.value.startswith(f"{listener.role} node 127.0.0.1: KV side channel {port} from")
    # a node that did not answer over ssh is not asked, and says so
    partly = network.check_transfer_reachable(ssh, prefill, nodes, "node0", {"node0", "node1"})
    assert partly.status == "pass" and "not from node2 (no answer over ssh)" in partly.value
    # the plan's address for the decode node is not where its listener is: refused from the prefill
    if not facts.connect("::1", [port]) or not socket.has_ipv6:
        pytest.skip("no IPv6 loopback")
    nodes["node1"] = {**nodes["node1"], "address": "::1"}
    check = network.check_transfer_reachable(ssh, decode, nodes, "node0", set(nodes))
    assert check.status == "fail" and f"from node0: KV side channel {port}: Connection refused" in check.value
    assert check.hint.startswith(f"open {port} on node1 to the prefill nodes")


def _hold(port: int) -> socket.socket | None:
    """Listen on ``port`` (None when something else already does: it is taken either way)."""
    sock = socket.socket()
    try:
        sock.bind(("", port))
    except OSError as exc:
        sock.close()
        assert exc.errno == errno.EADDRINUSE, exc
        return None
    sock.listen(1)
    return sock


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_preflight_of_a_split_fails_on_this_host(plans: dict[str, dict], tmp_path: Path, engine: str) -> None:
    """`kimi-deploy preflight` of the split as a user runs it on the head (node0, the prefill): this host
    has none of the RDMA devices the split names, and the transfer's port is taken here. The other nodes
    are on loopback with no ssh server on the port given (they fail ``ssh`` at once)."""
    plan = json.loads(json.dumps(plans[engine]))
    for n in plan["hardware"]["nodes"]:
        n["address"] = "127.0.0.1"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    split = plan["fleet"]["disaggregation"]
    port = split["bootstrap_port"] or split["side_channel_port"]
    name = "KV bootstrap" if split["bootstrap_port"] else "KV side channel"
    here = facts.infiniband()
    if any(d in here for d in split["rdma_devices"]):
        pytest.skip("this host has an RDMA device the split names")
    sock = _hold(port)
    try:
        p = subprocess.run(
            [KD, "preflight", "--plan", str(path), "--json", "--no-measure", "--ssh-option", "Port=1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        if sock is not None:
            sock.close()
    assert p.returncode == PreflightFailed.exit_code
    checks = {(c["name"], c["node"]): c for c in json.loads(p.stdout)}
    rdma = checks[("rdma", "node0")]
    assert rdma["status"] == "fail" and rdma["value"].startswith("prefill node, KV transfer over mlx5_0")
    assert all(f"{d}: absent" in rdma["value"] for d in split["rdma_devices"])
    ports = checks[("ports_free", "node0")]
    assert ports["status"] == "fail" and f"{name} {port}" in ports["value"]
    line = p.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("error: pre-flight failed: ")
        and "rdma (node0)" in line
        and "ports_free (node0)" in line
    )
    assert "Traceback" not in p.stderr
    reach = checks[("transfer_reachable", "node0")]
    assert reach["status"] == "skip" and "did not answer over ssh" in reach["hint"]
    assert {checks[("ssh", f"node{i}")]["status"] for i in (1, 2, 3)} == {"fail"}
