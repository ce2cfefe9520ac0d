"""Per-node checks: one node's facts (``facts.collect``) against what the plan needs of it (``needs``).

    >>> from deploy.preflight.node import check_shm
    >>> check_shm({"shm_bytes": 2**20}, needs, "head").status      # doctest: +SKIP
    'fail'

Each function returns one ``Check``; ``node_checks`` runs those the plan calls for.
"""

from __future__ import annotations

from typing import Any

from deploy.constants import GIB, MIB
from deploy.errors import InputError
from deploy.preflight.driver import DRIVER_SOURCE, SmiGpu, parse_smi, version_tuple
from deploy.preflight.needs import Needs
from deploy.preflight.result import Check

APT_DRIVER = (
    "install the driver from NVIDIA's CUDA repository (e.g. `apt install nvidia-driver-{branch}-open`)"
)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def smi_gpus(facts: dict[str, Any]) -> tuple[list[SmiGpu] | None, str]:
    """The node's GPUs from its ``nvidia-smi`` output, or None and why not."""
    smi = facts.get("nvidia_smi")
    if smi is None:
        return None, "nvidia-smi not found: no NVIDIA driver on this node"
    if smi.get("rc") != 0:
        return (
            None,
            f"nvidia-smi failed (rc {smi.get('rc')}): {(smi.get('err') or smi.get('out') or '')[:200]}",
        )
    try:
        return parse_smi(smi.get("out", "")), ""
    except InputError as exc:
        return None, str(exc)


def check_gpus(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    """GPU count and memory against the plan's ``gpus_per_node`` and model."""
    gpus, why = smi_gpus(facts)
    if gpus is None:
        return Check(
            "gpus", "fail", why, "this plan needs NVIDIA GPUs: install the driver or plan for this node"
        )
    want = needs.gpus_per_node
    spec_mib = next(
        (int(n.get("gpus", {}).get("memory_mib") or 0) for n in needs.nodes if n.get("name") == node), 0
    )
    small = [g for g in gpus if spec_mib and g.memory_mib < spec_mib * 0.98]
    value = f"{len(gpus)} x {gpus[0].name if gpus else '-'} (plan: {want} x {needs.gpu_model})"
    if len(gpus) < want:
        return Check(
            "gpus",
            "fail",
            value,
            "fewer GPUs than the plan: re-run `kimi-deploy plan` on this hardware",
            node,
        )
    if small:
        return Check("gpus", "fail", value + f", {small[0].memory_mib} MiB < {spec_mib} MiB", "re-plan", node)
    return Check("gpus", "pass", value, node=node)


def check_driver(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    """The oldest driver on the node against what the pinned engine's CUDA build needs."""
    need = needs.driver
    if need is None:
        return Check("driver", "skip", "", f"{needs.engine} needs no CUDA driver", node)
    gpus, why = smi_gpus(facts)
    if not gpus:
        return Check("driver", "fail", why or "no GPU listed", "install the NVIDIA driver", node)
    have = min((g.driver for g in gpus), key=version_tuple)
    value = (
        f"{have} (need >= {need.driver}: {need.engine} {need.pin} -> torch {need.torch} -> CUDA {need.cuda})"
    )
    if version_tuple(have) < version_tuple(need.driver):
        hint = APT_DRIVER.format(branch=need.driver.split(".")[0]) + f"; minimums per {DRIVER_SOURCE}"
        return Check("driver", "fail", value, hint, node)
    return Check("driver", "pass", value, node=node)


def check_persistence(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    gpus, why = smi_gpus(facts)
    if not gpus:
        return Check("persistence_mode", "skip", "", why or "no GPU listed", node)
    off = sum(1 for g in gpus if not g.persistence)
    if off:
        hint = "enable it: `systemctl enable --now nvidia-persistenced` (or `nvidia-smi -pm 1`)"
        return Check("persistence_mode", "fail", f"off on {off} of {len(gpus)} GPUs", hint, node)
    return Check("persistence_mode", "pass", f"on, {len(gpus)} GPUs", node=node)


def check_fabric_manager(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    """NVSwitch boards (HGX 8-GPU) start no CUDA context until nvidia-fabricmanager runs."""
    if not (needs.nvswitch or facts.get("nvswitch")):
        return Check("fabric_manager", "skip", "", "no NVSwitch in this plan or on this node", node)
    state = facts.get("fabric_manager")
    hint = (
        "`apt install nvidia-fabricmanager-<driver branch>` then "
        "`systemctl enable --now nvidia-fabricmanager`"
    )
    if state is None:
        return Check("fabric_manager", "fail", "systemctl not found", hint, node)
    value = (state.get("out") or state.get("err") or "").strip().splitlines()[0:1]
    status = value[0] if value else f"rc {state.get('rc')}"
    if state.get("rc") != 0 or status != "active":
        return Check("fabric_manager", "fail", f"nvidia-fabricmanager {status}", hint, node)
    return Check("fabric_manager", "pass", "nvidia-fabricmanager active", node=node)


def check_shm(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    have, need = int(facts.get("shm_bytes") or 0), needs.shm_bytes
    value = f"{_gib(have)} (need {_gib(need)})"
    if have < need:
        hint = f"enlarge it: `mount -o remount,size={max(1, need // GIB)}G /dev/shm` (containers: --shm-size)"
        return Check("shm", "fail", value, hint, node)
    return Check("shm", "pass", value, node=node)


def check_disk(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    """Free space where the weights go, unless they are there already (a weights.lock)."""
    have = int(facts.get("disk_free_bytes") or 0)
    need = 0 if facts.get("lock_sha256") else needs.weights_bytes
    value = f"{_gib(have)} free at {facts.get('disk_path')} (need {_gib(need)})"
    if have < need:
        return Check("disk", "fail", value, "free space or choose another --weights-dir, then re-plan", node)
    return Check("disk", "pass", value, node=node)


def check_ram(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    """Host RAM for what the engine keeps in RAM (CPU experts, CPU layers and KV, its processes)."""
    have, need = int(facts.get("ram_bytes") or 0), needs.host_ram_bytes
    value = f"{_gib(have)} (need {_gib(need)})"
    if have < need:
        return Check(
            "ram", "fail", value, "this node has less RAM than the plan: re-plan on its inventory", node
        )
    return Check("ram", "pass", value, node=node)


def check_isa(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    want = needs.isa.get(node) or []
    if not want:
        return Check("cpu_isa", "skip", "", "the build targets no particular ISA", node)
    missing = [f for f in want if f not in set(facts.get("cpu_flags") or [])]
    if missing:
        hint = "this CPU lacks what the build targets: re-run `kimi-deploy inventory` and plan on its output"
        return Check("cpu_isa", "fail", f"missing {', '.join(missing)}", hint, node)
    return Check("cpu_isa", "pass", ", ".join(want), node=node)


def check_ports_free(facts: dict[str, Any], needs: Needs, node: str) -> Check:
    """The plan's ports, and on a node that listens for a prefill/decode split's KV transfer its ports
    (``Needs.ports_on``), free on the node."""
    ports = needs.ports_on(node)
    taken = set(facts.get("ports_busy") or [])
    busy = [f"{name} {port}" for name, port in ports.items() if port in taken]
    if busy:
        hint = "stop what listens there (`ss -ltnp`), or re-plan with other ports"
        return Check("ports_free", "fail", "in use: " + ", ".join(busy), hint, node)
    return Check("ports_free", "pass", ", ".join(str(p) for p in sorted(set(ports.values()))), node=node)


def node_checks(facts: dict[str, Any], needs: Needs, node: str) -> list[Check]:
    """Every per-node check the plan calls for (GPU checks only for a GPU plan)."""
    checks = []
    if needs.gpus_per_node:
        checks += [check_gpus(facts, needs, node), check_driver(facts, needs, node)]
        checks += [check_persistence(facts, needs, node), check_fabric_manager(facts, needs, node)]
    checks += [check_shm(facts, needs, node), check_disk(facts, needs, node), check_ram(facts, needs, node)]
    checks += [check_isa(facts, needs, node), check_ports_free(facts, needs, node)]
    return [c if c.node else Check(c.name, c.status, c.value, c.hint, node) for c in checks]
