"""The NCCL environment a node's fabric calls for, from the profile's ``network`` facts.

    >>> nccl_fabric_env({"fabric": "roce", "rdma_devices": ["mlx5_0", "mlx5_1"], "gid_index": 3})
    [('NCCL_IB_HCA', 'mlx5_0,mlx5_1'), ('NCCL_IB_GID_INDEX', '3')]
    >>> nccl_fabric_env({"fabric": "ethernet"})
    []

One function for render (the systemd env files, and through ``engine_environment`` the Kubernetes target)
and for pre-flight, which holds what was rendered against the profile and the node's sysfs: the two cannot
drift apart.
"""

from __future__ import annotations

from typing import Any

#: The fabrics NCCL reaches through its IB verbs transport (RoCE is verbs over Ethernet).
RDMA_FABRICS = ("infiniband", "roce")
NCCL_FABRIC_VARS = ("NCCL_IB_HCA", "NCCL_IB_GID_INDEX")


def nccl_fabric_env(network: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``NCCL_IB_HCA`` (the profile's RDMA devices, so NCCL uses exactly those and not a management NIC's
    port) and, on RoCE, ``NCCL_IB_GID_INDEX`` (NCCL's default GID 0 is RoCE v1/link-local, which a routed
    RoCE v2 fabric drops). Nothing for Ethernet or a profile without the facts."""
    net = network or {}
    if str(net.get("fabric") or "") not in RDMA_FABRICS:
        return []
    out: list[tuple[str, str]] = []
    devices = [str(d) for d in net.get("rdma_devices") or []]
    if devices:
        out.append(("NCCL_IB_HCA", ",".join(devices)))
    if net.get("fabric") == "roce" and isinstance(net.get("gid_index"), int):
        out.append(("NCCL_IB_GID_INDEX", str(net["gid_index"])))
    return out
