"""The NVIDIA driver the pinned engines need, derived from the pins, and `nvidia-smi` output parsed.

    >>> from deploy.preflight.driver import required_driver
    >>> required_driver("vllm")
    DriverNeed(engine='vllm', pin='0.33.0', torch='2.14.0', cuda='13.0', driver='580.65.06')

The chain: an engine pin (deploy/pins.py) -> the torch its wheel requires (``Requires-Dist: torch==``) ->
the CUDA build of that torch on PyPI -> the minimum Linux driver of that CUDA toolkit (NVIDIA's table).
A pin change without a row here fails ``required_driver`` with one line, so the table cannot go stale.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from deploy import pins
from deploy.errors import InputError

#: Engine pin -> the torch its wheel requires, read from the wheels' METADATA (vllm 0.33.0:
#: ``Requires-Dist: torch==2.14.0``; sglang 0.5.23: ``torch==2.14.1``; sglang-kt 0.7.2 runs in the
#: torch 2.14.1 venv, deploy/pins.py TORCH_KT_VERSION).
ENGINE_TORCH: dict[tuple[str, str], str] = {
    ("vllm", pins.VLLM_VERSION): "2.14.0",
    ("sglang", pins.SGLANG_VERSION): "2.14.1",
    ("ktransformers", pins.KTRANSFORMERS_VERSION): pins.TORCH_KT_VERSION,
}

#: torch minor -> the CUDA of its default PyPI wheel (torch 2.14.1 installs nvidia-cuda-runtime 13.0.96).
TORCH_CUDA: dict[str, str] = {"2.14": "13.0", "2.13": "13.0", "2.9": "12.8", "2.8": "12.8", "2.7": "12.6"}

#: CUDA toolkit -> minimum Linux driver ("Toolkit Driver Version", GA release), from NVIDIA's CUDA Toolkit
#: release notes, table 3: https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html
CUDA_DRIVER: dict[str, str] = {
    "13.0": "580.65.06",
    "12.9": "575.51.03",
    "12.8": "570.26",
    "12.6": "560.28.03",
    "12.4": "550.54.14",
    "12.1": "530.30.02",
}
DRIVER_SOURCE = "NVIDIA CUDA Toolkit release notes, table 3 (docs.nvidia.com/cuda/cuda-toolkit-release-notes)"

#: What `nvidia-smi` is asked; the header names the columns, so the parser does not depend on their order.
SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,persistence_mode", "--format=csv"]


@dataclass(frozen=True)
class DriverNeed:
    engine: str
    pin: str
    torch: str
    cuda: str
    driver: str


@dataclass(frozen=True)
class SmiGpu:
    """One row of the ``SMI_QUERY`` output."""

    name: str
    driver: str
    memory_mib: int
    persistence: bool


def required_driver(engine: str) -> DriverNeed | None:
    """The driver the pinned ``engine`` needs, or None for engines without a CUDA torch (llama.cpp)."""
    pin = pins.ENGINE_PINS.get(engine)
    if pin is None or not any(e == engine for e, _ in ENGINE_TORCH):
        return None
    torch = ENGINE_TORCH.get((engine, pin))
    if torch is None:
        raise InputError(f"{engine} {pin}: no torch recorded in deploy/preflight/driver.py ENGINE_TORCH")
    cuda = TORCH_CUDA.get(".".join(torch.split(".")[:2]))
    if cuda is None or cuda not in CUDA_DRIVER:
        raise InputError(f"torch {torch}: no CUDA build recorded in deploy/preflight/driver.py TORCH_CUDA")
    return DriverNeed(engine, pin, torch, cuda, CUDA_DRIVER[cuda])


def version_tuple(version: str) -> tuple[int, ...]:
    """``"580.65.06"`` -> ``(580, 65, 6)``; non-numeric parts end the tuple.

    >>> version_tuple("535.129.03") < version_tuple("580.65.06")
    True
    """
    out = []
    for part in version.strip().split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def parse_smi(text: str) -> list[SmiGpu]:
    """Parse ``SMI_QUERY`` output (CSV with its header; units in the memory cells are stripped).

    >>> parse_smi("name, driver_version, memory.total [MiB], persistence_mode\\nNVIDIA H100 80GB HBM3, "
    ...           "535.129.03, 81559 MiB, Enabled\\n")
    [SmiGpu(name='NVIDIA H100 80GB HBM3', driver='535.129.03', memory_mib=81559, persistence=True)]
    """
    rows = list(csv.reader(io.StringIO(text.strip()), skipinitialspace=True))
    if not rows:
        return []
    header = [h.split(" [")[0].strip() for h in rows[0]]
    need = ("name", "driver_version", "memory.total", "persistence_mode")
    if any(h not in header for h in need):
        raise InputError(f"nvidia-smi: unexpected header {rows[0]!r} (wanted {', '.join(need)})")
    gpus = []
    for row in rows[1:]:
        cell = dict(zip(header, (c.strip() for c in row), strict=False))
        memory = cell.get("memory.total", "").split()[0] if cell.get("memory.total") else ""
        gpus.append(
            SmiGpu(
                name=cell["name"],
                driver=cell.get("driver_version", ""),
                memory_mib=int(memory) if memory.isdigit() else 0,
                persistence=cell.get("persistence_mode", "").lower() == "enabled",
            )
        )
    return gpus
