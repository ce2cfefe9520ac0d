"""A fleet end to end on the demo: two llama-server replicas behind the router (`make demo REPLICAS=2`).

Slow (about three minutes once the engine and the router are cached). One fleet serves the whole module,
in order: the demo leaves it up and Prometheus beside it; `status --json` and a chat through the router; a
replica killed (kill -9) while 40 requests flow, the router marking it unhealthy and the alert firing in the
real Prometheus; the replica back; a rolling upgrade (context 32768 -> 16384) under steady load. Every wait
is on the event itself (the router's worker list, Prometheus's alerts, a request's answer), with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from deploy.demo.run import run_demo
from deploy.planning.contract import load_plan
from deploy.serving import fleet_launch, launch, release_dir, supervise

pytestmark = pytest.mark.slow

REPLICAS = 2


@dataclass
class Fleet:
    workdir: Path
    state: Path
    plan: Path
    rendered: Path
    router_url: str
    prometheus_url: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(self.state)}

    def kd(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def router_workers(self) -> dict[str, bool]:
        reply = requests.get(f"{self.router_url}/workers", timeout=5).json()
        return {w["url"]: bool(w["is_healthy"]) for w in reply["workers"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet") / ".demo"
    log = workdir.parent / "demo.log"
    try:
        # the demo's commands write to it directly: a real file
        with log.open("w") as out:
            result = run_demo(workdir, out=out, keep_running=True, replicas=REPLICAS, monitoring=True)
    except BaseException:
        print(log.read_text()[-8000:])
        fleet_launch.down(state_dir=workdir / "state", grace_s=10)
        raise
    plan = load_plan(workdir / "plan.json")
    router = plan.fleet.router
    assert router is not None
    yield Fleet(
        workdir,
        workdir / "state",
        workdir / "plan.json",
        workdir / "rendered",
        f"http://127.0.0.1:{router['port']}",
        result.prometheus_url,
    )
    fleet_launch.down(state_dir=workdir / "state", grace_s=10)


def _chat(url: str, stream: bool = False, timeout: float = 120) -> requests.Response:
    return requests.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "demo",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8,
            "stream": stream,
        },
        timeout=timeout,
    )


def test_the_demo_leaves_the_fleet_up_and_status_shows_the_router_and_healthy_replicas(fleet: Fleet) -> None:
    done = fleet.kd("status", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    views = {v["node"]: v for v in json.loads(done.stdout)}
    plan = load_plan(fleet.plan)
    assert views["router"]["ready"] and views["router"]["program"] == plan.fleet.router["program"]
    replicas = [v for v in views.values() if v.get("replica")]
    assert sorted(v["replica"] for v in replicas) == [r.id for r in plan.fleet.replicas]
    assert all(v["ready"] and v["healthy_in_router"] for v in replicas), views
    reply = _chat(fleet.router_url)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] is not None


def test_bench_through_the_router_reads_every_replicas_engine_metrics(fleet: Fleet, tmp_path: Path) -> None:
    """`bench --plan` of a fleet loads the front door (the router) and reads the engine metrics from each
    replica's own /metrics, since the router serves none of them."""
    out = tmp_path / "bench.json"
    done = fleet.kd(
        "bench", "--plan", str(fleet.plan), "--rendered", str(fleet.rendered), "--concurrency", "2",
        "--requests", "4", "--isl", "32", "--osl", "8", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    plan = load_plan(fleet.plan)
    assert report["target"]["url"].rstrip("/").endswith(f":{plan.fleet.router['port']}")
    metrics = report["engine_metrics"]
    assert metrics["available"], metrics
    assert metrics["sources"]["replicas"] == f"{REPLICAS} of {REPLICAS} replicas' own /metrics"
    (point,) = report["points"]
    # every request ran to its full --osl through the replicas' --reverse-prompt stops (the bench lifts them)
    assert (point["requests"], report["errors"]) == (4, 0), point.get("error_summary")
    per_replica = point["engine_metrics"]["replicas"]
    assert sorted(per_replica) == sorted(r.id for r in plan.fleet.replicas)
    assert all(m["available"] and m["samples"] > 0 for m in per_replica.values()), per_replica
    assert "each replica's /metrics" in done.stdout


@dataclass
class Load:
    """Requests through the router from ``threads`` threads; each outcome with its start and end time."""

    url: str
    threads: int
    total: int | None = None
    outcomes: list[tuple[float, float, bool, str]] = field(default_factory=list)
    in_flight: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _one(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                if self.total is not None and len(self.outcomes) + self.in_flight >= self.total:
                    return
                self.in_flight += 1
            t0 = time.monotonic()
            try:
                reply = _chat(self.url, stream=True)
                body = reply.content
                ok = reply.status_code == 200 and b"[DONE]" in body
                why = f"{reply.status_code} {body[:160]!r}"
            except requests.RequestException as exc:
                ok, why = False, exc.__class__.__name__
            with self.lock:
                self.in_flight -= 1
                self.outcomes.append((t0, time.monotonic(), ok, why))

    def start(self) -> list[threading.Thread]:
        workers = [threading.Thread(target=self._one, daemon=True) for _ in range(self.threads)]
        for w in workers:
            w.start()
        return workers

    def done(self, n: int) -> bool:
        with self.lock:
            return len(self.outcomes) >= n


def _wait(condition: object, seconds: float, what: str) -> float:
    """Wait until ``condition()`` is true; returns when (monotonic). Polls the state itself."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds:g} s")


def _firing(prometheus_url: str, alert: str, replica: str) -> bool:
    alerts = requests.get(f"{prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return any(
        a["labels"].get("alertname") == alert
        and a["state"] == "firing"
        and replica in json.dumps(a["labels"])
        for a in alerts
    )


def test_a_replica_killed_under_load_fails_at_most_its_requests_in_flight(fleet: Fleet) -> None:
    plan = load_plan(fleet.plan)
    victim = plan.fleet.replicas[-1]
    interval = float(plan.fleet.router["health_check_interval_s"])
    run = supervise.running(supervise.RunFiles.for_node(fleet.state, f"{victim.id}-{victim.nodes[0]}"))
    assert run is not None
    load = Load(fleet.router_url, threads=4, total=40)
    workers = load.start()
    _wait(lambda: load.done(8), 120, "the first 8 requests")
    with load.lock:
        in_flight_at_kill = load.in_flight
        killed_at = time.monotonic()
        os.killpg(run.pgid, signal.SIGKILL)
    unhealthy_at = _wait(
        lambda: fleet.router_workers().get(victim.url) is False,
        2 * interval + 5,
        "the router marks it unhealthy",
    )
    for w in workers:
        w.join(timeout=300)
    failed = [o for o in load.outcomes if not o[2]]
    assert len(load.outcomes) == 40
    # what was in flight when it died may fail (on the dead replica); nothing after the router knew
    assert len(failed) <= in_flight_at_kill, failed
    assert all(ok for t0, _, ok, _ in load.outcomes if t0 > unhealthy_at), load.outcomes
    assert unhealthy_at - killed_at <= 2 * interval, f"unhealthy after {unhealthy_at - killed_at:.1f} s"
    _wait(lambda: _firing(fleet.prometheus_url, "KimiReplicaUnhealthy", victim.id), 120, "the alert fires")


def test_the_killed_replica_comes_back_with_up(fleet: Fleet) -> None:
    done = fleet.kd("up", "--plan", str(fleet.plan), "--rendered", str(fleet.rendered))
    assert done.returncode == 0, done.stdout + done.stderr
    plan = load_plan(fleet.plan)
    _wait(lambda: all(fleet.router_workers().get(r.url) for r in plan.fleet.replicas), 60, "both healthy")


def _upgrade_under_load(
    fleet: Fleet, context: int, *extra: str
) -> tuple[subprocess.CompletedProcess[str], Load]:
    """Plan the fleet again at ``context``, then `upgrade` to it while two threads send requests through the
    router; returns the upgrade's outcome and the load's."""
    new_plan = fleet.workdir / f"plan-{context}.json"
    hardware = str(fleet.workdir / "this-node.yaml")
    done = fleet.kd(
        "plan", "--model", "demo", "--engine", "llama.cpp", "--hardware", hardware,
        "--replicas", str(REPLICAS), "--context", str(context), "-o", str(new_plan),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    load = Load(fleet.router_url, threads=2)
    workers = load.start()
    _wait(lambda: load.done(2), 120, "load flowing")
    done = fleet.kd(
        "upgrade", "--plan", str(new_plan), "--rendered", str(fleet.rendered), *extra, timeout=900
    )
    load.stop.set()
    for w in workers:
        w.join(timeout=300)
    return done, load


def test_a_replica_that_fails_its_start_is_put_back_and_the_upgrade_stops(fleet: Fleet) -> None:
    """A real fault: the new release's first replica cannot be ready within a 0.05 s deadline."""
    old = release_dir.current_id(fleet.rendered)
    done, load = _upgrade_under_load(fleet, 8192, "--deadline", "0.05")
    assert done.returncode == 6, done.stdout + done.stderr
    assert "rolled back" in done.stderr
    assert release_dir.current_id(fleet.rendered) == old
    assert not [o for o in load.outcomes if not o[2]]
    plan = load_plan(fleet.plan)
    assert all(fleet.router_workers().get(r.url) for r in plan.fleet.replicas)
    for r in plan.fleet.replicas:
        props = requests.get(f"{r.url}/props", timeout=5).json()
        assert (
            props["default_generation_settings"]["n_ctx"]
            == load_plan(fleet.plan).chosen_candidate.max_model_len
        )


def test_a_rolling_upgrade_under_steady_load_loses_no_request(fleet: Fleet) -> None:
    old = release_dir.current_id(fleet.rendered)
    done, load = _upgrade_under_load(fleet, 16384)
    new_plan = fleet.workdir / "plan-16384.json"
    assert done.returncode == 0, done.stdout + done.stderr
    assert release_dir.current_id(fleet.rendered) != old
    failed = [o for o in load.outcomes if not o[2]]
    assert not failed and len(load.outcomes) >= 4, (failed, len(load.outcomes))
    for r in load_plan(new_plan).fleet.replicas:
        props = requests.get(f"{r.url}/props", timeout=5).json()
        assert props["default_generation_settings"]["n_ctx"] == 16384
    assert launch.status_meta(fleet.state)
