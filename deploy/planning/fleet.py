"""The fleet of a plan: how many replicas of the chosen layout, on which nodes and ports, behind which router.

    >>> from deploy.hardware.profiles import profile_from_gpus
    >>> from deploy.planning.planner import plan
    >>> f = plan(profile_from_gpus("2x8xH200")).fleet
    >>> [(r.id, r.nodes, r.port) for r in f.replicas], f.router["port"]
    ([('r0', ('node0',), 8001), ('r1', ('node1',), 8002)], 8000)

Replicas that run on GPUs take whole nodes: a layout on k nodes gives ``nodes // k`` replicas, the default
(`plan --replicas N` asks for another count). Replicas of a CPU-only layout share a node only when asked:
the engine's threads are split among them and the node's RAM must hold every one. With one replica there
is no router and the replica serves on the candidate's own port (a plan as it always was); with more, the
router takes that port (users keep their URL) and replica i serves on the port + 1 + i.
Pure, like the planner: no subprocess, no file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from deploy.engines import registry as engines
from deploy.errors import InputError
from deploy.hardware.profiles import HardwareProfile, Node
from deploy.planning.contract import Candidate, Fleet, Replica
from deploy.planning.memory import host_available
from deploy.planning.request import MAX_REPLICAS, PlanRequest
from deploy.routers import registry as routers


def shares_nodes(c: Candidate) -> bool:
    """Whether replicas of ``c`` may share a node: a CPU-only layout on one node (its threads and RAM
    split); GPU replicas take whole nodes, and llama.cpp's RPC workers each hold one node's port.

        >>> from deploy.planning.planner import plan
        >>> from deploy.hardware.profiles import load_profile
        >>> shares_nodes(plan(load_profile("cpu-512g")).chosen_candidate)
        True
    """
    return c.placement == "cpu" and c.nodes == 1


def node_groups(c: Candidate, profile: HardwareProfile) -> int:
    """How many replicas of ``c`` the profile holds with whole nodes each (``nodes // c.nodes``).

    >>> from deploy.planning.planner import plan
    >>> from deploy.hardware.profiles import profile_from_gpus
    >>> node_groups(plan(profile_from_gpus("2x8xH200")).chosen_candidate, profile_from_gpus("2x8xH200"))
    2
    """
    return max(1, min(MAX_REPLICAS, len(profile.nodes) // max(1, c.nodes)))


def replicas_for(c: Candidate, profile: HardwareProfile, req: PlanRequest) -> int:
    """The replicas ``c`` gives on ``profile``: ``req.replicas`` where it holds them (capped at what it
    holds where it does not), else one per node group.

        >>> from deploy.planning.planner import plan
        >>> from deploy.hardware.profiles import profile_from_gpus
        >>> c = plan(profile_from_gpus("2x8xH200")).chosen_candidate
        >>> replicas_for(c, profile_from_gpus("2x8xH200"), PlanRequest(replicas=5))
        2
    """
    groups = node_groups(c, profile)
    if req.replicas is None:
        return groups
    return req.replicas if shares_nodes(c) else min(req.replicas, groups)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost`` (the demo binds loopback: its replicas are reached there).

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("10.0.0.5")
    (True, False, False)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_of(host: str, port: int) -> str:
    """``http://HOST:PORT`` (an IPv6 address in brackets); "" without a host (``plan --gpus``).

    >>> url_of("10.0.0.5", 8001), url_of("::1", 8001), url_of("", 8001)
    ('http://10.0.0.5:8001', 'http://[::1]:8001', '')
    """
    if not host:
        return ""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def _nodes(n: int) -> str:
    return f"{n} node{'s' if n != 1 else ''}"


def _host(profile: HardwareProfile, node: Node, engine_host: str) -> str:
    """Where a process on ``node`` is reached: the node's address when the engine binds beyond loopback,
    else the engine's own host; "" for hardware without addresses."""
    if profile.hypothetical:
        return ""
    return engine_host if is_loopback(engine_host) else node.address


def _placement(c: Candidate, profile: HardwareProfile, count: int) -> list[tuple[Node, ...]]:
    """The nodes of each replica: node groups in profile order, round robin when replicas share them."""
    groups = node_groups(c, profile)
    if count > groups and not shares_nodes(c):
        n = len(profile.nodes)
        raise InputError(
            f"--replicas {count}: each replica of {c.layout} takes {_nodes(c.nodes)} of its own; the "
            f"profile's {_nodes(n)} hold {groups}"
        )
    width = max(1, c.nodes)
    return [tuple(profile.nodes[(i % groups) * width : (i % groups + 1) * width]) for i in range(count)]


def _shared_threads(c: Candidate, placed: list[tuple[Node, ...]]) -> list[int | None]:
    """Each replica's threads: None on a node of its own (the candidate's threads stand), else the
    threads the candidate would give the engine, split among the replicas on that node (at least 1).
    InputError when the node's RAM cannot hold that many."""
    counts: dict[str, int] = {}
    for nodes in placed:
        counts[nodes[0].name] = counts.get(nodes[0].name, 0) + 1
    out: list[int | None] = []
    for nodes in placed:
        node, n = nodes[0], counts[nodes[0].name]
        if n == 1:
            out.append(None)
            continue
        need, have = c.memory.host * n, host_available(node)
        if need > have:
            raise InputError(
                f"{n} replicas of {c.layout} need {need:.1f} GiB of RAM on {node.name}, it has "
                f"{have:.1f} GiB usable ({c.memory.host:.2f} GiB each)"
            )
        base = c.engine_args.get("threads") or node.cpu.physical_cores
        out.append(max(1, int(base) // n))
    return out


def _check_ports(c: Candidate, ports: dict[str, int]) -> None:
    """One clear line for a port out of range or used twice (router, its metrics, replicas, and the
    candidate's own multi-node ports)."""
    multinode = c.engine_args.get("multinode") or {}
    for key in ("master_port", "dist_init_port", "rpc_port", "ray_port"):
        if isinstance(multinode.get(key), int):
            ports[f"the engine's {key}"] = multinode[key]
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if not 1 <= port <= 65535:
            raise InputError(f"port clash: {name} would serve on {port}, beyond 65535 (fewer --replicas?)")
        if port in seen:
            hint = " (choose another --router-port)" if "router" in name + seen[port] else ""
            raise InputError(f"port clash: {name} and {seen[port]} both use port {port}{hint}")
        seen[port] = name


def router_dict(c: Candidate, profile: HardwareProfile, port: int) -> dict[str, Any]:
    """plan.json's ``fleet.router``: the router the candidate's engine gets (``Engine.router``), its pinned
    version and its settings for that engine, on the head node of r0 (the profile's first node).

        >>> from deploy.planning.planner import plan
        >>> from deploy.hardware.profiles import load_profile
        >>> c = plan(load_profile("h200x8")).chosen_candidate
        >>> d = router_dict(c, load_profile("h200x8"), 8000)
        >>> d["program"], d["host"], d["url"], d["policy"]
        ('vllm-router', '127.0.0.1', 'http://127.0.0.1:8000', 'cache_aware')
    """
    router = routers.for_engine(engines.get(c.engine))
    head = profile.nodes[0]
    host = _host(profile, head, str(c.engine_args.get("host", "127.0.0.1")))
    where = {
        "program": router.name,
        "version": router.version,
        "node": head.name,
        "host": host,
        "port": port,
        "url": url_of(host, port),
        "metrics_port": router.metrics_port,
    }
    return {**where, **router.settings_for(engines.get(c.engine)).to_dict()}


def build_fleet(
    c: Candidate, profile: HardwareProfile, req: PlanRequest, candidates: list[Candidate]
) -> Fleet:
    """The fleet of the chosen candidate ``c``: ``req.replicas`` replicas (None: ``c.replicas``, one per
    node group), their nodes, hosts, ports and threads, the router with more than one, and the reason.
    InputError (one line) for a count the hardware cannot hold, RAM short for replicas sharing a node,
    or a port clash.

        >>> from deploy.planning.planner import plan
        >>> from deploy.hardware.profiles import load_profile
        >>> ci, req = load_profile("ci-24g"), PlanRequest(model="demo", replicas=2)
        >>> c = plan(ci, PlanRequest(model="demo")).chosen_candidate
        >>> [(r.nodes, r.threads) for r in build_fleet(c, ci, req, [c]).replicas]
        [(('ci',), 1), (('ci',), 1)]
    """
    count = req.replicas or c.replicas
    placed = _placement(c, profile, count)
    threads = _shared_threads(c, placed)
    engine_host = str(c.engine_args.get("host", "127.0.0.1"))
    engine_port = int(c.engine_args.get("port", 8000))
    if count == 1 and req.router_port is not None:
        raise InputError(
            f"--router-port {req.router_port}: one replica has no router (ask --replicas 2 or more)"
        )
    ports = [engine_port] if count == 1 else [engine_port + 1 + i for i in range(count)]
    router = None
    if count > 1:
        router = router_dict(c, profile, req.router_port or engine_port)
        named = {"the router": int(router["port"]), "the router's metrics": int(router["metrics_port"])}
        _check_ports(c, {**named, **{f"replica r{i}": p for i, p in enumerate(ports)}})
    replicas = []
    for i, (nodes, port, thr) in enumerate(zip(placed, ports, threads, strict=True)):
        host = _host(profile, nodes[0], engine_host)
        names = tuple(n.name for n in nodes)
        replicas.append(Replica(f"r{i}", names, c.layout, host, port, url_of(host, port), thr))
    return Fleet(tuple(replicas), router, fleet_reason(c, ports, profile, req, candidates, router))


def build_split_fleet(
    option: Any, profile: HardwareProfile, req: PlanRequest, candidates: list[Candidate], why: str
) -> Fleet:
    """The fleet of a prefill/decode split (``option``, a deploy.planning.disaggregation.FleetOption):
    ``option.prefill`` prefill replicas then ``option.decode`` decode replicas, one node group each in
    profile order, ids r0, r1, ...; the router in its prefill/decode mode; each role's candidate and the
    engine_args the role adds (the engine's data); the transfer's ports checked against the others."""
    from deploy.planning import disaggregation as pd

    by_id = {c.id: c for c in candidates}
    prefill_c, decode_c = by_id[option.prefill_candidate], by_id[option.decode_candidate]
    eng = engines.get(prefill_c.engine)
    spec = eng.disaggregation
    assert spec is not None, prefill_c.engine
    backend = pd.transfer_backend(prefill_c.engine, req)
    width = max(1, option.nodes_per_instance)
    count = option.prefill + option.decode
    placed = [tuple(profile.nodes[i * width : (i + 1) * width]) for i in range(count)]
    names = [n.name for group in placed for n in group]
    rdma = pd._rdma(profile, names)
    engine_host = str(prefill_c.engine_args.get("host", "127.0.0.1"))
    engine_port = int(prefill_c.engine_args.get("port", 8000))
    ports = [engine_port + 1 + i for i in range(count)]
    router = router_dict(prefill_c, profile, req.router_port or engine_port)
    two = routers.get(str(router["program"])).pd.two_server_policies

    def policy(wanted: str, servers: int) -> str:
        # a policy that picks between two (power of two) is refused by the router for a role with one
        return wanted if servers > 1 or wanted not in two else "round_robin"

    router["pd"] = {
        "kv_connector": spec.router_kv_connector,
        "prefill_policy": policy(pd.PREFILL_POLICY, option.prefill),
        "decode_policy": policy(pd.DECODE_POLICY, option.decode),
    }
    named = {"the router": int(router["port"]), "the router's metrics": int(router["metrics_port"])}
    if spec.bootstrap_port is not None:
        named["the prefill bootstrap server"] = spec.bootstrap_port
    if spec.side_channel_port is not None:
        named["the KV side channel"] = spec.side_channel_port
    _check_ports(prefill_c, {**named, **{f"replica r{i}": p for i, p in enumerate(ports)}})
    replicas = []
    for i, (nodes, port) in enumerate(zip(placed, ports, strict=True)):
        role = "prefill" if i < option.prefill else "decode"
        cand = prefill_c if role == "prefill" else decode_c
        host = _host(profile, nodes[0], engine_host)
        replicas.append(
            Replica(
                f"r{i}", tuple(n.name for n in nodes), cand.layout, host, port, url_of(host, port), None, role
            )
        )

    def role(name: str, cand: Candidate, instances: int) -> dict[str, Any]:
        return {
            "instances": instances,
            "candidate": cand.id,
            "layout": cand.layout,
            "engine_args": pd.role_engine_args(name, cand, option, backend, rdma),
        }

    split = {
        "transfer_backend": backend,
        "rdma_devices": list(rdma),
        "bootstrap_port": spec.bootstrap_port,
        "side_channel_port": spec.side_channel_port,
        "prefill": role("prefill", prefill_c, option.prefill),
        "decode": role("decode", decode_c, option.decode),
        "predicted": {
            "output_tok_s_per_gpu": option.output_tok_s_per_gpu,
            "low": option.low,
            "high": option.high,
            "itl_s": option.itl_s,
            "source": option.source,
            "workload": dataclasses.asdict(req.workload_shape()),
        },
        "reason": option.reason,
    }
    no_rdma = (
        "" if rdma else "; the profile names no RDMA device common to every node: the backend picks its own"
    )
    reason = (
        f"{option.prefill} prefill + {option.decode} decode instance(s) ({_nodes(width)} each): {why}; "
        f"{router['program']} {router['version']} fronts them on port {router['port']} in its "
        f"prefill/decode mode; KV moves over {backend}{no_rdma}."
    )
    return Fleet(tuple(replicas), router, reason, mode="disaggregated", disaggregation=split)


def remote_loopback_warning(fleet: Fleet) -> str | None:
    """A line for the explanation when replicas run on other nodes than the router but the engine binds
    loopback (the plan's default): the router reaches them only once the release binds beyond it.

        >>> remote_loopback_warning(Fleet(()))
    """
    if fleet.router is None:
        return None
    far = [r.id for r in fleet.replicas if r.nodes[0] != fleet.router["node"] and is_loopback(r.host)]
    if not far:
        return None
    verb = "runs" if len(far) == 1 else "run"
    return (
        f"Warning: {', '.join(far)} {verb} on other nodes than the router ({fleet.router['node']}) and the "
        "engine binds loopback: render with --bind beyond loopback (the nodes' addresses) so the router "
        "reaches them."
    )


def _alternatives(c: Candidate, candidates: list[Candidate]) -> list[Candidate]:
    """Candidates that run the same engine and weights on a different number of nodes."""
    return [
        o
        for o in candidates
        if o.runs and not o.tight and o.engine == c.engine and o.variant == c.variant and o.nodes != c.nodes
    ]


def fleet_reason(
    c: Candidate,
    ports: list[int],
    profile: HardwareProfile,
    req: PlanRequest,
    candidates: list[Candidate],
    router: dict[str, Any] | None,
) -> str:
    """Why this many replicas (one per port in ``ports``) of this layout: the count's source, the router,
    and the layout chosen over one on more nodes (more replicas serve more) or on fewer (only the bigger
    one reaches the context).

        >>> from deploy.planning.planner import plan
        >>> from deploy.hardware.profiles import load_profile
        >>> plan(load_profile("h200x8")).fleet.reason.split("; ")[-1]
        "no router: it serves on the engine's own port 8000."
    """
    n, count = len(profile.nodes), len(ports)
    head = f"{count} replicas of {c.layout} ({_nodes(c.nodes)} each)"
    if count == 1:
        head = f"1 replica of {c.layout} on {_nodes(c.nodes)}"
    elif count > n and shares_nodes(c):
        head = f"{count} replicas of {c.layout} sharing {_nodes(n)} (the engine's threads split among them)"
    if req.replicas is not None:
        why = f"as asked (--replicas {req.replicas})"
    elif shares_nodes(c) and n == 1:
        why = "one per CPU node by default (--replicas N shares its cores among N)"
    else:
        why = f"as many as the profile's {_nodes(n)} {'hold' if n > 1 else 'holds'}"
    parts = [f"{head}: {why}"]
    if router is None:
        parts.append(f"no router: it serves on the engine's own port {ports[0]}")
    else:
        parts.append(
            f"{router['program']} {router['version']} fronts them on port {router['port']} "
            f"({router['policy']}; {engines.get(c.engine).router_reason}); replicas on ports "
            f"{ports[0]}-{ports[-1]}"
        )
    bigger = [
        o
        for o in _alternatives(c, candidates)
        if o.nodes > c.nodes and o.status == c.status and o.replicas < count
    ]
    if bigger:
        o = min(bigger, key=lambda o: o.nodes)
        parts.append(
            f"chosen over {o.layout} ({o.replicas} replica{'s' if o.replicas > 1 else ''} of {o.nodes} "
            f"nodes): both reach {c.max_model_len:,} tokens, and throughput scales with replicas"
        )
    smaller = [
        o
        for o in _alternatives(c, candidates)
        if o.nodes < c.nodes and o.replicas > count and o.max_model_len < c.max_model_len
    ]
    if smaller:
        o = min(smaller, key=lambda o: o.nodes)
        parts.append(
            f"{o.layout} would give {o.replicas} replicas but reaches only {o.max_model_len:,} tokens "
            f"({o.status}): the bigger layout serves the requested {c.max_model_len:,}"
        )
    return "; ".join(parts) + "."


__all__ = [
    "build_fleet",
    "build_split_fleet",
    "fleet_reason",
    "is_loopback",
    "node_groups",
    "remote_loopback_warning",
    "replicas_for",
    "router_dict",
    "shares_nodes",
    "url_of",
]
