"""NCCL's own all-reduce test (nccl-tests' ``all_reduce_perf``) on each GPU node, as bus bandwidth.

    >>> parse_busbw("# Out of bounds values : 0 OK\\n# Avg bus bandwidth    : 361.143 \\n#\\n")
    361.143

Where every node of a GPU plan has ``all_reduce_perf`` on its PATH, each runs it over its own GPUs
(``-g <gpus per node>``: NVLink/NVSwitch or PCIe between them); the threshold is half the GPU table's
NVLink figure in one direction. Across nodes nccl-tests needs MPI, which the toolkit does not install:
the cross-node collective stays the Gloo all-reduce (``measured.check_collective``) where nccl-tests is
missing, and ``bandwidth`` (iperf3) measures the links between nodes.
"""

from __future__ import annotations

import subprocess
from typing import Any

from deploy.errors import InputError
from deploy.hardware.profiles import gpu_spec
from deploy.preflight import remote
from deploy.preflight.result import Check

#: One size, large enough that the bus, not the launch latency, sets the time (nccl-tests' PERFORMANCE.md).
SIZE = "1G"
TIMEOUT_S = 180
#: Bus bandwidth reaches well over half of NVLink's one-way figure on a healthy HGX board; below that a
#: link is down, the fabric manager degraded or NCCL fell back to PCIe/SHM.
NVLINK_FRACTION = 0.5
INSTALL = "build nccl-tests on every GPU node (github.com/NVIDIA/nccl-tests: `make`) and put it on PATH"


def argv(gpus: int) -> list[str]:
    """``all_reduce_perf -b 1G -e 1G -f 2 -g <gpus>``.

    >>> argv(8)[-2:]
    ['-g', '8']
    """
    return ["all_reduce_perf", "-b", SIZE, "-e", SIZE, "-f", "2", "-g", str(gpus)]


def parse_busbw(text: str) -> float:
    """GB/s from nccl-tests' ``# Avg bus bandwidth : N`` line; ValueError when it printed none."""
    for line in text.splitlines():
        if line.startswith("#") and "Avg bus bandwidth" in line:
            return float(line.split(":", 1)[1].split()[0])
    raise ValueError("no '# Avg bus bandwidth' line in all_reduce_perf's output")


def floor_gbs(gpu_model: str) -> float | None:
    """The least acceptable bus bandwidth (GB/s) for ``gpu_model``'s NVLink; None without NVLink.

    >>> floor_gbs("H100")
    225.0
    """
    try:
        spec = gpu_spec(gpu_model)
    except InputError:
        return None
    # the table's figure is both directions together; bus bandwidth is one direction
    return spec.interconnect_gbps / 2 * NVLINK_FRACTION if spec.interconnect == "nvlink" else None


def check_nccl_allreduce(
    ssh: remote.Ssh, node: dict[str, Any], gpus: int, gpu_model: str, here: bool
) -> Check:
    """Run ``all_reduce_perf`` on ``node`` (here, or over ssh) and hold its bus bandwidth to ``floor_gbs``."""
    name = str(node.get("name"))
    command = argv(gpus) if here else ssh.argv(str(node.get("address")), argv(gpus))
    try:
        p = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        busbw = parse_busbw(p.stdout)
    except subprocess.TimeoutExpired:
        return Check("collective", "fail", f"all_reduce_perf: no result in {TIMEOUT_S} s", INSTALL, name)
    except ValueError:
        last = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or [""]
        hint = "run it by hand (`" + " ".join(argv(gpus)) + "`); NCCL_DEBUG=INFO says which transport failed"
        return Check("collective", "fail", f"all_reduce_perf rc {p.returncode}: {last[0][-200:]}", hint, name)
    floor = floor_gbs(gpu_model)
    value = f"{busbw:.1f} GB/s bus bandwidth (NCCL all_reduce_perf, {SIZE}B x {gpus} GPUs)"
    if floor is not None and busbw < floor:
        hint = "an NVLink is down or NCCL fell back to PCIe: `nvidia-smi nvlink -s`, `nvidia-smi topo -m`"
        return Check("collective", "fail", value + f" (need >= {floor:.0f})", hint, name)
    note = f" (need >= {floor:.0f})" if floor is not None else "; no NVLink figure to compare"
    return Check("collective", "pass", value + note, node=name)
