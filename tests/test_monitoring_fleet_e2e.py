"""End to end: a real Prometheus scrapes the real router a llama.cpp fleet gets (``Engine.router``:
sglang-router) in front of two real llama-servers (the demo GGUF) with the rendered monitoring files, and the
fleet alerts fire when replicas die.

The router's metric names (``Router.metrics`` of deploy/routers/) must all be on its real
``/metrics``; the rendered relabelling must name each worker URL by its replica id; every panel of the
dashboard's fleet row must return data; ``kill -9`` of one replica must fire ``KimiReplicaUnhealthy`` for it
(and not ``KimiNoHealthyReplicas``), of the second ``KimiNoHealthyReplicas``. Every wait is on Prometheus'
own API or the router's ``/metrics``, polled; ``Timings.fast()`` (1 s scrapes, ``for: 3s``) and 1 s router
health checks keep it under a minute or two.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deploy.catalog import load_model
from deploy.engines import registry as engines
from deploy.engines.builds import llama_server_path
from deploy.monitoring import dashboards, prometheus, promtool, scrape
from deploy.monitoring.render import write_monitoring
from deploy.monitoring.spec import ROUTER_JOB, MonitoringSpec, ScrapeTarget, Timings, router_target
from deploy.planning.architecture import demo_gguf_path
from deploy.routers import install
from deploy.routers import registry as routers
from deploy.routers.argv import launch_argv, router_argv

pytestmark = pytest.mark.slow

ROUTER = routers.for_engine(engines.get("llama.cpp"))
#: Grafana's $__rate_interval for 1 s scrapes; wide enough to hold the requests sent before the queries
RATE_WINDOW = "60s"
#: seconds between the router's health checks here (the plan's default is 5; shorter keeps the test short)
HEALTH_INTERVAL_S = 1


def router_python() -> Path:
    """The Python of the project's cached router venv (`kimi-deploy engine install router`)."""
    return install.require_router(ROUTER)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate, timeout_s: float, what: str):
    """Poll ``predicate`` (an event: a metric, an alert state) until it is truthy."""
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


@contextlib.contextmanager
def _process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """A process in its own session (so ``kill -9`` reaches its whole group), its output in ``log``."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _llama_server(tmp: Path, name: str, stack: contextlib.ExitStack) -> tuple[subprocess.Popen, str]:
    binary = llama_server_path()
    if not binary.is_file():
        pytest.fail(
            f"llama-server not found at {binary}: run `make setup` (kimi-deploy engine install llama.cpp)"
        )
    port, gguf = _free_port(), demo_gguf_path(load_model("demo"))
    cmd = [str(binary), "-m", str(gguf), "-t", "1", "-np", "1", "-c", "1024", "--alias", "demo",
           "--host", "127.0.0.1", "--port", str(port), "--metrics"]  # fmt: skip
    proc = stack.enter_context(_process(cmd, tmp / f"{name}.log"))
    return proc, f"http://127.0.0.1:{port}"


def _healthy(url: str) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    return False


def _router_series(metrics_url: str, name: str) -> dict[str, float]:
    """``{worker URL: value}`` of one per-worker series on the router's /metrics (empty when unreachable)."""
    with contextlib.suppress(scrape.ScrapeError):
        samples = scrape.parse_metrics(scrape.fetch(metrics_url))
        return {labels.get("worker", ""): value for labels, value in samples.get(name, [])}
    return {}


def _chat(url: str, prompt: str = "Say hi.") -> None:
    r = requests.post(
        f"{url}/v1/chat/completions",
        json={"model": "demo", "messages": [{"role": "user", "content": prompt}], "max_tokens": 4},
        headers={"Connection": "close"},
        timeout=120,
    )
    assert r.status_code == 200, r.text[:200]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    python = router_python()
    if not python.is_file():
        pytest.fail(
            f"{python} not found: install {ROUTER.name} {ROUTER.version} (kimi-deploy engine install router)"
        )
    if not prometheus.shutil.which("prometheus"):
        pytest.fail("prometheus not on PATH: run scripts/ci-deps.sh (Debian prometheus)")
    tmp = tmp_path_factory.mktemp("fleet-monitoring")
    with contextlib.ExitStack() as stack:
        workers = [_llama_server(tmp, f"r{i}", stack) for i in range(2)]
        for _proc, url in workers:
            _wait(lambda url=url: _healthy(url), 120, f"llama-server {url} ready")
        port, metrics_port = _free_port(), _free_port()
        # the plan's fleet.router for llama.cpp, composed and started as render's launch script does
        plan_router = {"program": ROUTER.name, "host": "127.0.0.1", "port": port,
                       "metrics_port": metrics_port,
                       **ROUTER.settings_for(engines.get("llama.cpp")).to_dict(),
                       "health_check_interval_s": HEALTH_INTERVAL_S, "health_check_timeout_s": 1}  # fmt: skip
        cmd = launch_argv(ROUTER, router_argv(plan_router, [url for _p, url in workers]), python)
        router = stack.enter_context(_process(cmd, tmp / "router.log"))
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        health = ROUTER.metrics["worker_health"]
        _wait(
            lambda: (
                router.poll() is None and list(_router_series(metrics_url, health).values()) == [1.0, 1.0]
            ),
            60,
            "the router sees both replicas healthy",
        )
        # the manifest's fleet section, as render writes it (deploy.serving.render, issue 21's contract)
        manifest_fleet = {
            "router": {"program": ROUTER.name, "node": "vm", "metrics": f"127.0.0.1:{metrics_port}"},
            "replicas": [
                {"id": f"r{i}", "nodes": [f"r{i}-vm"], "url": url} for i, (_p, url) in enumerate(workers)
            ],
        }
        spec = MonitoringSpec(
            "llama.cpp",
            "demo",
            "fleet-e2e",
            [ScrapeTarget(f"r{i}-vm", url.removeprefix("http://")) for i, (_p, url) in enumerate(workers)],
            timings=Timings.fast(),
            router=router_target(manifest_fleet),
        )
        out = tmp / "monitoring"
        write_monitoring(out, spec)
        checks = promtool.check_dir(out)
        assert checks and all(r.ok for r in checks), [r.summary() for r in checks]
        server = prometheus.start(out / "prometheus.yml", tmp / "prometheus")
        stack.callback(server.stop)
        yield {
            "url": f"http://127.0.0.1:{port}",
            "metrics_url": metrics_url,
            "workers": workers,
            "server": server,
            "spec": spec,
            "router": router,
        }


def test_the_router_metric_names_and_encodings_are_the_live_routers(fleet) -> None:
    urls = sorted(url for _p, url in fleet["workers"])
    processed = ROUTER.metrics["processed_requests"]

    def both_served() -> bool:
        """Concurrent distinct prompts until each replica has served one (cache-aware keeps one prompt on
        one replica; distinct ones at once spread)."""
        prompts = ["Apples are", "Bridges carry", "Clouds drift", "Dolphins swim"]
        burst = [threading.Thread(target=_chat, args=(fleet["url"], p)) for p in prompts]
        for thread in burst:
            thread.start()
        for thread in burst:
            thread.join()
        samples = scrape.parse_metrics(scrape.fetch(fleet["metrics_url"]))
        return sorted(labels["worker"] for labels, _v in samples.get(processed, [])) == urls

    _wait(both_served, 120, "a request on each replica")
    samples = scrape.parse_metrics(scrape.fetch(fleet["metrics_url"]))
    missing = [
        name for name in ROUTER.metrics.values() if name not in samples and f"{name}_count" not in samples
    ]
    assert not missing, f"not on {ROUTER.name}'s /metrics: {missing}"
    for key in ("worker_health", "cb_state", "processed_requests"):
        assert sorted(labels["worker"] for labels, _v in samples[ROUTER.metrics[key]]) == urls, key
    assert [v for _l, v in samples[ROUTER.metrics["worker_health"]]] == [1.0, 1.0]  # 1 healthy
    assert [v for _l, v in samples[ROUTER.metrics["cb_state"]]] == [0.0, 0.0]  # 0 closed
    assert samples[ROUTER.metrics["active_workers"]][0][1] == 2.0


def test_every_fleet_panel_returns_data_with_replica_labels(fleet) -> None:
    server: prometheus.Prometheus = fleet["server"]
    _chat(fleet["url"])
    health = f'{ROUTER.metrics["worker_health"]}{{job="{ROUTER_JOB}"}}'
    by_replica = _wait(
        lambda: {r["metric"].get("replica"): r["metric"]["worker"] for r in server.query(health)},
        30,
        "the router's worker health in Prometheus",
    )
    assert by_replica == {f"r{i}": url for i, (_p, url) in enumerate(fleet["workers"])}
    for title, _unit, targets in dashboards.fleet_panels(fleet["spec"]):
        for expr, _legend in targets:
            q = expr.replace(dashboards.RATE, RATE_WINDOW)
            _wait(lambda q=q: server.query(q), 30, f"panel {title!r}: {q}")
    assert not [a for a in server.firing() if a.startswith(("KimiReplica", "KimiNoHealthy", "KimiRouter"))]


def test_killing_replicas_fires_the_unhealthy_then_the_no_healthy_alert(fleet) -> None:
    server: prometheus.Prometheus = fleet["server"]
    (proc0, url0), (proc1, url1) = fleet["workers"]
    assert "KimiReplicaUnhealthy" not in server.firing()
    os.killpg(proc1.pid, signal.SIGKILL)
    t0 = time.monotonic()
    _wait(lambda: "KimiReplicaUnhealthy" in server.firing(), 60, "KimiReplicaUnhealthy firing")
    took = time.monotonic() - t0
    # the router notices within its health-check interval (plus the check's timeout), then `for:` runs
    assert took >= Timings.fast().not_ready_for_s
    (alert,) = [a for a in server.alerts() if a["labels"]["alertname"] == "KimiReplicaUnhealthy"]
    assert alert["state"] == "firing"
    assert (alert["labels"]["replica"], alert["labels"]["worker"]) == ("r1", url1)
    assert alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["summary"] == f"replica r1 ({url1}) is unhealthy"
    assert "KimiNoHealthyReplicas" not in server.firing()
    assert fleet["router"].poll() is None
    _chat(fleet["url"])  # the router sends everything to the replica left
    os.killpg(proc0.pid, signal.SIGKILL)
    _wait(lambda: "KimiNoHealthyReplicas" in server.firing(), 60, "KimiNoHealthyReplicas firing")
    (alert,) = [a for a in server.alerts() if a["labels"]["alertname"] == "KimiNoHealthyReplicas"]
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["program"] == ROUTER.name
    # the router still counts both workers as active: only the health sum tells they are gone
    assert _router_series(fleet["metrics_url"], ROUTER.metrics["worker_health"]) == {url0: 0.0, url1: 0.0}
    samples = scrape.parse_metrics(scrape.fetch(fleet["metrics_url"]))
    assert samples[ROUTER.metrics["active_workers"]][0][1] == 2.0
