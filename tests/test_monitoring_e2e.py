"""End to end: a real Prometheus scrapes the real demo llama-server with the rendered monitoring files.

The demo pipeline (mirror, download, verify, render) prepares the deployment; it is re-rendered with
``Timings.fast()`` (1 s scrapes, ``for: 5s``) so the whole test takes well under two minutes. Then: every
metric the llama.cpp rules and dashboard use is on the real ``/metrics``; every dashboard query returns data
from Prometheus after a few real chat requests; ``status --json`` reports the node's numbers; and once the
engine is killed, KimiEngineDown fires.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deploy.demo.run import free_port, prepare_deployment
from deploy.monitoring import dashboards, engines, prometheus, scrape
from deploy.monitoring.spec import Timings
from deploy.serving import launch, render

pytestmark = pytest.mark.slow

#: Grafana's $__rate_interval for 1 s scrapes is 4 scrapes at least; a wider window keeps requests inside it
RATE_WINDOW = "30s"


def _chat(url: str, model: str) -> None:
    r = requests.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 8},
        headers={"Connection": "close"},
        timeout=60,
    )
    assert r.status_code == 200, r.text[:200]


def _wait(predicate, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory):
    if not prometheus.shutil.which("prometheus"):
        pytest.fail("prometheus not on PATH: run scripts/ci-deps.sh (Debian prometheus)")
    workdir = tmp_path_factory.mktemp("monitoring-demo")
    prepare_deployment(workdir, port=free_port(), out=open(os.devnull, "w"))  # noqa: SIM115
    plan, rendered, state = workdir / "plan.json", workdir / "rendered", workdir / "state"
    manifest = launch.read_manifest(rendered)
    render.render(
        plan,
        render.RenderOptions(
            out_dir=rendered,
            port=int(manifest["port"]),
            monitoring_timings=Timings.fast(),
            check_monitoring=True,
        ),
    )
    launch.up(plan, rendered, state_dir=state, stream=open(os.devnull, "w"))  # noqa: SIM115
    server = prometheus.start(rendered / "monitoring" / "prometheus.yml", workdir / "prometheus")
    try:
        yield {"workdir": workdir, "rendered": rendered, "state": state, "server": server}
    finally:
        server.stop()
        launch.down(state_dir=state, grace_s=5)


def test_rendered_metric_names_are_on_the_real_llama_server(deployment) -> None:
    manifest = launch.read_manifest(deployment["rendered"])
    text = scrape.fetch(f"http://127.0.0.1:{manifest['port']}/metrics")
    samples = scrape.parse_metrics(text)
    m = engines.LLAMA_CPP
    for name in (
        m.running,
        m.waiting,
        m.generation_tokens,
        m.prompt_tokens,
        m.prompt_seconds,
        m.generation_seconds,
    ):
        assert name in samples, f"{name} not on llama-server's /metrics: {sorted(samples)}"


def test_every_dashboard_query_returns_data_and_status_shows_the_node(deployment) -> None:
    server: prometheus.Prometheus = deployment["server"]
    rendered: Path = deployment["rendered"]
    manifest = launch.read_manifest(rendered)
    url = f"http://127.0.0.1:{manifest['port']}"
    _wait(lambda: [t for t in server.targets() if t["health"] == "up"], 30, "the engine target up")
    for _ in range(3):
        _chat(url, manifest["served_model_name"])
    board = json.loads(next((rendered / "monitoring/grafana/dashboards").glob("*.json")).read_text())
    exprs = [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]
    assert len(exprs) >= 7
    time.sleep(3)  # a few scrapes after the last request
    answers = {}
    for title, expr in exprs:
        q = expr.replace(dashboards.RATE, RATE_WINDOW).replace("$node", ".*")
        result = server.query(q)
        assert result, f"panel {title!r}: {q} returned no data"
        answers[title] = float(result[0]["value"][1])
    assert answers["Engine up"] == 1.0
    assert answers["Generated tokens/s"] > 0 and answers["Prompt tokens/s"] > 0
    # status --json reads the same /metrics: ready, and the generated-token counter is there
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(deployment["state"])}
    r = subprocess.run(
        [sys.executable, "-m", "deploy", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    (node,) = json.loads(r.stdout)
    assert node["ready"] and node["metrics"]["generated_tokens"] >= 8
    assert node["metrics"]["running"] == 0 and node["metrics"]["waiting"] == 0


def test_engine_down_fires_after_the_engine_is_killed(deployment) -> None:
    server: prometheus.Prometheus = deployment["server"]
    assert "KimiEngineDown" not in server.firing()
    (node,) = [s for s in launch.status(deployment["state"]) if s.running]
    os.killpg(node.pid, signal.SIGKILL)
    t0 = time.monotonic()
    _wait(lambda: "KimiEngineDown" in server.firing(), 60, "KimiEngineDown firing")
    took = time.monotonic() - t0
    # fires no earlier than its `for:` after the first failed scrape
    assert took >= Timings.fast().down_for_s
    alert = next(a for a in server.alerts() if a["labels"]["alertname"] == "KimiEngineDown")
    assert alert["labels"]["node"] == node.node and alert["labels"]["severity"] == "critical"
