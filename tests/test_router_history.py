"""What each router forwards of an assistant message's reasoning, seen by the worker: the evidence behind
``Router.history_reasoning_fields`` and so behind ``Engine.router`` (which router a fleet gets).

A stand-in worker is the one instrument here, and a real process on loopback: an engine would not tell what
body it received, so an echo server records every request the router sends it (method, path, the
``Authorization`` header, the JSON body) to a file. Each pinned router is started through its shipped
launcher with the key in its environment, in front of that worker, and sent one chat request whose history
holds an assistant turn with both ``reasoning_content`` and ``reasoning``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import requests
from helpers.processes import process, until

from deploy.engines import registry as engines
from deploy.routers import install, registry
from deploy.routers.argv import launch_argv, router_argv
from deploy.routers.base import RouterSettings

pytestmark = pytest.mark.slow

KEY = "history-test-key-0123456789"
TURN = {"role": "assistant", "content": "5", "reasoning_content": "RC-text", "reasoning": "R-text"}

ECHO = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[2]


class Echo(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _record(self, body):
        entry = {"method": self.command, "path": self.path,
                 "authorization": self.headers.get("Authorization"), "body": body}
        with open(LOG, "a") as out:
            out.write(json.dumps(entry) + "\\n")

    def _send(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._record(None)
        if self.path.startswith("/health"):
            return self._send({"status": "ok"})
        if self.path.startswith("/v1/models"):
            return self._send({"object": "list", "data": [{"id": "demo", "object": "model"}]})
        self._send({}, 404)

    def do_POST(self):
        size = int(self.headers.get("Content-Length", 0))
        self._record(json.loads(self.rfile.read(size) or b"null"))
        message = {"role": "assistant", "content": "ok"}
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "demo",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forwarded(router: str, tmp: Path) -> list[dict]:
    """Every request the echo worker got from ``router`` (one chat with ``TURN`` in its history sent)."""
    spec = registry.get(router)
    if not install.router_ready(spec):
        pytest.fail(f"{router} venv missing: run `{install.INSTALL_HINT}`")
    script, seen = tmp / "echo.py", tmp / "seen.jsonl"
    script.write_text(ECHO)
    worker_port, port, metrics_port = _free_port(), _free_port(), _free_port()
    worker = f"http://127.0.0.1:{worker_port}"
    plan_router = {"program": router, "host": "127.0.0.1", "port": port, "metrics_port": metrics_port,
                   **RouterSettings(policy="round_robin", policy_reason="one worker").to_dict()}  # fmt: skip
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), spec.api_key_env: KEY}
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}
    with (
        process([sys.executable, str(script), str(worker_port), str(seen)], tmp / "echo.log") as echo,
        process(launch_argv(spec, router_argv(plan_router, [worker])), tmp / "router.log", env) as proc,
    ):
        until("echo worker", lambda: requests.get(f"{worker}/health", timeout=2).ok, echo, tmp / "echo.log")
        until(router, lambda: requests.get(f"{url}/readiness", headers=auth, timeout=2).ok, proc,
               tmp / "router.log")  # fmt: skip
        history = [{"role": "user", "content": "2+3?"}, TURN, {"role": "user", "content": "Again"}]
        body = {"model": "demo", "max_tokens": 8, "messages": history}
        reply = requests.post(f"{url}/v1/chat/completions", json=body, headers=auth, timeout=60)
        assert reply.status_code == 200, reply.text
    return [json.loads(line) for line in seen.read_text().splitlines()]


@pytest.mark.parametrize("router", registry.names())
def test_each_router_forwards_the_history_fields_its_data_names(router: str, tmp_path: Path) -> None:
    seen = _forwarded(router, tmp_path)
    (chat,) = [r for r in seen if r["path"] == "/v1/chat/completions"]
    (turn,) = [m for m in chat["body"]["messages"] if m["role"] == "assistant"]
    kept = {k for k in ("reasoning_content", "reasoning") if k in turn}
    assert kept == set(registry.get(router).history_reasoning_fields), turn
    assert {turn[k] for k in kept} <= {TURN["reasoning_content"], TURN["reasoning"]}
    # the key reaches the worker with the request (the worker's own key: engines check it)
    assert chat["authorization"] == f"Bearer {KEY}"
    # every engine whose fleet gets this router reads a field it keeps
    for name in engines.names():
        engine = engines.get(name)
        if engine.router == router:
            assert kept & set(engine.history_reasoning_fields), name
