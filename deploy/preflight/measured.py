"""Measured links: iperf3 from the head to each node, against a threshold from the profile's network.

    >>> from deploy.preflight.measured import threshold_gbps
    >>> threshold_gbps({"link_gbps": 400})
    200.0

The collective test (NCCL all_reduce_perf, or Gloo through torch) is a skip with its reason for now.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from deploy.preflight import remote
from deploy.preflight.result import Check

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


def check_collective() -> Check:
    return Check(
        "collective", "skip", "", "not built yet: NCCL all_reduce_perf / Gloo all-reduce bus bandwidth"
    )
