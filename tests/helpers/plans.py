"""A one-node CPU candidate for tests that need a plan.json but not the planner's arithmetic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.planning.contract import Candidate, Memory, Weights


def cpu_candidate(
    weights: Weights, *, engine: str = "llama.cpp", max_model_len: int = 4096, **fields: Any
) -> Candidate:
    """A single CPU node, no parallelism; ``fields`` set the rest (id, engine_args, ...)."""
    values: dict[str, Any] = {
        "id": f"{engine}/test",
        "engine": engine,
        "variant": weights.variant,
        "status": "runnable",
        "nodes": 1,
        "gpus_per_node": 0,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "data_parallel": 1,
        "expert_parallel": False,
        "decode_context_parallel": 1,
        "max_model_len": max_model_len,
        "kv_cache_dtype": "f16",
        "kv_cache_tokens": max_model_len,
        "gpu_memory_utilization": 0.0,
        "memory": Memory(),
        "weights": weights,
        "placement": "cpu",
    }
    values.update(fields)
    return Candidate(**values)


def four_node_plan(tmp: Path, engine: str, mode: str) -> Path:
    """plan.json of the 4-node H200 profile for ``engine`` and ``--fleet-mode mode``, written by the CLI in a
    subprocess (what a user runs), into ``tmp``."""
    out = tmp / f"plan-{engine}-{mode}.json"
    subprocess.run(
        [sys.executable, "-m", "deploy", "plan", "--hardware", "h200x8-4nodes", "--engine", engine,
         "--fleet-mode", mode, "-o", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    return out
