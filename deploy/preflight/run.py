"""The pre-flight run: facts from every node of the plan, then the checks, as one list of ``Check``.

    >>> from deploy.preflight.run import preflight
    >>> checks = preflight(plan, remote.Ssh(user="root", key="~/.ssh/id_ed25519"))   # doctest: +SKIP
    >>> [c.name for c in checks][:3]                                                # doctest: +SKIP
    ['gpus', 'driver', 'persistence_mode']

This host is the plan's head (its first node); the other nodes are reached over ssh at their address.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deploy.preflight import facts as node_facts
from deploy.preflight import measured, nccl_env, nccl_tests, network, remote
from deploy.preflight.needs import Needs, plan_needs
from deploy.preflight.node import node_checks
from deploy.preflight.result import Check


def _gather(
    needs: Needs, ssh: remote.Ssh
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[float, float]], list[Check]]:
    """Facts from every node (the head's here, the others' over ssh, in parallel), clock offsets and
    a failed ``ssh`` check for each node that did not answer."""
    ports = {p for n in needs.nodes for p in needs.ports_on(str(n["name"])).values()}
    request: dict[str, Any] = {"weights_dir": needs.weights_dir, "ports": sorted(ports)}
    gid_indexes = {(n.get("network") or {}).get("gid_index") for n in needs.nodes}
    request["gid_indexes"] = sorted(i for i in gid_indexes if isinstance(i, int))
    request.update(needs.engine_probe)
    head, others = needs.nodes[0], needs.nodes[1:]
    found = {str(head["name"]): node_facts.collect(request)}
    offsets: dict[str, tuple[float, float]] = {}
    failures: list[Check] = []
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(others)))) as pool:
        futures = {
            str(n["name"]): pool.submit(remote.remote_facts, ssh, str(n.get("address")), request)
            for n in others
        }
        for name, future in futures.items():
            try:
                got, sent, back = future.result()
            except remote.RemoteError as exc:
                failures.append(
                    Check("ssh", "fail", str(exc), "the head must reach every node over ssh", name)
                )
                continue
            found[name] = got
            # the node read its clock between `sent` and `back`, most likely just before `back`
            offsets[name] = (float(got["clock"]) - back, back - sent)
    return found, offsets, failures


def preflight(
    plan: dict[str, Any],
    ssh: remote.Ssh,
    measure: bool = True,
    skip: frozenset[str] = frozenset(),
    torch_python: str | None = None,
    release: Path | None = None,
) -> list[Check]:
    """Every check the plan calls for, per node first, then across nodes, then measured; those named in
    ``skip`` are reported as skipped (a re-run over a running deployment skips ``ports_free``). ``release``:
    a rendered folder whose env files ``nccl_env`` reads (else it checks what render would write)."""
    checks = _checks(plan, ssh, measure, torch_python or measured.find_torch_python(), release)
    return [
        Check(c.name, "skip", c.value, "skipped as asked (--skip)", c.node) if c.name in skip else c
        for c in checks
    ]


def _node_and_fabric_checks(
    needs: Needs, found: dict[str, dict[str, Any]], release: Path | None, ifaces: dict[str, str]
) -> list[Check]:
    checks: list[Check] = []
    for n in needs.nodes:
        name = str(n["name"])
        if name in found:
            checks += node_checks(found[name], needs, name)
            checks.append(network.check_interface(found[name], ifaces[name], name))
            role = needs.transfer.roles.get(name) if needs.transfer else None
            devices = needs.transfer.rdma_devices if needs.transfer else ()
            checks.append(network.check_rdma(found[name], n.get("network") or {}, name, role, devices))
            if len(needs.nodes) > 1 and needs.gpus_per_node:  # render sets NCCL's fabric only there
                rendered = nccl_env.read_env_files(release, name) if release else None
                checks.append(nccl_env.check_nccl_env(found[name], n.get("network") or {}, rendered, name))
    return checks


def _nccl_tests(needs: Needs, found: dict[str, dict[str, Any]], ssh: remote.Ssh) -> list[Check] | None:
    """NCCL's all_reduce_perf on every GPU node, where every node has it; None to fall back to Gloo."""
    if needs.gpus_per_node < 2 or not all(
        found.get(str(n["name"]), {}).get("nccl_tests") for n in needs.nodes
    ):
        return None
    return [
        nccl_tests.check_nccl_allreduce(ssh, n, needs.gpus_per_node, needs.gpu_model, here=i == 0)
        for i, n in enumerate(needs.nodes)
    ]


def _checks(
    plan: dict[str, Any],
    ssh: remote.Ssh,
    measure: bool,
    torch_python: str | None,
    release: Path | None = None,
) -> list[Check]:
    needs = plan_needs(plan)
    found, offsets, checks = _gather(needs, ssh)
    ifaces = {str(n["name"]): str(n.get("network_interface") or "") for n in needs.nodes}
    checks += _node_and_fabric_checks(needs, found, release, ifaces)
    nccl = _nccl_tests(needs, found, ssh) if measure else None
    checks += nccl or []
    if len(needs.nodes) > 1:
        checks += [network.check_mtu(found, ifaces), network.check_versions(found)]
        checks += [network.check_engine_versions(found, needs.engine)]
        if needs.gpus_per_node:
            checks.append(network.check_cuda_versions(found))
        checks += [network.check_clocks(offsets), network.check_weights_lock(found)]
        for n in needs.nodes[1:]:
            name, address = str(n["name"]), str(n.get("address"))
            if name not in found:
                continue
            checks.append(network.check_reachable(ssh, address, needs.ports, name))
            if measure:
                remote_iperf = bool(found[name].get("iperf3"))
                checks.append(
                    measured.check_bandwidth(ssh, address, name, n.get("network") or {}, remote_iperf)
                )
        if measure and nccl is None and all(str(n["name"]) in found for n in needs.nodes):
            port = needs.ports.get("dist_init_port") or needs.ports.get("master_port")
            checks.append(measured.check_collective(ssh, needs.nodes, port, torch_python))
    checks += _transfer_checks(needs, found, ssh)
    return checks


def _transfer_checks(needs: Needs, found: dict[str, dict[str, Any]], ssh: remote.Ssh) -> list[Check]:
    """A prefill/decode split's KV transfer ports, reachable from the other role's nodes (one check per
    node that listens); nothing for aggregated replicas."""
    if needs.transfer is None:
        return []
    nodes = {str(n["name"]): n for n in needs.nodes}
    head = str(needs.nodes[0]["name"])
    return [
        network.check_transfer_reachable(ssh, listener, nodes, head, set(found))
        for listener in needs.transfer.listeners
    ]
