"""`kimi-deploy bench` with the real AIPerf against the FAULT-INJECTING TEST SERVER
(deploy/fakes/faultserver.py, load-test modes): a real engine does not drop streams, answer 500 or stall on
demand, so these faults are injected. Every second request carries the fault; the report must count them,
`--gate` must exit 8, and nothing may end in a traceback. ``ok-stream`` is the baseline: its tokens come
every ``TOKEN_DELAY`` seconds, so the inter-token latency AIPerf reports must be that delay.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.catalog import load_model
from deploy.planning.architecture import demo_gguf_path

pytestmark = pytest.mark.slow

KD = [sys.executable, "-m", "deploy"]
TOKEN_DELAY = 0.05
REQUESTS = 4  # the 2nd and 4th carry the fault


@pytest.fixture
def fault_server(tmp_path: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(mode: str) -> str:
        cmd = [sys.executable, "-m", "deploy.fakes.faultserver", "--mode", mode, "--model", "demo",
               "--port", "0", "--token-delay", str(TOKEN_DELAY), "--stall", "60"]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:\d+", banner)
        assert m, banner
        return m.group(0)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _bench(url: str, out: Path) -> subprocess.CompletedProcess:
    args = ["bench", "--url", url, "--model", "demo", "--tokenizer", str(demo_gguf_path(load_model("demo"))),
            "--concurrency", "1", "--requests", str(REQUESTS), "--isl", "16", "--osl", "8", "--timeout", "5",
            "--slo", "ttft_p95=5s", "--gate", "-o", str(out)]  # fmt: skip
    return subprocess.run([*KD, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ))


@pytest.mark.parametrize(
    ("mode", "error_text"),
    [
        ("drop-mid-stream", "ended short"),
        ("500-some", "500"),
        ("stall", "Timeout"),
    ],
)
def test_faults_are_counted_and_gate_exits_8(
    fault_server, tmp_path: Path, mode: str, error_text: str
) -> None:
    out = tmp_path / "bench.json"
    run = _bench(fault_server(mode), out)
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-3000:]
    assert run.returncode == 8, run.stderr[-3000:]
    assert (
        run.stderr.strip().splitlines()[-1].startswith("error: the lowest concurrency point misses the SLO")
    )
    report = json.loads(out.read_text())
    point = report["points"][0]
    assert point["errors"] == REQUESTS // 2 and point["requests"] == REQUESTS - REQUESTS // 2
    assert report["errors"] == REQUESTS // 2
    assert error_text in json.dumps(point["error_summary"])
    assert report["capacity"]["concurrency"] is None


def test_the_baseline_meets_the_slo_and_its_itl_is_the_servers_delay(fault_server, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = _bench(fault_server("ok-stream"), out)
    assert run.returncode == 0, run.stderr[-3000:]
    point = json.loads(out.read_text())["points"][0]
    assert point["errors"] == 0 and point["requests"] == REQUESTS
    # the server writes one token every TOKEN_DELAY s: AIPerf's median gap is that, plus scheduling noise
    assert TOKEN_DELAY * 1000 * 0.9 <= point["itl_ms"]["p50"] <= TOKEN_DELAY * 1000 + 40
    # 8 tokens: the first after the headers, 7 gaps to the last
    assert point["e2e_ms"]["p50"] >= 7 * TOKEN_DELAY * 1000
