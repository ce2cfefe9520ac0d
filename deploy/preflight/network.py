"""Cross-node checks: the plan's ports reachable from the head, the interface and its MTU on every node,
identical versions and weights.lock digests, clocks within a bound, InfiniBand/RoCE ports active, and a
prefill/decode split's KV transfer ports reachable from the other role's nodes.

    >>> from deploy.preflight.network import check_mtu
    >>> facts = {"a": {"interfaces": {"eth0": {"mtu": 9000}}}, "w": {"interfaces": {"eth0": {"mtu": 1500}}}}
    >>> check_mtu(facts, {"a": "eth0", "w": "eth0"}).status
    'fail'
"""

from __future__ import annotations

import socket
from typing import Any

from deploy.preflight import remote
from deploy.preflight.driver import parse_smi
from deploy.preflight.needs import TransferListener
from deploy.preflight.result import Check

#: Clocks further apart than this break TLS, log correlation and the calibration store's timestamps.
MAX_CLOCK_SKEW_S = 2.0
#: A SYN answered within this on a LAN; a dropped one (firewall DROP) is reported after it.
CONNECT_TIMEOUT_S = 3.0


def check_interface(node_facts: dict[str, Any], iface: str, node: str) -> Check:
    """The interface the plan names for NCCL/Gloo exists on the node and carries an address."""
    found = (node_facts.get("interfaces") or {}).get(iface)
    if not iface:
        return Check("interface", "skip", "", "the plan names no network interface", node)
    if found is None:
        have = ", ".join(sorted(node_facts.get("interfaces") or {})) or "none"
        hint = f"set network_interface to one of this node's interfaces ({have}) in the profile, then re-plan"
        return Check("interface", "fail", f"{iface} does not exist", hint, node)
    if not found.get("addresses"):
        return Check("interface", "fail", f"{iface} has no address", f"configure an address on {iface}", node)
    return Check("interface", "pass", f"{iface} {found['addresses'][0]} mtu {found.get('mtu')}", node=node)


def check_mtu(all_facts: dict[str, dict[str, Any]], ifaces: dict[str, str]) -> Check:
    """The same MTU on every node's interface: a mismatch hangs NCCL/Gloo on the first large message."""
    mtus = {
        name: ((f.get("interfaces") or {}).get(ifaces.get(name, "")) or {}).get("mtu")
        for name, f in all_facts.items()
    }
    value = ", ".join(f"{n} {m}" for n, m in mtus.items())
    known = {m for m in mtus.values() if m is not None}
    if len(known) > 1:
        return Check(
            "mtu", "fail", value, "set the same MTU on every node's interface (`ip link set DEV mtu N`)"
        )
    if not known:
        return Check("mtu", "skip", value, "no node has the plan's interface")
    return Check("mtu", "pass", value)


def _driver(f: dict[str, Any]) -> str:
    smi = f.get("nvidia_smi") or {}
    try:
        gpus = parse_smi(smi.get("out", "")) if smi.get("rc") == 0 else []
    except Exception:  # noqa: BLE001 - the driver check reports an unreadable nvidia-smi
        gpus = []
    return gpus[0].driver if gpus else "-"


def check_versions(all_facts: dict[str, dict[str, Any]]) -> Check:
    """Driver and toolkit versions identical on every node (one node on another driver breaks NCCL)."""
    seen = {
        name: (_driver(f), (f.get("versions") or {}).get("kimi-deploy") or "-")
        for name, f in all_facts.items()
    }
    value = ", ".join(f"{n} driver {d} kimi-deploy {k}" for n, (d, k) in seen.items())
    if len(set(seen.values())) > 1:
        return Check(
            "versions", "fail", value, "install the same driver and toolkit on every node (make deploy)"
        )
    return Check("versions", "pass", value)


def _same_everywhere(name: str, seen: dict[str, str | None], missing: str, hint: str) -> Check:
    """One value per node; a fail when two nodes differ, a skip when no node reports one."""
    value = ", ".join(f"{n} {v or '-'}" for n, v in seen.items())
    known = {v for v in seen.values() if v}
    if not known:
        return Check(name, "skip", value, missing)
    if len(set(seen.values())) > 1:
        return Check(name, "fail", value, hint)
    return Check(name, "pass", value)


def check_cuda_versions(all_facts: dict[str, dict[str, Any]]) -> Check:
    """The CUDA version the drivers support (``nvidia-smi``'s header) identical on every node."""
    seen = {name: f.get("cuda_version") for name, f in all_facts.items()}
    return _same_everywhere(
        "cuda_version",
        seen,
        "no node runs nvidia-smi",
        "install the same NVIDIA driver branch on every node: the CUDA each supports differs",
    )


def check_engine_versions(all_facts: dict[str, dict[str, Any]], engine: str) -> Check:
    """The pinned engine as each node has it installed (venv or llama.cpp build), identical everywhere;
    a node without it differs too (its ranks would start another build or none)."""
    seen = {name: f.get("engine_version") for name, f in all_facts.items()}
    return _same_everywhere(
        "engine_version",
        seen,
        f"{engine} not installed on any node yet (the install step of `make deploy` puts it there)",
        f"install the same {engine} on every node: re-run the release's install step (make deploy)",
    )


def check_clocks(offsets: dict[str, tuple[float, float]]) -> Check:
    """``offsets``: node -> (offset from the head's clock, uncertainty), both in seconds."""
    if not offsets:
        return Check("clocks", "skip", "", "one node")
    worst = max(offsets.items(), key=lambda kv: abs(kv[1][0]))
    value = ", ".join(f"{n} {o:+.2f} s (within {u:.2f} s)" for n, (o, u) in offsets.items())
    if abs(worst[1][0]) - worst[1][1] > MAX_CLOCK_SKEW_S:
        return Check(
            "clocks", "fail", value, f"sync the clocks (chrony/NTP): more than {MAX_CLOCK_SKEW_S} s apart"
        )
    return Check("clocks", "pass", value)


def check_weights_lock(all_facts: dict[str, dict[str, Any]]) -> Check:
    """Every node that has weights.lock has the same one (the same revision and files)."""
    digests = {name: f.get("lock_sha256") for name, f in all_facts.items()}
    present = {n: d for n, d in digests.items() if d}
    if not present:
        return Check(
            "weights_lock", "skip", "no weights.lock yet", "checked again once the weights are there"
        )
    value = ", ".join(f"{n} {d[:12] if d else 'none'}" for n, d in digests.items())
    if len(set(present.values())) > 1:
        hint = "the nodes hold different weights: re-run `kimi-deploy download` from one source on every node"
        return Check("weights_lock", "fail", value, hint)
    return Check("weights_lock", "pass", value)


def check_rdma(
    node_facts: dict[str, Any],
    network: dict[str, Any],
    node: str,
    role: str | None = None,
    transfer: tuple[str, ...] = (),
) -> Check:
    """IB/RoCE: every device the profile lists has an ACTIVE port (sysfs, as `ibstat` reports it). On a
    node of a prefill/decode split (``role``), the devices the KV transfer moves over (``transfer``,
    plan.json ``fleet.disaggregation.rdma_devices``) too, whatever the profile's fabric; the value names
    the role."""
    fabric = str(network.get("fabric") or "")
    label = ""
    if role:
        over = ", ".join(transfer) if transfer else "the devices its backend picks (the plan names none)"
        label = f"{role} node, KV transfer over {over}: "
    if fabric not in ("infiniband", "roce") and not transfer:
        hint = "the profile names no InfiniBand/RoCE fabric"
        return Check("rdma", "skip", label + (fabric or "ethernet"), hint, node)
    ib = node_facts.get("infiniband") or {}
    profile = list(network.get("rdma_devices") or ([] if transfer else sorted(ib)))
    wanted = profile + [d for d in transfer if d not in profile]
    down = [d for d in wanted if not any("ACTIVE" in s for s in (ib.get(d) or {}).values())]
    value = label + (
        ", ".join(f"{d}: {','.join((ib.get(d) or {}).values()) or 'absent'}" for d in wanted) or "no device"
    )
    if down or not wanted:
        hint = "bring the ports up (`ibstat`; subnet manager running?) or fix rdma_devices in the profile"
        moved = [d for d in transfer if d in down]
        if moved:
            hint += f" and re-plan: the {role} instance moves KV over {', '.join(moved)}"
        return Check("rdma", "fail", value, hint, node)
    return Check("rdma", "pass", value, node=node)


def connect(address: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection opens, else why not."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_reachable(ssh: remote.Ssh, address: str, ports: dict[str, int], node: str) -> Check:
    """A listener on the node on each of the plan's ports, connected to from here (the head)."""
    if not ports:
        return Check("reachable", "skip", "", "the plan names no ports", node)
    try:
        proc, bound = remote.remote_listen(ssh, address, sorted(set(ports.values())))
    except remote.RemoteError as exc:
        return Check("reachable", "fail", str(exc), "check ssh access to the node", node)
    try:
        failures = [
            f"{name} {port}: {why}"
            for name, port in ports.items()
            if port in bound
            for why in [connect(address, port)]
            if why
        ]
    finally:
        remote.stop(proc)
    value = f"{address}: " + (", ".join(failures) if failures else ", ".join(str(p) for p in bound))
    if failures:
        hint = f"open these ports from the head to {node} (firewall, security group): " + ", ".join(
            f.split(":")[0] for f in failures
        )
        return Check("reachable", "fail", value, hint, node)
    return Check("reachable", "pass", value, node=node)


def check_transfer_reachable(
    ssh: remote.Ssh,
    listener: TransferListener,
    nodes: dict[str, dict[str, Any]],
    head: str,
    answered: set[str],
) -> Check:
    """A prefill/decode split's transfer ports on ``listener``'s node, connected to from each node of the
    other role (``listener.clients``): a listener there (``facts listen``; a port already taken keeps what
    holds it, which answers as well), then ``facts connect`` on each client, here or over ssh. ``nodes``:
    the plan's nodes by name; ``answered``: those whose facts came back (the others are not asked)."""
    name, role = listener.node, listener.role
    ports = sorted(set(listener.ports.values()))
    shown = ", ".join(f"{what} {port}" for what, port in listener.ports.items())
    clients = [c for c in listener.clients if c in answered]
    silent = [c for c in listener.clients if c not in answered]
    if name not in answered or not clients:
        who = [name] if name not in answered else silent
        why = f"{', '.join(who)} did not answer over ssh" if who else "no node of the other role"
        why = f"not tested: {why}"
        return Check("transfer_reachable", "skip", f"{role} node: {shown}", why, name)
    address = str(nodes[name].get("address") or "127.0.0.1")
    try:
        proc, bound = remote.remote_listen(ssh, address, ports, here=name == head)
    except remote.RemoteError as exc:
        return Check("transfer_reachable", "fail", str(exc), "check ssh access to the node", name)
    failures: list[str] = []
    try:
        for client in clients:
            c_address = str(nodes[client].get("address") or "127.0.0.1")
            try:
                failed = remote.remote_connect(ssh, c_address, address, ports, here=client == head)
            except remote.RemoteError as exc:
                failures.append(f"from {client}: {exc}")
                continue
            failures += [
                f"from {client}: {what} {port}: {failed[str(port)]}"
                for what, port in listener.ports.items()
                if str(port) in failed
            ]
    finally:
        remote.stop(proc)
    taken = [p for p in ports if p not in bound]
    note = f" ({', '.join(map(str, taken))} already held there: what holds it answered)" if taken else ""
    value = f"{role} node {address}: {shown} from {', '.join(clients)}"
    value += f"; {'; '.join(failures)}" if failures else note
    if failures:
        others = "decode" if role == "prefill" else "prefill"
        hint = (
            f"open {', '.join(map(str, ports))} on {name} to the {others} nodes (firewall, security group): "
            "the KV transfer's handshake goes there"
        )
        return Check("transfer_reachable", "fail", value, hint, name)
    if silent:
        value += f"; not from {', '.join(silent)} (no answer over ssh)"
    return Check("transfer_reachable", "pass", value, node=name)
