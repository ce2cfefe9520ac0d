"""A PROVIDER-MIMIC TEST SERVER: a loopback stand-in for a hosted Kimi API (NIM, Moonshot, Oxen.ai, generic).

The hosted APIs cannot be reached from CI, so the tests run `check` against this real HTTP server, which
keeps to each provider's published shape (deploy/checking/providers.py says where each fact comes from):
its API base path (``/v1``; Oxen.ai ``/api/ai``), no ``/health``, a bearer key on every route (401 without
the right one), its model id, its instant-mode dialect (Moonshot reads ``thinking: {type: disabled}`` and
ignores ``chat_template_kwargs``; the others the reverse), its reasoning field, and Moonshot's fixed
sampling (a temperature or top_p other than the card's is refused with 400 - our strict reading of the
platform's "cannot be modified"). It is not a model: answers are canned, and whether it calls a tool is
a rule on the last user message (``--call-when``), so a test can design which samples trigger tool calls.
Every answer bills a flat ``PROMPT_TOKENS`` + ``COMPLETION_TOKENS`` so token counts can be checked.

    KEY=sk-... python -m deploy.fakes.providerserver --provider oxen --model moonshotai-kimi-k2-5 \\
        --key-env KEY --call-when weather,time --port 0
    # prints: PROVIDER-MIMIC TEST SERVER (oxen) listening on http://127.0.0.1:PORT/api/ai

The key is read from the environment variable named by ``--key-env`` (never from argv) and never logged.

FAULT INJECTION (options that make it misbehave on purpose, each labelled so in ``--help``):
``--echo-key`` (a 401 body quotes the key it was given, to prove `check` redacts it),
``--rate-limit-first N`` / ``--rate-limit-models N`` (the first N chat requests / model listings get 429
with ``Retry-After``),
``--bad-args-when WORD`` (tool arguments that break the schema when the message has WORD).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from deploy.checking import providers

BANNER = "PROVIDER-MIMIC TEST SERVER"
PROVIDERS = providers.PROVIDER_FLAVORS
#: the API base path each provider publishes
BASE_PATH = {"nim": "/v1", "moonshot": "/v1", "oxen": "/api/ai", "openai": "/v1"}
#: other models each provider lists next to Kimi (so a wrong id meets a realistic list)
OTHER_MODELS = {
    "nim": [
        "meta/llama-3.3-70b-instruct",
        "nvidia/nemotron-3-ultra-550b-a55b",
        "moonshotai/kimi-k2-thinking",
    ],
    "moonshot": ["kimi-k2-thinking", "kimi-k2-0905-preview", "moonshot-v1-8k"],
    "oxen": ["claude-sonnet-4-6", "gemini-3-1-flash-lite-preview", "moonshotai-kimi-k2-thinking"],
    "openai": ["gpt-4o-mini"],
}
#: Kimi-K2.5's card sampling, which Moonshot's platform fixes (platform.kimi.ai models-overview)
FIXED_SAMPLING = {True: {"temperature": 1.0, "top_p": 0.95}, False: {"temperature": 0.6, "top_p": 0.95}}
PROMPT_TOKENS = 11
COMPLETION_TOKENS = 7


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """Schema-valid arguments: each required property gets a value of its type (city: a city in the text)."""
    args: dict[str, Any] = {}
    props = schema.get("properties") or {}
    for name in schema.get("required") or []:
        spec = props.get(name) or {}
        if spec.get("enum"):
            args[name] = spec["enum"][0]
        elif spec.get("type") in ("integer", "number"):
            args[name] = 1
        elif spec.get("type") == "boolean":
            args[name] = True
        elif name == "city":
            words = [w.strip("?.!,") for w in text.split()]
            after_in = [words[i + 1] for i, w in enumerate(words[:-1]) if w.lower() == "in"]
            args[name] = after_in[-1] if after_in else "Paris"
        else:
            args[name] = "example"
    return args


class Handler(BaseHTTPRequestHandler):
    server: MimicServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        # method, path and status only: never headers (the Authorization header carries the key)
        sys.stderr.write(f"[{BANNER.lower()}] {self.command} {self.path.split('?', 1)[0]} {args[1]}\n")

    def _json(self, status: int, data: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str, extra: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, extra)

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization", "")
        token = given[len("Bearer ") :] if given.startswith("Bearer ") else ""
        if token and token == self.server.key:
            return True
        message = "Invalid Authentication"
        if self.server.echo_key and token:
            message = f"Incorrect API key provided: {token}"  # FAULT INJECTION: the key echoed back
        self._error(401, message, "invalid_authentication_error")
        return False

    def _route(self) -> str | None:
        path = self.path.split("?", 1)[0]
        base = BASE_PATH[self.server.provider]
        if not path.startswith(base + "/"):
            self._error(404, f"no route {path}", "not_found_error")
            return None
        return path[len(base) :]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        route = self._route()
        if route is None or not self._authorised():
            return
        if route == "/models":
            srv = self.server
            with srv.lock:
                srv.model_listings += 1
                limited = srv.model_listings <= srv.rate_limit_models
            if limited:  # FAULT INJECTION: the model list rate limited too
                return self._error(
                    429, "rate limit reached", "rate_limit_reached_error", {"Retry-After": srv.retry_after}
                )
            ids = [self.server.model, *OTHER_MODELS[self.server.provider]]
            data = [{"id": i, "object": "model", "owned_by": i.split("/")[0]} for i in ids]
            return self._json(200, {"object": "list", "data": data})
        self._error(404, f"no route {route}", "not_found_error")

    def do_POST(self) -> None:  # noqa: N802
        route = self._route()
        if route is None or not self._authorised():
            return
        if route != "/chat/completions":
            return self._error(404, f"no route {route}", "not_found_error")
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        except json.JSONDecodeError:
            return self._error(400, "body is not JSON", "invalid_request_error")
        srv = self.server
        with srv.lock:
            srv.chat_requests += 1
            limited = srv.chat_requests <= srv.rate_limit_first
        if limited:  # FAULT INJECTION: rate limited, come back after Retry-After seconds
            return self._error(
                429, "rate limit reached", "rate_limit_reached_error", {"Retry-After": srv.retry_after}
            )
        if body.get("model") != srv.model:
            return self._error(404, f"model {body.get('model')!r} not found", "resource_not_found_error")
        thinking = self._thinking(body)
        if srv.provider == "moonshot":
            for key, value in FIXED_SAMPLING[thinking].items():
                if key in body and abs(float(body[key]) - value) > 1e-9:
                    return self._error(
                        400, f"invalid {key} {body[key]}: only {value} is allowed", "invalid_request_error"
                    )
        message, finish = self._answer(body, thinking)
        if body.get("stream"):
            return self._stream(body, message, finish)
        self._json(
            200,
            {
                "id": f"chatcmpl-{srv.chat_requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": srv.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": self._usage(),
            },
        )

    def _thinking(self, body: dict[str, Any]) -> bool:
        # each provider reads only its own dialect; the other one is ignored, as an unknown field would be
        if self.server.provider == "moonshot":
            obj = body.get("thinking")
            return not (isinstance(obj, dict) and obj.get("type") == "disabled")
        kwargs = body.get("chat_template_kwargs")
        return not (isinstance(kwargs, dict) and kwargs.get("thinking") is False)

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        }

    def _answer(self, body: dict[str, Any], thinking: bool) -> tuple[dict[str, Any], str]:
        srv = self.server
        messages = body.get("messages") or []
        text = _last_user_text(messages)
        lowered = text.lower()
        message: dict[str, Any] = {"role": "assistant", "content": "Paris."}
        if thinking:
            message[srv.reasoning_field] = "The user asks a short question; answer it directly."
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        word = next((w for w in srv.call_when if w == "*" or w in lowered), None)
        if not tools or body.get("tool_choice") == "none" or word is None:
            return message, "stop"
        fns = [t.get("function") or {} for t in tools]
        fn = next((f for f in fns if word != "*" and word in str(f.get("name", "")).lower()), fns[0])
        args = _arguments(fn.get("parameters") or {}, text)
        if srv.bad_args_when and srv.bad_args_when in lowered:
            args = {"unexpected": True}  # FAULT INJECTION: arguments that break the tool's schema
        earlier = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
        message["content"] = ""
        message["tool_calls"] = [
            {
                "id": f"functions.{fn.get('name')}:{earlier}",
                "type": "function",
                "function": {"name": fn.get("name"), "arguments": json.dumps(args)},
            }
        ]
        return message, "tool_calls"

    def _stream(self, body: dict[str, Any], message: dict[str, Any], finish: str) -> None:
        srv = self.server
        base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 0, "model": srv.model}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if message.get(srv.reasoning_field):
            deltas.append({srv.reasoning_field: message[srv.reasoning_field]})
        for call in message.get("tool_calls") or []:
            deltas.append({"tool_calls": [{"index": 0, **call}]})
        if message.get("content"):
            deltas += [{"content": "Par"}, {"content": "is."}]
        chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": self._usage()})
        data = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class MimicServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], provider: str, model: str, key: str, **opts: Any) -> None:
        super().__init__(address, Handler)
        self.provider, self.model, self.key = provider, model, key
        self.reasoning_field = (
            opts.get("reasoning_field") or providers.flavor(provider).reasoning_field or "reasoning_content"
        )
        self.call_when: list[str] = opts.get("call_when") or []
        self.bad_args_when: str = opts.get("bad_args_when") or ""
        self.echo_key: bool = bool(opts.get("echo_key"))
        self.rate_limit_first: int = int(opts.get("rate_limit_first") or 0)
        self.retry_after: str = str(opts.get("retry_after") or "1")
        self.rate_limit_models: int = int(opts.get("rate_limit_models") or 0)
        self.chat_requests = 0
        self.model_listings = 0
        self.lock = threading.Lock()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m deploy.fakes.providerserver", description=f"{BANNER}: see the module doc."
    )
    ap.add_argument("--provider", choices=PROVIDERS, required=True)
    ap.add_argument("--model", required=True, help="the model id this provider serves Kimi under")
    ap.add_argument("--key-env", required=True, help="environment variable holding the accepted key")
    ap.add_argument(
        "--call-when",
        default="",
        help="comma-separated words: a tool is called when the last user message has one ('*': always; "
        "empty: never)",
    )
    ap.add_argument(
        "--reasoning-field",
        choices=("reasoning_content", "reasoning"),
        help="the field reasoning comes back in (default: the one the provider documents)",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    ap.add_argument("--echo-key", action="store_true", help="FAULT INJECTION: 401 bodies quote the key given")
    ap.add_argument(
        "--rate-limit-first", type=int, default=0, help="FAULT INJECTION: 429 for the first N chat requests"
    )
    ap.add_argument(
        "--rate-limit-models", type=int, default=0, help="FAULT INJECTION: 429 for the first N GET /models"
    )
    ap.add_argument("--retry-after", default="1", help="the Retry-After value sent with those 429s")
    ap.add_argument("--bad-args-when", default="", help="FAULT INJECTION: schema-breaking arguments on WORD")
    args = ap.parse_args(argv)
    key = os.environ.get(args.key_env) or ""
    if not key:
        ap.error(f"--key-env {args.key_env}: that environment variable is unset or empty")
    server = MimicServer(
        (args.host, args.port),
        args.provider,
        args.model,
        key,
        call_when=[w.strip().lower() for w in args.call_when.split(",") if w.strip()],
        bad_args_when=args.bad_args_when.lower(),
        echo_key=args.echo_key,
        rate_limit_first=args.rate_limit_first,
        rate_limit_models=args.rate_limit_models,
        retry_after=args.retry_after,
        reasoning_field=args.reasoning_field,
    )
    host, port = server.server_address[:2]
    base = BASE_PATH[args.provider]
    print(f"{BANNER} ({args.provider}) listening on http://{host}:{port}{base}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
