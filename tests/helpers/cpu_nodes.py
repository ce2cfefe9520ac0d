"""Hardware profiles of CPU-only nodes, written where a test wants them (for llama.cpp's RPC layout)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_cpu_profile(path: Path, addresses: list[str], ram_gib: float = 24, cores: int = 2) -> Path:
    """A profile of ``len(addresses)`` identical CPU nodes named node1, node2, ... at those addresses.

    >>> write_cpu_profile(tmp_path / "two.yaml", ["10.213.0.1", "10.213.0.2"])  # doctest: +SKIP
    """
    nodes = [
        {
            "name": f"node{i}",
            "address": address,
            "gpus": {"model": "none", "count": 0},
            "cpu": {
                "model": "test CPU",
                "sockets": 1,
                "physical_cores": cores,
                "numa_nodes": 1,
                "isa": ["avx2"],
            },
            "ram_gib": ram_gib,
            "weights_dir": str(path.parent / "weights"),
            "disk_free_gib": 50,
            "shm_gib": ram_gib / 2,
            "network_interface": "lo",
        }
        for i, address in enumerate(addresses, 1)
    ]
    path.write_text(yaml.safe_dump({"name": path.stem, "description": "CPU-only test nodes", "nodes": nodes}))
    return path
