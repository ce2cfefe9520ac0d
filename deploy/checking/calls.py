"""The requests `check` sends: one per check kind, in the flavor's dialect for instant/thinking mode.

    >>> mode_body("moonshot", False)
    {'thinking': {'type': 'disabled'}}

Base models (the demo) declare ``modes.few_shot`` in the catalog: their requests carry a short history of
earlier turns in the shape asked for, and the template's turn end as a stop string. Chat calls use the
official ``openai`` client, with engine-specific fields in ``extra_body``.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import requests

from deploy.checking import bounded, providers
from deploy.checking.meter import send
from deploy.checking.target import CheckTarget
from deploy.secrets import redact

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


#: the questions the probes cycle through (`check --samples N` asks the first N); none is in the few-shot
#: history, so a base model cannot copy an earlier answer
QUESTIONS = (
    "What is the capital of France?",
    "What is the capital of Japan?",
    "What is the capital of Spain?",
    "What is the capital of Canada?",
    "What is the capital of Egypt?",
)
CITIES = ("Berlin", "Madrid", "Oslo", "Cairo", "Lima")


def mode_body(flavor: str, thinking: bool) -> dict[str, Any]:
    """The extra body that selects instant or thinking mode in this flavor's dialect.

    >>> mode_body("moonshot", False)
    {'thinking': {'type': 'disabled'}}
    >>> mode_body("vllm", False)
    {'chat_template_kwargs': {'thinking': False}}
    >>> mode_body("nim", False)
    {'chat_template_kwargs': {'thinking': False}}
    """
    return providers.mode_body(flavor, thinking)


def few_shot_chat(with_reasoning: bool) -> list[dict[str, Any]]:
    """Two earlier question/answer turns, so a base model sees the shape it is asked to continue."""
    turns = [("What is 2 + 3?", "Two plus three is five.", "5"), ("Capital of Italy?", "It is Rome.", "Rome")]
    messages: list[dict[str, Any]] = []
    for question, thought, answer in turns:
        messages.append({"role": "user", "content": question})
        turn: dict[str, Any] = {"role": "assistant", "content": answer}
        if with_reasoning:
            turn["reasoning_content"] = thought
        messages.append(turn)
    return messages


def few_shot_tools() -> list[dict[str, Any]]:
    """Two earlier user -> assistant tool call -> tool result -> assistant answer turns."""
    messages: list[dict[str, Any]] = []
    for i, (city, temp) in enumerate((("Paris", 18), ("Tokyo", 22))):
        call_id = f"functions.get_weather:{i}"
        messages += [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temperature_c": temp})},
            {"role": "assistant", "content": f"It is {temp} C in {city}."},
        ]
    return messages


def client(target: CheckTarget) -> Any:
    from openai import OpenAI

    # No retries in the client: deploy.checking.meter.send retries (429 with Retry-After, one dropped
    # connection) and counts every attempt against the run's request budget.
    # deploy.checking.bounded: an overall deadline and a size cap per request, not only a per-read timeout
    return OpenAI(
        base_url=target.api_base,
        api_key=target.api_key or "EMPTY",
        timeout=target.timeout_s,
        max_retries=0,
        http_client=bounded.http_client(target.timeout_s),
    )


def create(target: CheckTarget, req: dict[str, Any]) -> Any:
    """Send one chat request within the target's meter (budget, concurrency, 429s); returns the client's
    answer (a ChatCompletion, or a Stream of chunks). Hosted APIs are asked for usage in streams too."""
    req = dict(req)
    if req.get("stream") and target.hosted:
        req["stream_options"] = {**(req.get("stream_options") or {}), "include_usage": True}
    return send(target.meter, lambda: client(target).chat.completions.create(**req))


def complete(target: CheckTarget, req: dict[str, Any]) -> dict[str, Any]:
    """One non-streamed chat request as a plain dict; its token usage is counted."""
    payload = create(target, req).model_dump()
    target.meter.add_usage(payload)
    return payload


def _sampling(target: CheckTarget, thinking: bool) -> dict[str, Any]:
    s = dict(target.sampling.get("thinking" if thinking else "instant") or {})
    out: dict[str, Any] = {}
    if "temperature" in s:
        out["temperature"] = float(s["temperature"])
    if "top_p" in s:
        out["top_p"] = float(s["top_p"])
    if target.stop:
        out["stop"] = list(target.stop)
    return out


def chat_request(target: CheckTarget, kind: str, sample: int = 0) -> dict[str, Any]:
    """The keyword arguments of ``client.chat.completions.create`` for one check (``instant``,
    ``thinking``, ``tool``, ``stream``, ``vision``); unknown fields travel in ``extra_body``. ``sample``
    picks the question (:data:`QUESTIONS`, :data:`CITIES`, cycling)."""
    thinking = kind == "thinking"
    req: dict[str, Any] = {"model": target.model, **_sampling(target, thinking)}
    req["max_tokens"] = target.thinking_max_tokens if thinking else target.max_tokens
    if kind == "tool":
        history = few_shot_tools() if target.few_shot else []
        city = CITIES[sample % len(CITIES)]
        req["messages"] = history + [{"role": "user", "content": f"What is the weather in {city}?"}]
        req["tools"] = [WEATHER_TOOL]
        req["tool_choice"] = "auto"
        # Kimi answers tool calls in instant mode without spending the budget on thinking first.
        req["extra_body"] = mode_body(target.flavor, False)
        return req
    if kind == "vision":
        req["messages"] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What colour is this image? Answer with one word."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + solid_png_b64()}},
                ],
            }
        ]
        req["extra_body"] = mode_body(target.flavor, False)
        return req
    history = few_shot_chat(with_reasoning=thinking) if target.few_shot else []
    req["messages"] = history + [{"role": "user", "content": QUESTIONS[sample % len(QUESTIONS)]}]
    req["extra_body"] = mode_body(target.flavor, thinking)
    if kind == "stream":
        req["stream"] = True
    return req


def solid_png_b64(width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (220, 20, 20)) -> str:
    """A tiny solid-colour PNG built with zlib and struct (no imaging library)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


def error_reason(exc: BaseException, target: CheckTarget | None = None) -> str:
    """One line for a failed request; the target's key is redacted from any echoed response."""
    reason = _error_reason(exc, target)
    return redact(reason, [target.api_key] if target is not None else [])


def _error_reason(exc: BaseException, target: CheckTarget | None) -> str:
    import openai

    from deploy.errors import KimiDeployError

    if isinstance(exc, KimiDeployError):
        return str(exc)
    if isinstance(exc, openai.APIStatusError):
        body = exc.response.text[:160].replace("\n", " ") if exc.response is not None else ""
        return f"HTTP {exc.status_code}{status_hint(exc.status_code, target)}: {body}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed ({exc.__cause__ or exc})"
    if isinstance(exc, requests.RequestException):
        return f"{exc.__class__.__name__}: {exc}"
    return f"{exc.__class__.__name__}: {exc}"


def status_hint(status: int, target: CheckTarget | None) -> str:
    """What an HTTP status means for a check: a refused key, a model the provider does not serve."""
    if status in (401, 403):
        where = f" in ${target.api_key_env}" if target is not None and target.api_key_env else ""
        given = "" if target is None or target.api_key else " (no key was sent: --api-key-env)"
        return f" (the API key{where} was refused{given})"
    if status == 404 and target is not None and target.hosted:
        return f" (model {target.model!r} or route not found{providers.id_hint(target.flavor, target.model)})"
    if status == 429:
        return " (rate limited)"
    return ""


def headers(target: CheckTarget) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
