"""A stand-in prefill or decode engine for the router's prefill/decode (PD) handshake test: a real HTTP
process on loopback that records every request a router sends it and answers as the engine would.

    python tests/helpers/pd_engine.py ROLE PORT LOG [BOOTSTRAP_PORT]

``ROLE`` is ``prefill`` or ``decode``. With ``PD_ENGINE_API_KEY`` set in its environment it answers ``/v1/*``
only to ``Authorization: Bearer <that key>`` (401 otherwise), as vLLM and SGLang started with ``--api-key``
do.  every request is appended to ``LOG`` as one JSON line
(``{"role", "method", "path", "headers", "body"}``, header names lower-cased). With ``BOOTSTRAP_PORT``
(prefill only) a second listener there records what reaches the bootstrap server (vllm-router's Mooncake
flow asks a prefill's bootstrap server for its engine id) and answers it.

Why a stand-in: no engine here can serve prefill/decode on CPU (SGLang's and vLLM's PD modes need a GPU and
an RDMA or NIXL transfer engine), so what this checks is the router's side of the handshake, never the KV
transfer itself. What it answers, per role:

- ``GET /health``, ``/health_generate``, ``/v1/models``, ``/get_model_info``, ``/model_info``,
  ``/get_server_info``, ``/server_info``: what an engine answers there (model ``demo``; its path: the
  log's folder, which holds no tokenizer, so sglang-router's attempt to load one stays on this machine).
- ``POST /tokenize``: vLLM's answer (one token per byte).
- ``POST /v1/chat/completions``, ``/v1/completions``: a completion whose text names the role
  and port (``"decode@PORT says hi"``: the client can tell which server's tokens it got), SSE chunks when
  the request asks for ``stream``, one JSON body otherwise. A prefill asked ``do_remote_decode`` in
  ``kv_transfer_params`` without a Mooncake ``transfer_id`` answers with the parameters a vLLM prefill with
  the NIXL connector returns, unique per request (``remote_request_id``, ``remote_block_ids``); the record
  of that request holds them (``answered``), so the test can check the decode got exactly these.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any

MODEL = "demo"
#: the variable holding the key the stand-in requires on /v1/* (unset: no key)
KEY_ENV = "PD_ENGINE_API_KEY"
#: vLLM's default VLLM_NIXL_SIDE_CHANNEL_PORT: where a decode would reach the prefill's NIXL agent
NIXL_SIDE_CHANNEL_PORT = 5600
_lock = threading.Lock()
_serial = count(1)


def _record(log: str, entry: dict[str, Any]) -> None:
    with _lock, open(log, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def kv_params_from_prefill(port: int, serial: int) -> dict[str, Any]:
    """What a vLLM prefill with the NIXL connector returns for a request asking ``do_remote_decode`` (the
    fields of vLLM 0.33's ``nixl/pull_scheduler.py``): where the decode pulls the blocks from (its engine,
    blocks, request, side-channel host and port); unique per request."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_block_ids": [serial * 10, serial * 10 + 1],
        "remote_engine_id": f"prefill-engine-{port}",
        "remote_request_id": f"prefill-{port}-req-{serial}",
        "remote_host": "127.0.0.1",
        "remote_port": NIXL_SIDE_CHANNEL_PORT,
        "tp_size": 1,
    }


def tokenized(request: object) -> dict[str, Any]:
    """vLLM's ``POST /tokenize`` answer (``TokenizeResponse``: count, max_model_len, tokens) for a request's
    prompt or messages, one token per UTF-8 byte (vllm-router's cache_aware policy asks for it)."""
    request = request if isinstance(request, dict) else {}
    text = request.get("prompt") or "".join(str(m.get("content", "")) for m in request.get("messages") or [])
    tokens = list(str(text).encode())
    return {"count": len(tokens), "max_model_len": 4096, "tokens": tokens, "token_strs": None}


def make_handler(role: str, port: int, log: str) -> type[BaseHTTPRequestHandler]:
    model_path = os.path.dirname(os.path.abspath(log))

    class Engine(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _entry(self, body: object, answered: dict[str, Any] | None = None) -> None:
            entry = {
                "role": role,
                "port": port,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
            _record(log, {**entry, "answered": answered} if answered is not None else entry)

        def _json(self, obj: object, code: int = 200) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _text(self, text: str, code: int = 200) -> None:
            data = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _key_ok(self, path: str) -> bool:
            """Whether a keyed engine serves this request: anything but /v1/*, or the key's bearer."""
            key = os.environ.get(KEY_ENV, "")
            return (
                not key or not path.startswith("/v1/") or self.headers.get("Authorization") == f"Bearer {key}"
            )

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._entry(None)
            path = self.path.split("?", 1)[0]
            if not self._key_ok(path):
                return self._json({"error": {"message": "Unauthorized", "code": 401}}, 401)
            if path in ("/health", "/health_generate"):
                return self._text("ok")
            if path == "/v1/models":
                return self._json({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
            if path in ("/get_model_info", "/model_info"):
                return self._json(
                    {"model_path": model_path, "tokenizer_path": model_path, "is_generation": True}
                )
            if path in ("/get_server_info", "/server_info"):
                return self._json(
                    {"model_path": model_path, "served_model_name": MODEL, "disaggregation_mode": role}
                )
            return self._json({"error": "not found"}, 404)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                body = {"unparsed": raw.decode("utf-8", "replace")}
            path = self.path.split("?", 1)[0]
            if path == "/tokenize":
                self._entry(body)
                return self._json(tokenized(body))
            if path not in ("/v1/chat/completions", "/v1/completions"):
                self._entry(body)
                return self._json({"error": "not found"}, 404)
            if not self._key_ok(path):
                self._entry(body)
                return self._json({"error": {"message": "Unauthorized", "code": 401}}, 401)
            request = body if isinstance(body, dict) else {}
            text = f"{role}@{port} says hi"
            extra: dict[str, Any] = {}
            asked = request.get("kv_transfer_params") or {}
            # a Mooncake request carries the router's transfer_id: that prefill pushes the blocks and
            # returns no parameters (vLLM 0.33's mooncake_connector.py request_finished); NIXL's returns them
            if role == "prefill" and asked.get("do_remote_decode") and "transfer_id" not in asked:
                extra["kv_transfer_params"] = kv_params_from_prefill(port, next(_serial))
            # recorded with what it answers beyond the text, so the test can follow it to the decode
            self._entry(body, extra)
            if request.get("stream"):
                return self._stream(path, text, extra)
            return self._json(self._completion(path, text, extra))

        def _completion(self, path: str, text: str, extra: dict[str, Any]) -> dict[str, Any]:
            usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
            if path == "/v1/completions":
                choice = {"index": 0, "text": text, "finish_reason": "stop"}
                return {
                    "id": "cmpl",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": MODEL,
                    "choices": [choice],
                    "usage": usage,
                    **extra,
                }
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return {
                "id": "chatcmpl",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [choice],
                "usage": usage,
                **extra,
            }

        def _stream(self, path: str, text: str, extra: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            words = text.split(" ")
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                last = i == len(words) - 1
                if path == "/v1/chat/completions":
                    delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                    chunk = {
                        "id": "chatcmpl",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": MODEL,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None}],
                    }
                else:
                    chunk = {
                        "id": "cmpl",
                        "object": "text_completion",
                        "created": 0,
                        "model": MODEL,
                        "choices": [{"index": 0, "text": piece, "finish_reason": "stop" if last else None}],
                    }
                if last:
                    chunk.update(extra)
                self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Engine


def bootstrap_engine_id(engine_port: int) -> str:
    """The engine id the bootstrap server of the prefill on ``engine_port`` reports."""
    return f"mooncake-engine-of-{engine_port}"


def make_bootstrap_handler(port: int, log: str, engine_port: int) -> type[BaseHTTPRequestHandler]:
    """The prefill's bootstrap server: records what reaches it; answers ``GET /query`` as vLLM 0.33's
    Mooncake bootstrap server does (per data-parallel rank: the engine id and the workers' ZMQ addresses
    per tensor- and pipeline-parallel rank, read by its ``mooncake_connector.py``), with an engine id of its
    own (``bootstrap_engine_id``) so the test can tell where the router got the one it sends the decode."""

    class Bootstrap(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, body: object) -> None:
            _record(
                log,
                {
                    "role": "bootstrap",
                    "port": port,
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                },
            )
            ranks = {
                "0": {
                    "engine_id": bootstrap_engine_id(engine_port),
                    "worker_addr": {"0": {"0": "tcp://127.0.0.1:1"}},
                }
            }
            data = json.dumps(ranks).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(None)

        def do_POST(self) -> None:  # noqa: N802
            size = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(size) if size else b""
            self._answer(raw.decode("utf-8", "replace"))

    return Bootstrap


def main(argv: list[str]) -> None:
    role, port, log = argv[0], int(argv[1]), argv[2]
    bootstrap_port = int(argv[3]) if len(argv) > 3 else None
    if role not in ("prefill", "decode"):
        raise SystemExit(f"error: role {role!r}: expected prefill or decode")
    if bootstrap_port is not None:
        boot = ThreadingHTTPServer(
            ("127.0.0.1", bootstrap_port), make_bootstrap_handler(bootstrap_port, log, port)
        )
        threading.Thread(target=boot.serve_forever, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(role, port, log))
    print(f"{role} engine listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
