"""What an engine's start-up log says, and the helpers the engine modules read their lines with.

    >>> facts = StartupFacts(engine="vllm")
    >>> facts.kv_cache_tokens is None, to_float("715,072")
    (True, 715072.0)

Each engine module holds its own patterns and ``parse`` function (its ``StartupLog``);
``deploy.calibration.logs`` decodes a log, tells whose it is and calls that function.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

MIB_PER_GIB = 1024.0
#: A number as the engines print it (thousands separators allowed).
NUM = r"([0-9][0-9,]*(?:\.[0-9]+)?)"


@dataclass
class StartupFacts:
    """What one start-up measured. GiB figures are per GPU for GPU engines; ``weights_gib_host`` and
    ``kv_cache_gib`` are the host's for CPU runs (``device`` tells which)."""

    engine: str
    device: str = "gpu"  # gpu | cpu
    engine_version: str | None = None
    kv_cache_tokens: int | None = None
    kv_cache_gib: float | None = None
    weights_gib_per_gpu: float | None = None
    weights_gib_host: float | None = None
    ctx_size: int | None = None
    compute_buffer_gib: float | None = None
    cuda_graph_gib: float | None = None
    compile_s: float | None = None
    weights_load_s: float | None = None
    #: first to last line, when the lines carry timestamps and the log reaches the engine's "serving" line
    load_s: float | None = None
    lines: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_float(text: str) -> float:
    return float(text.replace(",", ""))


def last(rx: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(rx.finditer(text))
    return matches[-1] if matches else None


def span_s(stamps: list[str], fmt: str) -> float | None:
    """Seconds from the first to the last timestamp (None: fewer than two, unreadable or backwards)."""
    if len(stamps) < 2:
        return None
    try:
        first = datetime.strptime(stamps[0], fmt)
        final = datetime.strptime(stamps[-1], fmt)
    except ValueError:
        return None
    seconds = (final - first).total_seconds()
    return seconds if seconds >= 0 else None


__all__ = ["MIB_PER_GIB", "NUM", "StartupFacts", "last", "span_s", "to_float"]
