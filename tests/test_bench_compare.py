"""`kimi-deploy bench --plan SPLIT --compare-plan AGGREGATED`: the same AIPerf workload (the real AIPerf)
against both plans' front doors, and the output tok/s per GPU of each and their ratio.

No engine serves Kimi-K2.5 here (nor a prefill/decode split on CPU), so each plan's front door is the
FAULT-INJECTING TEST SERVER in its ``ok-stream`` mode (deploy/fakes/faultserver.py), one token every
``--token-delay`` seconds: the split's front is given the shorter delay, so its measured rate, and the
ratio, must come out above the other's. The GPU counts are the plans' own (hardware/h200x8-4nodes).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.plans import four_node_plan

from deploy.catalog import load_model
from deploy.planning.architecture import demo_gguf_path

KD = [sys.executable, "-m", "deploy"]
#: seconds between tokens: the split's front is the faster one
DELAY = {"disaggregated": 0.02, "aggregated": 0.06}


def _plan(tmp: Path, mode: str) -> Path:
    return four_node_plan(tmp, "sglang", mode)


@pytest.fixture
def front() -> Iterator[Callable[[float], int]]:
    procs: list[subprocess.Popen[str]] = []

    def start(delay: float) -> int:
        cmd = [*KD[:1], "-m", "deploy.fakes.faultserver", "--mode", "ok-stream", "--model", "kimi-k2.5",
               "--port", "0", "--token-delay", str(delay)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        m = re.search(r"http://127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m
        return int(m.group(1))

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _fronted(plan: Path, port: int) -> Path:
    """The plan with its router (the front door users reach, on the candidate's own port) on ``port``."""
    data = json.loads(plan.read_text())
    data["fleet"]["router"].update(host="127.0.0.1", port=port, url=f"http://127.0.0.1:{port}")
    chosen = next(c for c in data["candidates"] if c["id"] == data["chosen"])
    chosen["engine_args"].update(host="127.0.0.1", port=port)
    out = plan.with_name(f"fronted-{plan.name}")
    out.write_text(json.dumps(data))
    return out


def _gpus(plan: Path) -> int:
    data = json.loads(plan.read_text())
    by_id = {c["id"]: c for c in data["candidates"]}
    split = data["fleet"].get("disaggregation")
    total = 0
    for r in data["fleet"]["replicas"]:
        cand = by_id[split[r["role"]]["candidate"] if split else data["chosen"]]
        total += len(r["nodes"]) * cand["gpus_per_node"]
    return total


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    common = ["--tokenizer", str(demo_gguf_path(load_model("demo"))), "--concurrency", "1", "--requests", "4",
              "--isl", "16", "--osl", "8", "--timeout", "10"]  # fmt: skip
    return subprocess.run([*KD, "bench", *args, *common], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_split_and_the_aggregated_fleet_per_gpu(tmp_path: Path, front) -> None:
    split = _fronted(_plan(tmp_path, "disaggregated"), front(DELAY["disaggregated"]))
    agg = _fronted(_plan(tmp_path, "aggregated"), front(DELAY["aggregated"]))
    out = tmp_path / "bench.json"
    run = _bench("--plan", str(split), "--compare-plan", str(agg), "-o", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    cmp = report["comparison"]
    assert (cmp["this"]["mode"], cmp["other"]["mode"]) == ("disaggregated", "aggregated")
    assert cmp["this"]["gpus"] == _gpus(split) and cmp["other"]["gpus"] == _gpus(agg)
    (row,) = cmp["rows"]
    mine, theirs = report["points"][0], cmp["other_report"]["points"][0]
    assert mine["errors"] == theirs["errors"] == 0
    assert row["output_tok_s"] == [mine["output_tokens_per_s"], theirs["output_tokens_per_s"]]
    assert row["per_gpu"] == [
        pytest.approx(mine["output_tokens_per_s"] / _gpus(split)),
        pytest.approx(theirs["output_tokens_per_s"] / _gpus(agg)),
    ]
    assert row["ratio"] == pytest.approx(row["per_gpu"][0] / row["per_gpu"][1])
    assert row["ratio"] > 1  # the split's front streams its tokens faster
    assert cmp["other_report"]["workload"] == report["workload"]  # the same workload
    assert "Compared on the same workload" in run.stdout and f"{row['ratio']:,.2f}" in run.stdout


def test_what_cannot_be_compared_is_one_line_before_any_run(tmp_path: Path) -> None:
    split = _plan(tmp_path, "disaggregated")
    demo = tmp_path / "demo.json"
    subprocess.run([*KD, "plan", "--model", "demo", "--hardware", "ci-24g", "-o", str(demo)], check=True,
                   capture_output=True)  # fmt: skip
    cpu = tmp_path / "cpu.json"  # Kimi-K2.5 on a CPU node: the same model, no GPU to divide by
    subprocess.run([*KD, "plan", "--hardware", "cpu-512g", "-o", str(cpu)], check=True, capture_output=True)
    cases = [
        (["--plan", str(split), "--compare-plan", str(demo)], "it serves 'demo', this plan 'kimi-k2.5'"),
        (["--plan", str(split), "--compare-plan", str(cpu)], f"{cpu} runs on no GPU"),
        (["--plan", str(split), "--compare-plan", str(tmp_path / "none.json")], "plan not found"),
        (
            ["--url", "http://127.0.0.1:9", "--model", "m", "--compare-plan", str(split)],
            "give --plan, not --url",
        ),
    ]
    for args, message in cases:
        run = _bench(*args)
        assert run.returncode == 2, (args, run.stderr)
        errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], run.stderr
        assert "Traceback" not in run.stderr and "bench: concurrency" not in run.stderr
