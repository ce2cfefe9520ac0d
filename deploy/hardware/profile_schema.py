"""The JSON Schema of a hardware profile (``hardware/*.yaml``, `inventory` output, plan.json's ``hardware``).

    >>> from deploy.hardware.profile_schema import PLAN_HARDWARE
    >>> from deploy.schema import validate
    >>> validate({"nodes": [{"name": "n0", "ram_gib": -1}]}, PLAN_HARDWARE, "p.yaml")
    Traceback (most recent call last):
    ...
    deploy.errors.InputError: p.yaml: nodes[0].ram_gib: -1 is less than the minimum of 0

``NODE`` types every key a node may have; ``PROFILE_SCHEMA`` also requires what the planner needs
(``load_profile``), while plan.json's copy (``PLAN_HARDWARE``) only types what is there.
"""

from __future__ import annotations

from typing import Any

from deploy import schema

NODE_PROPERTIES: dict[str, Any] = {
    "name": schema.NAME,
    "address": schema.HOST,
    "gpus": {
        "type": "object",
        "properties": {
            "model": schema.TEXT,  # NVML names have spaces ("NVIDIA A10G")
            "count": {"type": "integer", "minimum": 0, "maximum": schema.MAX_GPUS_PER_NODE},
            "memory_mib": {"type": "integer", "minimum": 0, "maximum": 16 * 1024 * 1024},
        },
    },
    "cpu": {
        "type": "object",
        "properties": {
            "model": schema.TEXT,
            "physical_cores": {"type": "integer", "minimum": 1, "maximum": 65536},
            "isa": {"type": "array", "items": schema.WORD, "maxItems": 512},
            "numa_nodes": {"type": "integer", "minimum": 1, "maximum": 1024},
            "sockets": {"type": "integer", "minimum": 1, "maximum": 64},
        },
    },
    "ram_gib": {**schema.AMOUNT, "maximum": 1024 * 1024},
    "weights_dir": schema.PATH,
    "disk_free_gib": {**schema.AMOUNT, "maximum": 1e9},
    "shm_gib": {**schema.AMOUNT, "maximum": 1024 * 1024},
    "network_interface": schema.INTERFACE,
    # the fabric between the nodes, for pre-flight and the multi-node plans (all optional: older profiles
    # have none)
    "network": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "fabric": {"enum": ["ethernet", "infiniband", "roce"]},
            "rdma_devices": {"type": "array", "items": schema.WORD, "maxItems": 64},
            "gid_index": {"type": "integer", "minimum": 0, "maximum": 255},
            "link_gbps": {**schema.AMOUNT, "maximum": 1e5},
        },
    },
}

NODE: dict[str, Any] = {"type": "object", "properties": NODE_PROPERTIES}

PROFILE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "hardware profile",
    "type": "object",
    "required": ["nodes"],
    "properties": {
        "name": schema.TEXT,
        "description": schema.TEXT,
        "nodes": {
            "type": "array",
            "minItems": 1,
            "maxItems": schema.MAX_NODES,
            "items": {
                **NODE,
                "required": ["name", "gpus", "cpu", "ram_gib", "disk_free_gib", "network_interface"],
                "properties": {
                    **NODE_PROPERTIES,
                    "gpus": {**NODE_PROPERTIES["gpus"], "required": ["model", "count"]},
                    "cpu": {**NODE_PROPERTIES["cpu"], "required": ["physical_cores", "isa"]},
                },
            },
        },
    },
}

#: plan.json's ``hardware``: the same keys, typed, none required (a plan may carry a partial profile).
PLAN_HARDWARE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": schema.TEXT,
        "description": schema.TEXT,
        "nodes": {"type": "array", "maxItems": schema.MAX_NODES, "items": NODE},
        #: described by ``plan --gpus``, not probed: no node has a real address or interface name
        "hypothetical": {"type": "boolean"},
    },
}

__all__ = ["NODE", "PLAN_HARDWARE", "PROFILE_SCHEMA"]
