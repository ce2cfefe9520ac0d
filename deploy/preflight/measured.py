"""Measured links: iperf3 from the head to each node, against a threshold from the profile's network.

    >>> from deploy.preflight.measured import threshold_gbps
    >>> threshold_gbps({"link_gbps": 400})
    200.0

The collective test is a Gloo all-reduce through torch (``allreduce.py`` on every node, the plan's
interface), reported as bus bandwidth; NCCL's all_reduce_perf on GPU nodes is not wired in yet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.preflight import facts, remote
from deploy.preflight.result import Check

ALLREDUCE = Path(__file__).with_name("allreduce.py")
ALLREDUCE_MIB = 64
ALLREDUCE_ITERS = 5
#: The all-reduce's rendezvous port when the plan has no torch.distributed port of its own.
DEFAULT_RENDEZVOUS_PORT = 29500

IPERF_PORT = 5201
IPERF_SECONDS = 2
#: A TCP stream between two hosts reaches about half a fast link at least; lower means a wrong route,
#: a degraded link or traffic going through a slower interface.
LINK_FRACTION = 0.5
INSTALL = "install iperf3 on every node: `apt-get install iperf3` (make setup-system does it here)"


def threshold_gbps(network: dict[str, Any]) -> float | None:
    """The least acceptable Gbit/s for a profile's ``network`` (None: no link speed in the profile)."""
    link = network.get("link_gbps")
    return float(link) * LINK_FRACTION if link else None


def parse_iperf(text: str) -> float:
    """Gbit/s received, from ``iperf3 -J`` output.

    >>> parse_iperf('{"end": {"sum_received": {"bits_per_second": 9.4e9}}}')
    9.4
    """
    data = json.loads(text)
    if "error" in data:
        raise ValueError(data["error"])
    return round(float(data["end"]["sum_received"]["bits_per_second"]) / 1e9, 2)


def check_bandwidth(
    ssh: remote.Ssh, address: str, node: str, network: dict[str, Any], remote_iperf: bool
) -> Check:
    """iperf3 server on the node (one test, then it exits), client here, for IPERF_SECONDS."""
    if shutil.which("iperf3") is None or not remote_iperf:
        where = "here" if shutil.which("iperf3") is None else node
        return Check("bandwidth", "skip", f"iperf3 missing on {where}", INSTALL, node)
    server = subprocess.Popen(
        ssh.argv(address, ["iperf3", "-s", "-1", "-p", str(IPERF_PORT), "--forceflush"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:  # iperf3 says when it listens
            if "listening" in line.lower():
                break
        client = subprocess.run(
            ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(IPERF_SECONDS), "-J"],
            capture_output=True,
            text=True,
            timeout=IPERF_SECONDS + 30,
        )
        gbps = parse_iperf(client.stdout)
    except (ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        return Check(
            "bandwidth", "fail", f"iperf3 to {address}:{IPERF_PORT}: {exc}", f"open port {IPERF_PORT}", node
        )
    finally:
        remote.stop(server)  # type: ignore[arg-type]
    floor = threshold_gbps(network)
    value = f"{gbps:.2f} Gbit/s head -> {node}" + (f" (need >= {floor:.1f})" if floor else "")
    if floor and gbps < floor:
        hint = "check the route (does the traffic use the plan's interface?), cabling and link speed"
        return Check("bandwidth", "fail", value, hint, node)
    return Check(
        "bandwidth", "pass", value + ("" if floor else "; no link_gbps in the profile to compare"), node=node
    )


def find_torch_python(cache: Path | None = None) -> str | None:
    """A python with torch: the first cached venv (``~/.cache/kimi-deploy/venvs/*``) that has one."""
    for venv in sorted((cache or constants.CACHE_DIR / "venvs").glob("*")):
        if (
            list(venv.glob("lib/python3*/site-packages/torch/__init__.py"))
            and (venv / "bin" / "python").exists()
        ):
            return str(venv / "bin" / "python")
    return None


def check_collective(
    ssh: remote.Ssh, nodes: list[dict[str, Any]], port: int | None, torch_python: str | None
) -> Check:
    """Gloo all-reduce over every node of the plan (rank 0 here), as bus bandwidth in Gbit/s."""
    if torch_python is None:
        hint = (
            "no python with torch here (give --torch-python, e.g. the engine's venv); the engines install it"
        )
        return Check("collective", "skip", "Gloo all-reduce not run", hint)
    head = nodes[0]
    init = f"tcp://{head.get('address')}:{port or DEFAULT_RENDEZVOUS_PORT}"
    world = str(len(nodes))

    def args(rank: int, node: dict[str, Any]) -> list[str]:
        iface = str(node.get("network_interface") or "")
        return [str(rank), world, init, iface, str(ALLREDUCE_MIB), str(ALLREDUCE_ITERS)]

    ranks = [
        subprocess.Popen(
            ssh.argv(str(n.get("address")), facts.remote_argv(torch_python, *args(i, n), script=ALLREDUCE)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, n in enumerate(nodes[1:], start=1)
    ]
    ranks.insert(
        0,
        subprocess.Popen(
            [torch_python, str(ALLREDUCE), *args(0, head)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    )
    outs = []
    for proc in ranks:
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        outs.append((proc.returncode, out, err))
    bad = [(i, rc, err.strip().splitlines()[-1:] or [""]) for i, (rc, _, err) in enumerate(outs) if rc != 0]
    if bad:
        i, rc, last = bad[0]
        hint = (
            f"ranks must reach {init} and each other on the plan's interface (firewall, GLOO_SOCKET_IFNAME)"
        )
        return Check("collective", "fail", f"rank {i} exit {rc}: {last[0][-200:]}", hint)
    result = json.loads(outs[0][1].strip().splitlines()[-1])
    busbw = result["busbw_gbps"]
    value = f"{busbw:.2f} Gbit/s bus bandwidth (Gloo all-reduce, {ALLREDUCE_MIB} MiB x {world})"
    return Check("collective", "pass", value)
