"""`kimi-deploy bench` with the real AIPerf against a real llama-server on the demo GGUF, checked against an
independent timing of the same requests: llama-server's own per-request timings (``print_timing`` in its
log: prompt, eval and total time per task). The engine runs one slot (like the demo plan), so at
concurrency 2 one request waits and the engine's ``/metrics`` shows it deferred.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from deploy.catalog import load_model
from deploy.engines.builds import llama_server_path
from deploy.planning.architecture import demo_gguf_path

pytestmark = pytest.mark.slow

KD = [sys.executable, "-m", "deploy"]
TEMPLATE = (
    Path(__file__).resolve().parents[1] / "deploy" / "data" / "chat_templates" / "demo-hermes-think.jinja"
)
# OSL: at concurrency 2 on one slot, the second request waits for the whole first one. 48 tokens keep it
# waiting across several of bench's 0.5 s /metrics scrapes; with 8 (about 0.3 s here) the wait could fall
# between two scrapes and the queue gauge was never seen
ISL, OSL, REQUESTS = 32, 48, 2
_TIMING = re.compile(r"task (\d+) \|\s+(prompt eval|eval|total) time =\s+([\d.]+) ms /\s+(\d+) tokens")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(tmp_path: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """llama-server on the demo GGUF on a free loopback port, its log kept in ``tmp_path/llama.log``;
    yields (url, log) once /health answers 200."""
    binary = llama_server_path()
    if not binary.is_file():
        pytest.fail(
            f"llama-server not found at {binary}: run `make setup` (kimi-deploy engine install llama.cpp)"
        )
    port, log_path, gguf = _free_port(), tmp_path / "llama.log", demo_gguf_path(load_model("demo"))
    cmd = [str(binary), "-m", str(gguf), "-t", "1", "-np", "1", "--alias", "demo",
           "--host", "127.0.0.1", "--port", str(port), *args]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-2000:]
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        yield url, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def server_timings(log: str) -> list[dict[str, float]]:
    """Per request, in order: {"prompt_ms", "prompt_tokens", "eval_ms", "eval_tokens", "total_ms"}."""
    tasks: dict[int, dict[str, float]] = {}
    for m in _TIMING.finditer(log):
        t = tasks.setdefault(int(m.group(1)), {})
        key = {"prompt eval": "prompt", "eval": "eval", "total": "total"}[m.group(2)]
        t[f"{key}_ms"] = float(m.group(3))
        t[f"{key}_tokens"] = float(m.group(4))
    return [tasks[k] for k in sorted(tasks)]


def test_bench_agrees_with_the_engines_own_timing(tmp_path: Path) -> None:
    demo = load_model("demo")
    gguf = demo_gguf_path(demo)
    # the demo's turn markers as server-side stops, as its plan launches it: ignore_eos does not lift them
    stops = [a for s in demo.modes["stop"] for a in ("--reverse-prompt", s)]
    server = llama_server(
        tmp_path, "-c", "2048", "--jinja", "--chat-template-file", str(TEMPLATE), "--metrics", *stops
    )
    with server as (url, log_path):
        out, png = tmp_path / "bench.json", tmp_path / "bench.png"
        args = ["bench", "--url", url, "--model", "demo", "--flavor", "llama.cpp", "--tokenizer", str(gguf),
                "--concurrency", "1,2", "--requests", str(REQUESTS), "--isl", str(ISL), "--osl", str(OSL),
                "--slo", "ttft_p95=60s", "-o", str(out), "--plot", str(png)]  # fmt: skip
        run = subprocess.run([*KD, *args], capture_output=True, text=True, timeout=400, env=dict(os.environ))
        assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tool"] == {"name": "aiperf", "version": "0.13.0", "export_schema_version": ["1.4"]}
    c1, c2 = report["points"]
    assert (c1["concurrency"], c2["concurrency"]) == (1, 2)
    assert c1["requests"] == c2["requests"] == REQUESTS and report["errors"] == 0

    timings = server_timings(log_path.read_text())
    assert len(timings) == 2 * REQUESTS, timings
    # ignore_eos: the engine generated exactly --osl tokens for every request, and AIPerf counted them
    assert all(t["eval_tokens"] == OSL for t in timings), timings
    assert c1["output_tokens_mean"] == pytest.approx(OSL, abs=1)
    # the first prompt (cold cache) holds the --isl tokens AIPerf generated plus the chat template; later
    # ones count only what the engine's prompt cache did not already hold
    assert timings[0]["prompt_tokens"] >= ISL, timings

    # concurrency 1: nothing waits, so each end-to-end latency AIPerf measured is the engine's total time
    # plus the HTTP and streaming overhead of the same request
    first = timings[:REQUESTS]
    server_total = statistics.median(t["total_ms"] for t in first)
    assert c1["e2e_ms"]["p50"] >= 0.95 * server_total
    assert c1["e2e_ms"]["p50"] <= 1.25 * server_total + 500, (c1["e2e_ms"], server_total)
    # the engine's time per generated token against AIPerf's inter-token latency of the same requests
    server_itl = statistics.median(t["eval_ms"] / t["eval_tokens"] for t in first)
    assert 0.5 * server_itl <= c1["itl_ms"]["p50"] <= 2.0 * server_itl + 20, (c1["itl_ms"], server_itl)

    # one slot: at concurrency 2 a request waits, which the engine's own gauge shows
    per_point = report["engine_metrics"]["per_point"]
    assert (
        per_point[1]["peak_queue"] >= 1
        and report["engine_metrics"]["sources"]["queue"] == "llamacpp:requests_deferred"
    )
    assert png.stat().st_size > 10_000


def test_the_api_key_reaches_the_engine_and_nothing_else(tmp_path: Path) -> None:
    """llama-server with --api-key refuses requests without it; bench passes it through AIPerf's config
    (``${VAR}``), and it appears in no report, artifact or command line."""
    gguf, key = demo_gguf_path(load_model("demo")), "sk-bench-7f3a9c"
    with llama_server(tmp_path, "-c", "1024", "--api-key", key) as (url, log):
        out, kept = tmp_path / "bench.json", tmp_path / "artifacts"
        args = ["bench", "--url", url, "--model", "demo", "--flavor", "llama.cpp", "--tokenizer", str(gguf),
                "--api-key-env", "BENCH_TEST_KEY", "--concurrency", "1", "--requests", "2", "--isl", "16",
                "--osl", "4", "-o", str(out), "--artifacts", str(kept)]  # fmt: skip
        run = subprocess.run([*KD, *args], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "BENCH_TEST_KEY": key})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["points"][0]["requests"] == 2 and report["errors"] == 0, (
        report["points"][0].get("error_summary"),
        log.read_text()[-2000:],
    )
    assert report["target"]["api_key_set"] is True
    assert key not in out.read_text() + run.stdout + run.stderr
    for f in kept.rglob("*"):
        if f.is_file():
            assert key not in f.read_text(errors="replace"), f


def _read_chunked_stream(sock: socket.socket) -> bytes:
    """Read one HTTP/1.1 response with a chunked body from ``sock`` up to its terminating chunk."""
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"\r\n0\r\n\r\n")):
        piece = sock.recv(65536)
        assert piece, f"the server closed the connection before the response ended: {data[-300:]!r}"
        data += piece
    return data


def test_llama_server_closes_a_kept_alive_connection_after_each_stream(tmp_path: Path) -> None:
    """The engine fact behind bench's fresh connections for llama.cpp (``closes_after_stream``): a streamed
    response offers keep-alive, yet the server closes the socket right after its terminating chunk, well
    before the server's own idle timeout; a plain response keeps the connection usable. A pooled client
    that reuses the connection in between loses its next request (the CI failure of issue 30)."""
    from deploy.engines import registry

    engine = registry.get("llama.cpp")
    with llama_server(tmp_path, "-c", "1024") as (url, _log):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            for _ in range(2):  # two plain requests on one connection: keep-alive holds
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = sock.recv(65536)
                assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" not in head, head
        body = json.dumps({"model": "demo", "stream": True, "max_tokens": 4,
                           "messages": [{"role": "user", "content": "Say hi"}]}).encode()  # fmt: skip
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(request)
            response = _read_chunked_stream(sock)
            headers = response.split(b"\r\n\r\n", 1)[0].decode()
            assert "Keep-Alive: timeout=" in headers and "Connection: close" not in headers, headers
            # the end of the stream is followed by the server's FIN, not by its idle timeout
            sock.settimeout(engine.keepalive_idle_s - 1)
            assert sock.recv(1) == b"", "llama-server kept the connection after a stream: revisit bench's fix"
    assert engine.closes_after_stream
