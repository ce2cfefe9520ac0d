"""The router a llama.cpp fleet gets (``Engine.router``: sglang-router; the pinned one, from its cached venv,
through our launcher) fronts two real llama-server replicas of the demo model on loopback, both started with
an API key (from a file, never argv).

Shown for real: the router sees both workers healthy; a client without the key is refused by the router
itself (401) while one with it lists the demo model and gets chat completions, streamed and not; the policy
spreads concurrent distinct prompts over both replicas (counted by each llama-server's own /metrics) and
counts each one's requests in flight; every metric name in ``Router.metrics`` is on the router's Prometheus
port; a drained worker keeps its in-flight request to the end and the drain waits for it (on the router's
own counters, ``Router.drain_counter``), and adding it back makes it healthy again; after kill -9 of one
replica the router marks it unhealthy within two health-check intervals (waited on in the router's own
state) and later requests all succeed. A second router in front of the same replicas, whose health checks
are too slow to notice the kill, shows the circuit breaker's encoding: a refused connection opens it
(``cb_state`` 1 where it was 0).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from deploy.catalog import load_model
from deploy.checking.suite import PASS, run_checks
from deploy.checking.target import target_from_url
from deploy.engines import registry as engines
from deploy.engines.builds import llama_server_path
from deploy.planning.architecture import demo_gguf_path
from deploy.routers import install, registry
from deploy.routers.argv import launch_argv, router_argv
from deploy.routers.client import RouterClient

pytestmark = pytest.mark.slow

ROUTER = registry.for_engine(engines.get("llama.cpp"))
KEY = "fleet-test-key-0123456789"
#: the demo model's chat template (deploy/data/chat_templates), which thinks when asked
TEMPLATE = (
    Path(__file__).resolve().parent.parent / "deploy" / "data" / "chat_templates" / "demo-hermes-think.jinja"
)
#: the health-check interval of the routers in this test: short, so the wait for "unhealthy" is short
INTERVAL_S = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(
    what: str, ready: Callable[[], object], timeout_s: float, proc: subprocess.Popen, log: Path
) -> object:
    """Poll ``ready`` until it returns something true; the process must stay alive meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited: {log.read_text()[-2000:]}"
        with contextlib.suppress(requests.RequestException):
            value = ready()
            if value:
                return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready in {timeout_s} s: {log.read_text()[-2000:]}")


@dataclass
class Worker:
    url: str
    proc: subprocess.Popen
    log: Path

    def predicted_tokens(self) -> float:
        """llama-server's own count of generated tokens (its /metrics, which wants the key)."""
        text = requests.get(f"{self.url}/metrics", headers=_auth(), timeout=10).text
        line = next(s for s in text.splitlines() if s.startswith("llamacpp:tokens_predicted_total"))
        return float(line.split()[-1])


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


@contextlib.contextmanager
def llama_worker(folder: Path, key_file: Path) -> Iterator[Worker]:
    """llama-server on the demo GGUF (one thread, one slot, like the demo plan), keyed, on a free port;
    the same start as tests/test_bench_llamacpp.py's helper, with its process kept for kill -9."""
    binary = llama_server_path()
    if not binary.is_file():
        pytest.fail(f"llama-server not found at {binary}: run `make setup`")
    folder.mkdir()
    port, log = _free_port(), folder / "llama.log"
    # the demo's thinking template and reasoning format, as its plan renders them (the thinking check)
    cmd = [str(binary), "-m", str(demo_gguf_path(load_model("demo"))), "-t", "1", "-np", "1", "-c", "2048",
           "--jinja", "--chat-template-file", str(TEMPLATE), "--reasoning-format", "deepseek",
           "--alias", "demo", "--metrics", "--api-key-file", str(key_file),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait("llama-server", lambda: requests.get(f"{worker.url}/health", timeout=2).ok, 120, proc, log)
        yield worker
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=20)


@dataclass
class RunningRouter:
    client: RouterClient
    url: str
    metrics_url: str
    proc: subprocess.Popen
    log: Path


@contextlib.contextmanager
def router(folder: Path, workers: list[Worker], **settings: object) -> Iterator[RunningRouter]:
    """The pinned router in front of ``workers``, composed from a plan's ``fleet.router`` and started by
    the shipped launcher with the key in its environment."""
    if not install.router_ready(ROUTER):
        pytest.fail(f"{ROUTER.name} venv missing: run `{install.INSTALL_HINT}`")
    port, metrics_port = _free_port(), _free_port()
    plan_router = {
        "program": ROUTER.name,
        "host": "127.0.0.1",
        "port": port,
        "metrics_port": metrics_port,
        **ROUTER.settings_for(engines.get("llama.cpp")).to_dict(),
        "health_check_interval_s": INTERVAL_S,
        "health_check_timeout_s": 1,
        **settings,
    }
    argv = launch_argv(ROUTER, router_argv(plan_router, [w.url for w in workers]))
    assert KEY not in argv
    folder.mkdir()
    log = folder / "router.log"
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), ROUTER.api_key_env: KEY}
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url, metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    running = RunningRouter(
        RouterClient(url, api_key=KEY, metrics_url=metrics_url, program=ROUTER), url, metrics_url, proc, log
    )
    try:
        # ready once every worker is registered and healthy (the launcher registers them after the start)
        _wait(ROUTER.name, lambda: running.client.live()
              and running.client.readiness().get("healthy_workers") == len(workers),
              120, proc, log)  # fmt: skip
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chat(url: str, prompt: str, max_tokens: int = 8, stream: bool = False) -> requests.Response:
    body = {"model": "demo", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    return requests.post(
        f"{url}/v1/chat/completions",
        json={**body, "stream": stream},
        headers=_auth(),
        timeout=120,
        stream=stream,
    )


#: distinct first words, so no prompt shares a prefix with another (cache-aware then balances by tree size)
PROMPTS = ["Apples are", "Bridges carry", "Clouds drift", "Dolphins swim", "Engines burn", "Forests grow"]
#: sent at once: more than one replica's single slot holds
BURST = ["Kites soar", "Lemons taste", "Mountains stand", "Nights fall", "Oceans roar", "Pianos play"]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[Worker], RunningRouter, RunningRouter]]:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    with (
        llama_worker(tmp_path / "w0", key_file) as w0,
        llama_worker(tmp_path / "w1", key_file) as w1,
        router(tmp_path / "router", [w0, w1]) as front,
        # health checks far apart: this router learns of a dead worker only from its requests failing
        # (round robin: it sends the dead worker its turn, where a cache-aware router may keep to the other)
        router(
            tmp_path / "slow",
            [w0, w1],
            health_check_interval_s=600,
            health_check_timeout_s=1,
            cb_failure_threshold=1,
            policy="round_robin",
        ) as blind,  # fmt: skip
    ):
        yield [w0, w1], front, blind


def _series(metrics_url: str) -> str:
    return requests.get(f"{metrics_url}/metrics", timeout=10).text


def _in_flight_somewhere(front: RunningRouter) -> list[str]:
    return _wait("an in-flight request", lambda: [w.url for w in front.client.workers() if w.in_flight],
                 60, front.proc, front.log)  # type: ignore[return-value]  # fmt: skip


def _spread_and_stream(front: RunningRouter, workers: list[Worker]) -> None:
    """Every answer comes back, streamed too; concurrent distinct prompts reach both replicas; a request in
    flight shows in the router's count for its worker."""
    for prompt in PROMPTS:
        reply = chat(front.url, prompt)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] is not None
    with chat(front.url, "Gardens bloom", stream=True) as reply:
        chunks = [line for line in reply.iter_lines() if line.startswith(b"data: ")]
    assert reply.status_code == 200 and chunks[-1] == b"data: [DONE]" and len(chunks) > 2
    before = [w.predicted_tokens() for w in workers]
    results: list[requests.Response] = []
    burst = [threading.Thread(target=lambda p=p: results.append(chat(front.url, p, 16))) for p in BURST]
    for thread in burst:
        thread.start()
    busy = _in_flight_somewhere(front)
    assert all(front.client.in_flight(url) >= 1 for url in busy)
    for thread in burst:
        thread.join(timeout=300)
    assert len(results) == len(BURST) and all(r.status_code == 200 for r in results)
    after = [w.predicted_tokens() for w in workers]
    assert all(a > b for a, b in zip(after, before, strict=True)), f"not spread: {before} -> {after}"


def _drain_keeps_the_request_in_flight(front: RunningRouter) -> None:
    """A drain while a request runs there: the request finishes, and the drain returns once it has."""
    results: list[requests.Response] = []
    runner = threading.Thread(target=lambda: results.append(chat(front.url, "Harbors shelter", 64)))
    runner.start()
    (target,) = _in_flight_somewhere(front)
    assert front.client.in_flight(target) == 1
    assert front.client.drain(target, deadline_s=120)
    # the drain waited for the request: its answer is on its way or in
    runner.join(timeout=10)
    assert not runner.is_alive()
    # one worker left in the router: requests still go through
    assert chat(front.url, "Kites soar").status_code == 200
    runner.join(timeout=120)
    assert results and results[0].status_code == 200, results
    assert target not in [w.url for w in front.client.workers()]
    front.client.add_worker(target)
    _wait("the worker back", lambda: target in [w.url for w in front.client.workers() if w.healthy],
          30, front.proc, front.log)  # fmt: skip


def _conformance(front: RunningRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    """`check`'s models and thinking checks pass through the router for the demo model: the thinking check
    sends a history with reasoning_content, which the router must forward (vllm-router dropped it)."""
    monkeypatch.setenv(ROUTER.api_key_env, KEY)
    target = target_from_url(
        front.url, "demo", flavor="llama.cpp", api_key_env=ROUTER.api_key_env, catalog_model="demo"
    )
    report = run_checks(target, only=["models", "thinking"])
    verdicts = {r.name: (r.status, r.reason) for r in report.results}
    assert {verdicts[n][0] for n in ("models", "thinking")} == {PASS}, verdicts


def _kill_one(workers: list[Worker], front: RunningRouter, blind: RunningRouter) -> None:
    dead, alive = workers[1], workers[0]
    health, cb = ROUTER.metrics["worker_health"], ROUTER.metrics["cb_state"]
    assert f'{cb}{{worker="{dead.url}"}} 1' not in _series(blind.metrics_url)
    killed = time.monotonic()
    dead.proc.send_signal(signal.SIGKILL)
    dead.proc.wait(timeout=10)
    _wait("the router marking the dead worker unhealthy",
          lambda: not next(w for w in front.client.workers() if w.url == dead.url).healthy,
          4 * INTERVAL_S, front.proc, front.log)  # fmt: skip
    took = time.monotonic() - killed
    assert took <= 2 * INTERVAL_S, f"marked unhealthy after {took:.1f} s, interval {INTERVAL_S} s"
    text = _series(front.metrics_url)
    assert f'{health}{{worker="{dead.url}"}} 0' in text
    assert f'{health}{{worker="{alive.url}"}} 1' in text
    for prompt in PROMPTS[:4]:
        assert chat(front.url, prompt).status_code == 200
    # the router that did not notice: a request sent to the dead worker opens its circuit breaker
    for prompt in PROMPTS:
        assert chat(blind.url, prompt).status_code == 200  # retried on the live worker
        if f'{cb}{{worker="{dead.url}"}} 1' in _series(blind.metrics_url):
            break
    text = _series(blind.metrics_url)
    assert f'{cb}{{worker="{dead.url}"}} 1' in text, [x for x in text.splitlines() if dead.url in x]
    assert f'{cb}{{worker="{alive.url}"}} 0' in text


def test_the_llama_cpp_router_fronts_two_llama_servers(
    fleet: tuple[list[Worker], RunningRouter, RunningRouter], monkeypatch: pytest.MonkeyPatch
) -> None:
    workers, front, blind = fleet
    urls = [w.url for w in workers]
    seen = front.client.workers()
    assert sorted(w.url for w in seen) == sorted(urls) and all(w.healthy for w in seen)
    assert front.client.readiness() == {"status": "ready", "healthy_workers": 2, "total_workers": 2}
    # the router itself refuses a client without the key: its worker list and every route to a worker
    assert requests.get(front.url + "/workers", timeout=10).status_code == 401
    unkeyed = {"model": "demo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert requests.post(f"{front.url}/v1/chat/completions", json=unkeyed, timeout=60).status_code == 401
    models = requests.get(f"{front.url}/v1/models", headers=_auth(), timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["demo"]

    _spread_and_stream(front, workers)
    text = _series(front.metrics_url)
    health = ROUTER.metrics["worker_health"]
    assert {f'{health}{{worker="{u}"}} 1' in text for u in urls} == {True}
    _drain_keeps_the_request_in_flight(front)
    _conformance(front, monkeypatch)
    _kill_one(workers, front, blind)
    # a series appears once the router has something to say about it (running_requests: a request in flight)
    text = _series(front.metrics_url)
    for name in ROUTER.metrics.values():
        assert f"\n{name}" in text, f"{name} not on the router's /metrics"
