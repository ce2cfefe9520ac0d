"""Deadlines that start at the first byte (issue 27): `check --timeout` and `status` bound the header phase
too; a tool schema's catastrophic pattern runs under a deadline; `mirror serve` drops idle and trickling
connections and a client that disconnects prints no traceback.

The stalling server is a small socket server written here, in a thread of the test: no real engine
trickles its status line and headers one byte at a time (that is the fault), so a custom one is the only
way to produce it; it is still a real TCP server on loopback that the verbs, run as real processes, talk to.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fake_repos import MirrorProcess, make_gguf_repo, stage

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
