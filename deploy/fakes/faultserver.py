"""A FAULT-INJECTING TEST SERVER: a tiny OpenAI-compatible endpoint that misbehaves on purpose.

It exists so the conformance check can be shown to catch the failures a real engine produces only when
it is misconfigured (no reasoning parser, a broken tool parser, random tool-call ids, a model that never
finishes loading). It serves nothing real: every answer is a recorded Kimi-shaped payload from
``tests/fixtures/kimi/`` (vLLM or SGLang shapes), replayed as is (``ok-kimi``) or with one fault injected.

    python -m deploy.fakes.faultserver --mode leak-think --engine vllm --port 0
    # prints: FAULT-INJECTING TEST SERVER (mode leak-think) listening on http://127.0.0.1:PORT

Modes:
- ``ok-kimi``: replays the recorded payloads (the check passes against it);
- ``leak-think``: thinking text and a literal ``</think>`` in ``content``, no reasoning field;
- ``leak-tool-markers``: raw ``<|tool_calls_section_begin|>``/``<|tool_call_begin|>`` in ``content`` and no
  ``tool_calls``;
- ``bad-tool-id``: tool calls carry random ``call_<hex>`` ids instead of ``functions.<name>:<n>``;
- ``stay-503``: every path answers 503 ``Loading model`` forever;
- ``leak-special``: every answer's ``content`` ends with ``<|im_end|>``, as an engine that prints special
  tokens (llama.cpp ``--special``, ``skip_special_tokens: false``) returns it (streamed: one more delta).

Load-test modes (for `kimi-deploy bench`): a streamed chat request gets ``max_completion_tokens`` (or
``max_tokens``) chunks of generated words, one every ``--token-delay`` seconds, then usage and ``[DONE]``;
every second request (the 2nd, 4th, ...) carries the fault:
- ``drop-mid-stream``: the connection is closed half-way through the stream, without ``[DONE]``;
- ``500-some``: the request is answered 500 with an OpenAI-style error body;
- ``stall``: after the first chunk the stream stops for ``--stall`` seconds (a client's timeout fires first);
- ``ok-stream``: no fault (the baseline for the three above).

Prefill/decode role (``--pd-role prefill|decode``, any mode): ``/metrics`` also serves the KV transfer
counters the engine exposes for that role in a split (``EngineMetrics.kv_transfer``: the same names, labels
and failed-transfer counter), and each chat request moves them as ``--pd-transfer`` says: ``moves`` (the
role's counter grows by one), ``stuck`` (it never grows: a split whose KV never travels) or ``fails`` (the
failed-transfer counter grows instead). A SGLang decode also serves another stage of the same per-stage
histogram, which grows on every request, so a reader that ignores the stage label is caught. No engine here
runs a split on CPU: this stands in for a role's metrics, never for the transfer itself.
"""

from __future__ import annotations

import argparse
import copy
import json
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.engines import registry
from deploy.fsutil import read_json

PD_ROLES = ("prefill", "decode")
PD_TRANSFERS = ("moves", "stuck", "fails")
STREAM_MODES = ("ok-stream", "drop-mid-stream", "500-some", "stall")
FAULT_MODES = ("ok-kimi", "leak-think", "leak-tool-markers", "bad-tool-id", "stay-503", "leak-special")
MODES = (*FAULT_MODES, *STREAM_MODES)
#: the end-of-turn token of Kimi's tokenizer, as a server printing special tokens appends it
LEAKED_TOKEN = "<|im_end|>"
ENGINES = ("vllm", "sglang")
DEFAULT_FIXTURES = constants.REPO_ROOT / "tests" / "fixtures" / "kimi"
BANNER = "FAULT-INJECTING TEST SERVER"


def load_fixture(fixtures: Path, engine: str, kind: str) -> dict[str, Any]:
    """One recorded payload without its ``_``-prefixed provenance keys."""
    data = read_json(fixtures / f"{engine}_{kind}.json")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _request_kind(body: dict[str, Any]) -> tuple[str, bool]:
    """(``tool_call`` | ``instant`` | ``thinking``, stream?) as a Kimi server would read the request."""
    stream = bool(body.get("stream"))
    if body.get("tools") and body.get("tool_choice") != "none":
        return "tool_call", stream
    kwargs = body.get("chat_template_kwargs") or {}
    thinking = body.get("thinking") or {}
    if kwargs.get("thinking") is False or thinking.get("type") == "disabled":
        return "instant", stream
    return "thinking", stream


def _reasoning_key(engine: str) -> str:
    eng = registry.find(engine)
    return eng.reasoning_field if eng is not None else "reasoning_content"


def inject(mode: str, engine: str, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Apply ``mode``'s fault to a recorded non-streamed payload of ``kind``."""
    out = copy.deepcopy(payload)
    choice = out["choices"][0]
    msg = choice["message"]
    rkey = _reasoning_key(engine)
    if mode == "leak-think" and kind != "tool_call":
        # What a server without a reasoning parser returns: the raw generation, tags included.
        thought = msg.get(rkey) or "The user asks for the capital of France."
        msg["content"] = f"{thought}</think>{msg.get('content') or ''}"
        msg[rkey] = None
    elif mode == "leak-tool-markers" and kind == "tool_call":
        call = msg["tool_calls"][0]
        msg["content"] = (
            "<|tool_calls_section_begin|><|tool_call_begin|>"
            f"{call['id']}<|tool_call_argument_begin|>{call['function']['arguments']}"
            "<|tool_call_end|><|tool_calls_section_end|>"
        )
        msg["tool_calls"] = []
        choice["finish_reason"] = "stop"
    elif mode == "bad-tool-id" and kind == "tool_call":
        for call in msg["tool_calls"]:
            call["id"] = f"call_{uuid.uuid4().hex[:24]}"
    elif mode == "leak-special":
        msg["content"] = f"{msg.get('content') or ''}{LEAKED_TOKEN}"
    return out


def inject_stream(mode: str, engine: str, kind: str, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Apply ``mode``'s fault to recorded stream chunks (the same faults as :func:`inject`)."""
    rkey = _reasoning_key(engine)
    out: list[dict[str, Any]] = []
    closed = False
    if mode == "leak-tool-markers" and kind == "tool_call":
        first, last = copy.deepcopy(chunks[0]), copy.deepcopy(chunks[-1])
        raw = (
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
            '{"city": "Berlin"}<|tool_call_end|><|tool_calls_section_end|>'
        )
        last["choices"][0]["finish_reason"] = "stop"
        middle = {**first, "choices": [{"index": 0, "delta": {"content": raw}, "finish_reason": None}]}
        return [first, middle, last]
    if mode == "leak-special":
        out = copy.deepcopy(chunks)
        delta = {"index": 0, "delta": {"content": LEAKED_TOKEN}, "finish_reason": None}
        leak = {**out[0], "choices": [delta]}
        return [*out[:-1], leak, out[-1]]
    for chunk in copy.deepcopy(chunks):
        delta = chunk["choices"][0]["delta"]
        if mode == "leak-think":
            if delta.get(rkey):
                delta["content"], delta[rkey] = delta[rkey], None
            elif delta.get("content") and not closed:
                # the raw generation: whatever was thought, then the closing tag, then the answer
                prefix = "" if kind == "thinking" else "The user wants a short answer."
                out.append(
                    {
                        **chunk,
                        "choices": [
                            {"index": 0, "delta": {"content": f"{prefix}</think>"}, "finish_reason": None}
                        ],
                    }
                )
                closed = True
        elif mode == "bad-tool-id":
            for call in delta.get("tool_calls") or []:
                if call.get("id"):
                    call["id"] = f"call_{uuid.uuid4().hex[:24]}"
        out.append(chunk)
    return out


def _thinking_sampling(model: str) -> dict[str, float]:
    """The catalog's thinking-mode sampling of ``model`` (what render gives the engine as its default)."""
    from deploy.catalog import load_model
    from deploy.errors import KimiDeployError

    try:
        return dict(load_model(model).modes.get("sampling", {}).get("thinking", {}))
    except KimiDeployError:
        return {}


class FaultHandler(BaseHTTPRequestHandler):
    server: FaultServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(
            f"[{BANNER.lower()}] {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n"
        )

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode())

    def _loading(self) -> None:
        self._json(503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        if srv.mode == "stay-503":
            return self._loading()
        path = self.path.split("?", 1)[0]
        if path == "/health":
            if srv.hosted:
                return self._json(404, {"error": {"message": "not found", "code": 404}})
            return self._send(200, b"")
        if path == "/v1/models":
            models = srv.fixture("models")
            for card in models["data"]:
                card["id"] = srv.model
            return self._json(200, models)
        if path in ("/props", "/model_info"):
            # what a server rendered from the plan reports as its default sampling (deploy.checking.sampling)
            values = _thinking_sampling(srv.model)
            if path == "/props":
                return self._json(200, {"default_generation_settings": {"params": values}})
            return self._json(200, {"model_path": srv.model, "preferred_sampling_params": values})
        if path == "/metrics":
            text = (
                "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="{srv.model}"}} 0.0\n'
            ) + srv.transfer_metrics()
            return self._send(200, text.encode(), "text/plain; version=0.0.4")
        self._json(404, {"error": {"message": f"no route {path}", "code": 404}})

    def _stream_tokens(self, body: dict[str, Any]) -> None:
        """The load-test modes: generated tokens, with the mode's fault on every second request."""
        srv = self.server
        n = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        with srv.lock:
            srv.requests += 1
            faulty = srv.requests % 2 == 0 and srv.mode != "ok-stream"
        if faulty and srv.mode == "500-some":
            return self._json(500, {"error": {"message": "injected fault: internal error", "code": 500}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion.chunk",
            "model": srv.model,
        }
        try:
            for i in range(n):
                if faulty and srv.mode == "drop-mid-stream" and i == n // 2:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if faulty and srv.mode == "stall" and i == 1:
                    time.sleep(srv.stall_s)
                chunk = {
                    **base,
                    "choices": [{"index": 0, "delta": {"content": " the"}, "finish_reason": None}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(srv.token_delay_s)
            done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
            usage = {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n}
            self.wfile.write(f"data: {json.dumps({**done, 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            return

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        if srv.mode == "stay-503":
            return self._loading()
        if self.path.split("?", 1)[0] != "/v1/chat/completions":
            return self._json(404, {"error": {"message": f"no route {self.path}", "code": 404}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        except json.JSONDecodeError:
            return self._json(400, {"error": {"message": "body is not JSON", "code": 400}})
        srv.count_transfer()
        if srv.mode in STREAM_MODES:
            return self._stream_tokens(body)
        kind, stream = _request_kind(body)
        if stream:
            chunks = inject_stream(srv.mode, srv.engine, kind, srv.fixture(f"stream_{kind}")["chunks"])
            data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
            return self._send(200, data, "text/event-stream")
        self._json(200, inject(srv.mode, srv.engine, kind, srv.fixture(kind)))


class FaultServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        mode: str,
        engine: str,
        model: str,
        fixtures: Path,
        hosted: bool = False,
        token_delay_s: float = 0.02,
        stall_s: float = 60.0,
        pd_role: str | None = None,
        pd_transfer: str = "moves",
    ) -> None:
        super().__init__(address, FaultHandler)
        self.mode, self.engine, self.model, self.fixtures = mode, engine, model, fixtures
        self.hosted = hosted
        self.token_delay_s, self.stall_s = token_delay_s, stall_s
        self.requests = 0
        self.lock = threading.Lock()
        self.pd_role, self.pd_transfer = pd_role, pd_transfer
        #: chat requests served in each transfer state: moved, stuck, failed
        self.transfers = {"moves": 0, "stuck": 0, "fails": 0}

    def fixture(self, kind: str) -> dict[str, Any]:
        return load_fixture(self.fixtures, self.engine, kind)

    def count_transfer(self) -> None:
        """One chat request served by a role of a split: the transfer it stands for, as ``pd_transfer``."""
        if self.pd_role is not None:
            with self.lock:
                self.transfers[self.pd_transfer] += 1

    def transfer_metrics(self) -> str:
        """The engine's KV transfer series for ``pd_role`` (Prometheus text; "" without a role)."""
        spec = registry.get(self.engine).metrics.kv_transfer
        if self.pd_role is None or spec is None:
            return ""
        with self.lock:
            moved, failed, served = (
                self.transfers["moves"],
                self.transfers["fails"],
                sum(self.transfers.values()),
            )
        labels = {"model_name": self.model}
        lines = [_sample(name, labels, failed) for name in spec.failed]
        counter = spec.counter(self.pd_role)
        if counter is not None and moved:  # a labelled series appears at its first observation
            lines.append(_sample(counter.sample, {**labels, **counter.labels}, moved))
        if counter is not None and "stage" in counter.labels and served:
            # another stage of the same histogram, which every request passes through
            lines.append(_sample(counter.sample, {**labels, "stage": "decode_prepare"}, served))
        return "".join(lines)


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    """One Prometheus text sample line."""
    shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{shown}}} {float(value)}\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m deploy.fakes.faultserver", description=f"{BANNER}: see the module doc."
    )
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument(
        "--engine", choices=ENGINES, default="vllm", help="whose recorded payload shapes to serve"
    )
    ap.add_argument("--model", default="kimi-k2.5", help="served model name")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    ap.add_argument("--hosted", action="store_true", help="no /health (404), like a hosted API")
    ap.add_argument("--token-delay", type=float, default=0.02, help="load-test modes: seconds between tokens")
    ap.add_argument("--stall", type=float, default=60.0, help="stall mode: seconds a stalled stream waits")
    ap.add_argument("--pd-role", choices=PD_ROLES, help="serve a split role's KV transfer metrics")
    ap.add_argument(
        "--pd-transfer", choices=PD_TRANSFERS, default="moves", help="what each chat request does to them"
    )
    args = ap.parse_args(argv)
    server = FaultServer(
        (args.host, args.port),
        args.mode,
        args.engine,
        args.model,
        args.fixtures,
        args.hosted,
        args.token_delay,
        args.stall,
        args.pd_role,
        args.pd_transfer,
    )
    host, port = server.server_address[:2]
    role = f", {args.pd_role} whose KV transfer {args.pd_transfer}" if args.pd_role else ""
    print(
        f"{BANNER} (mode {args.mode}, {args.engine} shapes{role}) listening on http://{host}:{port}",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
