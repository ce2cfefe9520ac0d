"""llama.cpp's RPC layout for real on loopback: `plan --nodes 2` on a two-node CPU profile whose nodes are
both 127.0.0.1, `render`, then the rendered worker script (rpc-server) and head script (llama-server --rpc)
started as real processes with the demo GGUF; one chat completion goes through both."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.cpu_nodes import write_cpu_profile

from deploy.catalog import load_model
from deploy.engines import builds as engines
from deploy.planning.architecture import architecture_for, demo_gguf_path

KD = Path(sys.executable).with_name("kimi-deploy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(KD), *args], capture_output=True, text=True, timeout=120)


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _start(script: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            ["bash", str(script)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.slow
def test_rendered_rpc_scripts_serve_a_chat_completion(tmp_path: Path) -> None:
    layout = engines.llama_cpp_layout()
    if not engines.llama_cpp_ready(layout):
        pytest.fail(f"{layout.server} is not built: run `make setup` (kimi-deploy engine install llama.cpp)")
    gguf = demo_gguf_path(load_model("demo"))
    profile = write_cpu_profile(tmp_path / "loopback.yaml", ["127.0.0.1", "127.0.0.1"])
    plan_path = tmp_path / "plan.json"
    r = _kd("plan", "--hardware", str(profile), "--model", "demo", "--nodes", "2", "-o", str(plan_path))
    assert r.returncode == 0, r.stderr
    data = json.loads(plan_path.read_text())
    cand = next(c for c in data["candidates"] if c["id"] == data["chosen"])
    assert cand["placement"] == "rpc"
    # a free port instead of rpc-server's default, so that parallel runs on this machine do not collide; the
    # plan is the file users edit for that too
    rpc_port = _free_port()
    args = cand["engine_args"]
    args["multinode"]["rpc_port"] = rpc_port
    args["rpc_servers"] = [f"127.0.0.1:{rpc_port}"]
    plan_path.write_text(json.dumps(data))
    http_port = _free_port()
    out = tmp_path / "out"
    r = _kd(
        "render", "--plan", str(plan_path), "--out", str(out), "--weights-dir", str(gguf.parent),
        "--port", str(http_port),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    head, worker = manifest["nodes"]
    assert (head["role"], worker["role"]) == ("head", "worker")
    worker_proc = _start(out / worker["launch"], tmp_path / "worker.log")
    head_proc = None
    try:
        deadline = time.monotonic() + 30
        while True:
            assert worker_proc.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", rpc_port)) == 0:
                    break
            assert time.monotonic() < deadline, "rpc-server did not listen in 30 s"
            time.sleep(0.2)
        # trace level: llama-server then logs where load_tensors put the layers and each device's buffers
        head_proc = _start(out / head["launch"], tmp_path / "head.log", {"LLAMA_ARG_LOG_VERBOSITY": "4"})
        deadline = time.monotonic() + 180
        while not _healthy(f"http://127.0.0.1:{http_port}/health"):
            assert head_proc.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "llama-server did not become ready in 180 s"
            time.sleep(0.5)
        status, body = _post(
            f"http://127.0.0.1:{http_port}/v1/chat/completions",
            {
                "model": args["served_model_name"],
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 8,
            },
        )
        assert status == 200 and body["choices"], body
        assert body["usage"]["completion_tokens"] > 0
        # the layers on the worker ran there: llama-server connected to the rendered rpc-server
        assert "Accepted client connection" in (tmp_path / "worker.log").read_text()
        assert worker_proc.poll() is None
        # llama.cpp placed the layers where the plan sized them: n_gpu_layers of the n_layers + 1 (output)
        # on the RPC device, holding the weights the plan counted for the worker
        log = (tmp_path / "head.log").read_text()
        demo = load_model("demo")
        layers = architecture_for(demo, demo.variant(cand["variant"])).num_layers
        assert f"offloaded {args['n_gpu_layers']}/{layers + 1} layers" in log, log[-3000:]
        found = re.search(rf"RPC0\[127\.0\.0\.1:{rpc_port}\] model buffer size =\s+([\d.]+) MiB", log)
        assert found, log[-3000:]
        planned = cand["memory"]["terms"]["host_node2_weights"] * 1024
        assert float(found.group(1)) == pytest.approx(planned, rel=0.02)
    finally:
        if head_proc is not None:
            _stop(head_proc)
        _stop(worker_proc)
