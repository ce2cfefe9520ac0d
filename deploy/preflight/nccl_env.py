"""``NCCL_IB_HCA`` / ``NCCL_IB_GID_INDEX`` as rendered, held against the profile and the node's sysfs.

    >>> from deploy.preflight.nccl_env import check_nccl_env
    >>> net = {"fabric": "roce", "rdma_devices": ["mlx5_0"], "gid_index": 3}
    >>> facts = {"infiniband": {"mlx5_0": {"1": "4: ACTIVE"}}, "gids": {"mlx5_0": {"1": {"3": "RoCE v2"}}}}
    >>> check_nccl_env(facts, net, None, "head").status
    'pass'

The rendered values come from the release's env files (``kimi-deploy.env``, then the node's own
``kimi-deploy-<node>.env``, as systemd reads them) where ``--release`` names a rendered folder; otherwise
from what render would write (``deploy.hardware.fabric``), so the profile is still checked against sysfs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from deploy.errors import InputError
from deploy.hardware.fabric import NCCL_FABRIC_VARS, RDMA_FABRICS, nccl_fabric_env
from deploy.preflight.result import Check

_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
RERENDER = "fix the profile's network facts, re-plan and re-render (`kimi-deploy render`)"


def read_env_files(release: Path, node: str) -> dict[str, str] | None:
    """The variables the shared and the node's env file set (the node's win); None when neither exists."""
    values: dict[str, str] = {}
    found = False
    for path in (release / "kimi-deploy.env", release / f"kimi-deploy-{node}.env"):
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror}") from None
        found = True
        for line in text.splitlines():
            m = _LINE.match(line.strip())
            if m:
                try:
                    words = shlex.split(m.group(2))
                except ValueError:
                    raise InputError(f"{path}: unreadable value of {m.group(1)}") from None
                values[m.group(1)] = words[0] if words else ""
    return values if found else None


def _hca_devices(hca: str) -> list[str]:
    """Device names of an ``NCCL_IB_HCA`` value (``^`` excludes and ``=`` exact-match prefixes, ``:port``)."""
    return [d.split(":")[0] for d in hca.lstrip("^=").split(",") if d]


def _gid_problems(facts: dict[str, Any], devices: list[str], index: str) -> list[str]:
    gids = facts.get("gids") or {}
    problems = []
    for dev in devices:
        for port, slots in sorted((gids.get(dev) or {}).items()):
            kind = slots.get(index)
            if not kind:
                problems.append(f"GID {index} empty on {dev} port {port}")
            elif "v2" not in kind:
                problems.append(f"GID {index} on {dev} port {port} is {kind}, not RoCE v2")
    return problems


def check_nccl_env(
    facts: dict[str, Any], network: dict[str, Any], rendered: dict[str, str] | None, node: str
) -> Check:
    """The rendered NCCL fabric variables equal the profile's, name devices the node has, and (RoCE) a GID
    index whose slot holds a RoCE v2 GID on every port of those devices."""
    if str(network.get("fabric") or "") not in RDMA_FABRICS:
        return Check("nccl_env", "skip", "", "the profile names no InfiniBand/RoCE fabric", node)
    want = dict(nccl_fabric_env(network))
    source = "rendered" if rendered is not None else "render would set"
    have = {k: v for k, v in (want if rendered is None else rendered).items() if k in NCCL_FABRIC_VARS}
    value = f"{source}: " + (" ".join(f"{k}={v}" for k, v in sorted(have.items())) or "none")
    differ = [f"{k} {have.get(k, 'unset')} != profile {want.get(k, 'unset')}" for k in NCCL_FABRIC_VARS]
    differ = [d for d, k in zip(differ, NCCL_FABRIC_VARS, strict=True) if have.get(k) != want.get(k)]
    if differ:
        return Check("nccl_env", "fail", value + "; " + "; ".join(differ), RERENDER, node)
    devices = _hca_devices(have.get("NCCL_IB_HCA", ""))
    sysfs = sorted(facts.get("infiniband") or {})
    absent = [d for d in devices if d not in sysfs]
    if absent:
        hint = f"this node's RDMA devices are {', '.join(sysfs) or 'none'} (`ibv_devices`): " + RERENDER
        return Check(
            "nccl_env", "fail", value + f"; not in /sys/class/infiniband: {', '.join(absent)}", hint, node
        )
    index = have.get("NCCL_IB_GID_INDEX")
    problems = _gid_problems(facts, devices, index) if index is not None else []
    if problems:
        hint = "set gid_index to the slot `show_gids` lists as RoCE v2 on every device, then " + RERENDER
        return Check("nccl_env", "fail", value + "; " + "; ".join(problems), hint, node)
    return Check("nccl_env", "pass", value, node=node)
