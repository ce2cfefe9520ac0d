"""Deadlines that start at the first byte (issue 27): `check --timeout` and `status` bound the header phase
too; a tool schema's catastrophic pattern runs under a deadline; `mirror serve` drops idle and trickling
connections and a client that disconnects prints no traceback. Every network reader in the product, given
generated header-phase stalls (tests/helpers/stalls.py), returns within its deadline and leaves no
connection open behind it (deploy.deadline.Cutoff).

The stalling server is a small socket server written here, in a thread of the test: no real engine
trickles its status line and headers one byte at a time (that is the fault), so a custom one is the only
way to produce it; it is still a real TCP server on loopback that the verbs, run as real processes, talk to.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from helpers.fake_repos import MirrorProcess, make_gguf_repo, stage
from helpers.stalls import STALLS, Stall, StallServer, models_answer
from hypothesis import HealthCheck, given, settings

from deploy.checking.shapes import PATTERN_DEADLINE_S, validate_arguments
from deploy.serving import supervise

KD = [sys.executable, "-m", "deploy"]


@pytest.fixture
def header_trickler() -> Iterator[int]:
    """A loopback server that answers every connection with ``HTTP/1.1 200 OK`` and then one byte of a
    header every 0.2 s, never ending its headers; the port it listens on."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not stop.wait(0.2):
                    conn.sendall(b"X")
            except OSError:
                return

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


def test_check_timeout_covers_the_header_phase(tmp_path: Path, header_trickler: int) -> None:
    """Each request ends at --timeout even while headers trickle: the run ends, failed, in a bounded time."""
    started = time.monotonic()
    r = subprocess.run(
        [*KD, "check", "--url", f"http://127.0.0.1:{header_trickler}/v1", "--model", "m", "--timeout", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "KIMI_API_KEY": "k-" + os.urandom(6).hex()},
    )  # fmt: skip
    took = time.monotonic() - started
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    # before: the first request alone ran past 100 s; every check now waits at most its 2 s
    assert took < 90, (took, r.stdout[-2000:])


def test_status_of_a_pidfile_naming_a_trickling_server_returns(tmp_path: Path, header_trickler: int) -> None:
    """A pidfile (naming this live test process, which `status` only reads) whose URL is the trickling
    server: `status` reports the node not ready within its probe deadline instead of hanging."""
    state = tmp_path / "state"
    files = supervise.RunFiles.for_node(state, "head")
    files.pidfile.parent.mkdir(parents=True, exist_ok=True)
    supervise.write_pidfile(
        files, os.getpid(), {"url": f"http://127.0.0.1:{header_trickler}/health", "engine": "llama.cpp"}
    )
    started = time.monotonic()
    r = subprocess.run(
        [*KD, "status"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KIMI_DEPLOY_STATE_DIR": str(state)},
    )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - started < 30
    assert "head" in r.stdout


@pytest.mark.parametrize("pattern", ["^(a+)+$", "^(a|aa)+$", "^(a*)*b$"])
def test_a_catastrophic_tool_schema_pattern_runs_under_a_deadline(pattern: str) -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string", "pattern": pattern}}}
    started = time.monotonic()
    why = validate_arguments('{"q": "' + "a" * 64 + '!"}', schema)
    assert time.monotonic() - started < PATTERN_DEADLINE_S + 5
    assert why is not None and ("did not finish" in why or "do not match" in why)
    assert (
        validate_arguments('{"q": "aaa"}', {"type": "object", "properties": {"q": {"pattern": "^a+$"}}})
        is None
    )


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"q": {"$ref": "#/definitions/missing"}}},
        {"type": "object", "properties": {"q": {"$ref": "http://127.0.0.1:9/remote.json"}}},
        {"type": "object", "properties": {"q": {"type": "string", "pattern": "(unclosed"}}},
    ],
)
def test_an_unusable_tool_schema_is_a_finding_not_a_traceback(schema: dict) -> None:
    assert "schema" in (validate_arguments('{"q": "x"}', schema) or "")


def test_mirror_drops_idle_connections_and_disconnects_quietly(tmp_path: Path) -> None:
    """More idle connections than worker threads, a client trickling its request line, and clients that
    reset mid-request: a real client is still served, and the server prints no traceback."""
    root = tmp_path / "root"
    stage(make_gguf_repo(tmp_path / "src", part_bytes=64 * 1024), "unsloth/Kimi-K2.5-GGUF", root)
    with MirrorProcess(root, "--threads", "2") as m:
        port = int(m.url.rsplit(":", 1)[1].split("/")[0])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        idle[0].sendall(b"GET /api/mod")  # half a request line, never finished
        for _ in range(2):  # reset mid-request (SO_LINGER 0 sends RST on close)
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /api/models HTTP/1.1\r\nHost: x\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
            c.sendall(b"GET /api/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = c.recv(64)
        assert answer.startswith(b"HTTP/1.1 "), answer
        assert time.monotonic() - started < 45
        for s in idle:
            s.close()
        out = m.stop()
    assert "Traceback" not in out, out


# ------------------------------------------------------------ generated header-phase stalls, every reader

#: Scheduling slack on a loaded 2-core machine: a reader returns, and its connection is closed, within its
#: deadline plus this.
SLACK_S = 1.5
#: The deadline the in-process readers get (each example waits it out once).
READER_DEADLINE_S = 0.6
STALL_SETTINGS = settings(
    derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


def _reader_calls() -> dict[str, Callable[[str, float], object]]:
    """Every reader in the product that reads an HTTP answer, as ``call(base URL, deadline)``; each either
    raises its own error or returns its "no answer" value."""
    from deploy.benchmark.scrape import MetricsScraper
    from deploy.checking import bounded
    from deploy.deadline import http_get, http_request
    from deploy.monitoring import prometheus, scrape
    from deploy.routers.client import RouterClient
    from deploy.serving import readiness, watch

    def scraper(url: str, t: float) -> object:
        s = MetricsScraper(url, timeout_s=t)
        s.scrape_once()
        return s.error

    def prometheus_query(url: str, t: float) -> object:
        port = int(url.rsplit(":", 1)[1])
        return prometheus.Prometheus(0, port, Path("/nonexistent"), Path("/nonexistent"), timeout_s=t).query(
            "up"
        )

    def router(url: str, t: float) -> RouterClient:
        return RouterClient(url, metrics_url=url, timeout_s=t, program="vllm-router")

    return {
        "deadline.http_get": lambda url, t: http_get(f"{url}/x", timeout_s=t),
        "deadline.http_request POST": lambda url, t: http_request("POST", f"{url}/x", json={}, timeout_s=t),
        "check: bounded.get": lambda url, t: bounded.get(f"{url}/v1/models", timeout_s=t),
        "check: chat calls (httpx transport)": lambda url, t: bounded.http_client(t).post(
            f"{url}/v1/chat/completions", json={}
        ),
        "status --watch: /metrics": lambda url, t: scrape.fetch(f"{url}/metrics", "k", timeout_s=t),
        "status --watch: /props": lambda url, t: watch._slots(url, "k", {}),
        "status: readiness probe": lambda url, t: readiness.probe(f"{url}/health", "vllm", timeout_s=t),
        "bench: metrics scraper": scraper,
        "demo --monitoring: Prometheus API": prometheus_query,
        "upgrade: router metrics": lambda url, t: router(url, t).metrics(),
        "upgrade: worker's served model": lambda url, t: router(url, t).served_model(url),
        "status/upgrade: router's workers": lambda url, t: router(url, t).workers(),
    }


#: what each reader's deadline is when the test cannot pass one (watch._slots: 3 s)
_FIXED_DEADLINE_S = {"status --watch: /props": 3.0}


def _expected_error(name: str) -> tuple[type[BaseException], ...] | None:
    """What ``name`` raises at its deadline; None: it returns its "no answer" value instead."""
    import httpx2

    from deploy.errors import PrometheusError, RouterRequestError
    from deploy.monitoring.scrape import ScrapeError

    return {
        "deadline.http_get": (requests.Timeout,),
        "deadline.http_request POST": (requests.Timeout,),
        "check: bounded.get": (requests.Timeout,),
        "check: chat calls (httpx transport)": (httpx2.ReadTimeout,),
        "status --watch: /metrics": (ScrapeError,),
        "demo --monitoring: Prometheus API": (PrometheusError,),
        "upgrade: router metrics": (RouterRequestError,),
        "status/upgrade: router's workers": (RouterRequestError,),
    }.get(name)


READERS = [
    "deadline.http_get",
    "deadline.http_request POST",
    "check: bounded.get",
    "check: chat calls (httpx transport)",
    "status --watch: /metrics",
    "status --watch: /props",
    "status: readiness probe",
    "bench: metrics scraper",
    "demo --monitoring: Prometheus API",
    "upgrade: router metrics",
    "upgrade: worker's served model",
    "status/upgrade: router's workers",
]


def test_the_reader_list_is_every_reader() -> None:
    assert sorted(READERS) == sorted(_reader_calls())


@pytest.mark.parametrize("reader", READERS)
@settings(STALL_SETTINGS, max_examples=4)
@given(stall=STALLS)
def test_every_reader_ends_a_header_stall_at_its_deadline_and_leaves_nothing_open(
    reader: str, stall: Stall
) -> None:
    """A status line or headers trickled (generated: phase and pace) never outlast the reader's whole
    deadline, and when the reader returns its connection is closed: no thread reads on behind it."""
    call = _reader_calls()[reader]
    deadline = _FIXED_DEADLINE_S.get(reader, READER_DEADLINE_S)
    expected = _expected_error(reader)
    with StallServer(stall) as server:
        started = time.monotonic()
        if expected is None:
            outcome = call(server.url, deadline)
            assert (
                outcome in (1, None)
                or isinstance(outcome, str)
                or getattr(outcome, "state", "") == "no_answer"
            )
        else:
            with pytest.raises(expected):
                call(server.url, deadline)
        took = time.monotonic() - started
        assert server.stalled() >= 1
        assert took < deadline + SLACK_S, (reader, stall, took)
        # the close reaches the server at once; waiting on it is waiting on the event, not a sleep
        assert server.wait_all_closed(SLACK_S), (reader, stall, server.lifetimes())
        assert max(server.lifetimes()) < deadline + SLACK_S, (reader, stall, server.lifetimes())
    assert not [t for t in threading.enumerate() if t.name == "deadline-cutoff"]


def _one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    return errors[0]


@settings(STALL_SETTINGS, max_examples=3)
@given(stall=STALLS)
def test_check_chat_requests_end_a_header_stall_at_timeout(tmp_path_factory, stall: Stall) -> None:
    """`check` against a server that is live and lists its model but stalls every chat answer in its
    header phase: each chat request (plain, streamed, with tools) ends at --timeout, the run fails with
    one error line, and no stalled connection stays open past its request's deadline."""
    timeout = 1.0
    answers = {"/health": (200, b"ok"), "/v1/models": models_answer("m")}
    with StallServer(stall, answers) as server:
        started = time.monotonic()
        r = subprocess.run(
            [*KD, "check", "--url", f"{server.url}/v1", "--model", "m", "--timeout", str(timeout),
             "--samples", "1", "--no-vision", "--no-metrics", "--concurrency", "1"],
            cwd=tmp_path_factory.mktemp("check"), capture_output=True, text=True, timeout=120,
            env={**os.environ, "KIMI_API_KEY": "k-" + os.urandom(6).hex()},
        )  # fmt: skip
        took = time.monotonic() - started
        assert r.returncode == 7, (r.returncode, r.stdout[-2000:], r.stderr)
        assert "check(s) failed" in _one_error_line(r)
        stalled = server.stalled()
        assert stalled >= 3, r.stdout  # instant, thinking, tool_call, streaming: each asked, each cut
        assert server.wait_all_closed(SLACK_S)
        assert max(server.lifetimes()) < timeout + SLACK_S, (stall, server.lifetimes())
    # the requests are sequential (--concurrency 1): the run is their deadlines and the start-up
    assert took < stalled * timeout + 15, (took, stalled, r.stdout[-2000:])


@settings(STALL_SETTINGS, max_examples=2)
@given(stall=STALLS)
def test_status_watch_ends_a_metrics_stall_at_its_deadline(tmp_path_factory, stall: Stall) -> None:
    """`status --watch --json` against a node whose engine is ready but stalls /metrics in its header
    phase: every refresh ends, the stalled read at its own 3 s deadline (deploy.monitoring.scrape), the
    node's line names the deadline, and no stalled connection outlives its read (refreshes do not pile up
    connections)."""
    from deploy.monitoring.scrape import fetch

    metrics_deadline = fetch.__defaults__[-1]  # the reader's own deadline: 3 s
    tmp = tmp_path_factory.mktemp("status")
    state = tmp / "state"
    files = supervise.RunFiles.for_node(state, "head")
    files.pidfile.parent.mkdir(parents=True, exist_ok=True)
    with StallServer(stall, {"/health": (200, b"ok")}) as server:
        supervise.write_pidfile(files, os.getpid(), {"url": f"{server.url}/health", "engine": "llama.cpp"})
        started = time.monotonic()
        r = subprocess.run(
            [*KD, "status", "--watch", "--json", "--count", "2", "--interval", "0.2"],
            cwd=tmp, capture_output=True, text=True, timeout=120,
            env={**os.environ, "KIMI_DEPLOY_STATE_DIR": str(state)},
        )  # fmt: skip
        took = time.monotonic() - started
        assert "Traceback" not in r.stderr and not r.stderr.strip(), r.stderr
        lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        nodes = [node for line in lines for node in line]  # one JSON list of nodes per refresh
        assert len(nodes) == 2 and all(n["ready"] for n in nodes), r.stdout
        assert all("DeadlineExceeded" in (n["metrics_error"] or "") for n in nodes), r.stdout
        # /metrics once per refresh (/props is read only after /metrics answered)
        assert server.stalled() == 2
        assert server.wait_all_closed(SLACK_S)
        assert max(server.lifetimes()) < metrics_deadline + SLACK_S, (stall, server.lifetimes())
    assert took < 2 * metrics_deadline + 10, took


@settings(STALL_SETTINGS, max_examples=2)
@given(stall=STALLS)
def test_download_ends_a_header_stall_at_its_stall_deadline(tmp_path_factory, stall: Stall) -> None:
    """`download` from an endpoint that accepts and then stalls every answer in its header phase: each
    request the library sends is cut at --stall-seconds (the library's own per-read timeout never fires
    against it), the run fails with one error line and its exit code once its retries are spent, no folder
    is made, and no stalled connection outlives its request."""
    from helpers.fake_repos import kd_env

    from deploy.errors import DownloadError
    from deploy.hardware.profiles import load_profile
    from deploy.planning.contract import save_plan
    from deploy.planning.planner import plan

    stall_s = 1.0
    tmp = tmp_path_factory.mktemp("download")
    save_plan(plan(load_profile("h200x8")), tmp / "plan.json")
    (tmp / "hf-home").mkdir()
    with StallServer(stall) as server:
        started = time.monotonic()
        r = subprocess.run(
            [*KD, "download", "--plan", str(tmp / "plan.json"), "--dest", str(tmp / "w"),
             "--endpoint", server.url, "--stall-seconds", str(stall_s), "--retries", "0"],
            cwd=tmp, capture_output=True, text=True, timeout=120, env=kd_env(hf_home=tmp / "hf-home"),
        )  # fmt: skip
        took = time.monotonic() - started
        assert r.returncode == DownloadError.exit_code, (r.returncode, r.stderr)
        assert "ReadTimeout" in _one_error_line(r)
        assert server.stalled() >= 1
        assert server.wait_all_closed(SLACK_S)
        assert max(server.lifetimes()) < stall_s + SLACK_S, (stall, server.lifetimes())
    assert not (tmp / "w").exists()
    assert took < server.stalled() * stall_s + 15, took
