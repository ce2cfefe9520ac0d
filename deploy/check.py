"""The conformance suite: does a served model answer the way a client of Kimi-K2.5 expects?

    >>> from deploy.check import target_from_url, run_checks
    >>> target = target_from_url("http://127.0.0.1:8001", "demo", flavor="llama.cpp")  # doctest: +SKIP
    >>> report = run_checks(target)  # doctest: +SKIP
    >>> report.ok, [(r.name, r.status) for r in report.results]  # doctest: +SKIP
    (True, [('liveness', 'pass'), ('models', 'pass'), ...])

Each check passes, fails, or is skipped; a skip comes only from what the model or plan declares (catalog
capabilities, the plan's engine arguments), never from an error. Chat calls go through the official
``openai`` client, as users' code does; the small endpoint probes (/health, /v1/models, /metrics) use
``requests``. The pure ``validate_*`` functions take response payloads as plain dicts, so the Kimi shapes
of vLLM and SGLang are checked on recorded payloads as well as on live answers.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import requests

from deploy import constants
from deploy.errors import CatalogError, InputError
from deploy.plan import Plan

PASS, FAIL, SKIP = "pass", "fail", "skip"
FLAVORS = ("vllm", "sglang", "llama.cpp", "ktransformers", "moonshot")

#: Raw tool-call markers that must never reach ``content``: Kimi's own, and the Hermes-style tags.
KIMI_TOOL_MARKERS = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)
HERMES_TOOL_MARKERS = ("<tool_call>", "</tool_call>")
THINK_TAGS = ("<think>", "</think>")
#: Kimi's tool-call id: ``functions.<name>:<n>``, n counting calls across the conversation.
KIMI_TOOL_ID = re.compile(r"^functions\.(?P<name>[A-Za-z0-9_.\-]+):(?P<index>\d+)$")
ID_RULE_KIMI = "kimi"
ID_RULE_GENERIC = "generic"

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


@dataclass
class CheckResult:
    """One check's verdict. ``details`` holds measured values (latency, chunk count, ids seen)."""

    name: str
    status: str
    reason: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    """What to check and how to talk to it. ``api_key`` is never printed or written to a report."""

    base_url: str  # the server root, e.g. http://127.0.0.1:8001 (the OpenAI API is under /v1)
    model: str  # the served model name
    flavor: str  # vllm | sglang | llama.cpp | ktransformers | moonshot
    capabilities: dict[str, bool]
    id_rule: str = ID_RULE_GENERIC
    id_rule_source: str = ""
    api_base: str = ""
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    max_model_len: int | None = None
    metrics: bool = False
    metrics_source: str = ""
    vision: bool = False
    vision_source: str = ""
    few_shot: bool = False
    stop: list[str] = field(default_factory=list)
    sampling: dict[str, dict[str, float]] = field(default_factory=dict)
    capabilities_source: str = ""
    timeout_s: float = 120.0
    max_tokens: int = 64
    thinking_max_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise InputError(f"unknown flavor {self.flavor!r} (known: {', '.join(FLAVORS)})")
        self.base_url = self.base_url.rstrip("/")
        if not self.api_base:
            self.api_base = f"{self.base_url}/v1"

    def describe(self) -> dict[str, Any]:
        """The target as the report shows it: everything except the key itself."""
        d = asdict(self)
        d.pop("api_key")
        d["api_key_set"] = self.api_key is not None
        return d


@dataclass
class CheckReport:
    target: dict[str, Any]
    results: list[CheckResult]
    tool_call_set: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when no check failed (skips are declared, so they do not count against)."""
        return all(r.status != FAIL for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def to_dict(self) -> dict[str, Any]:
        counts = Counter(r.status for r in self.results)
        return {
            "ok": self.ok,
            "summary": {s: counts.get(s, 0) for s in (PASS, FAIL, SKIP)},
            "target": self.target,
            "results": [asdict(r) for r in self.results],
            "tool_call_set": self.tool_call_set,
        }


# --------------------------------------------------------------------------------------------------
# Building a target from a plan or from a URL


def _normalise_url(url: str) -> tuple[str, str]:
    """Split a user URL into (server root, OpenAI API base); both ``http://h:p`` and ``.../v1`` work."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://", url):
        raise InputError(f"--url {url!r}: expected http:// or https://")
    if url.endswith("/v1"):
        return url[: -len("/v1")], url
    return url, f"{url}/v1"


def _id_rule(parsers: dict[str, Any], source: str) -> tuple[str, str]:
    if (parsers or {}).get("tool_call") == "kimi_k2":
        return ID_RULE_KIMI, f"{source}: tool-call parser kimi_k2 -> ids functions.<name>:<n>"
    return ID_RULE_GENERIC, f"{source}: tool-call parser {parsers.get('tool_call')!r} -> any unique id"


def _read_key(api_key_env: str | None) -> str | None:
    import os

    if not api_key_env:
        return None
    value = os.environ.get(api_key_env)
    return value if value else None


def _modes_request_profile(modes: dict[str, Any]) -> tuple[bool, list[str]]:
    # A base model (the demo) answers in shape only after a few examples, and its turn end is plain text
    # in the chat template, so the catalog says so in `modes` and every check request carries both.
    return bool(modes.get("few_shot", False)), [str(s) for s in modes.get("stop") or []]


def target_from_plan(plan: Plan, api_key_env: str | None = None, timeout_s: float = 120.0) -> Target:
    """The target a plan deploys: its engine, bind address, served name, context and declared features.

    >>> target_from_plan(load_plan("plan.json")).flavor  # doctest: +SKIP
    'llama.cpp'
    """
    cand = plan.chosen_candidate
    args = cand.engine_args
    host = str(args.get("host") or "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = args.get("port")
    if not port:
        raise InputError("plan.json: the chosen candidate's engine_args has no port")
    model = plan.model
    caps = {k: bool(v) for k, v in (model.get("capabilities") or {}).items()}
    id_rule, id_source = _id_rule(model.get("parsers") or {}, "plan.model.parsers")
    key_env = api_key_env or args.get("api_key_env")
    metrics = cand.engine == "vllm" or bool(args.get("metrics")) or bool(args.get("enable_metrics"))
    metrics_src = (
        "vLLM always serves /metrics"
        if cand.engine == "vllm"
        else ("plan engine_args enables metrics" if metrics else "plan engine_args does not enable metrics")
    )
    vision, vision_src = _plan_vision(plan, caps)
    few_shot, stop = _modes_request_profile(model.get("modes") or {})
    return Target(
        base_url=f"http://{host}:{port}",
        model=str(args.get("served_model_name") or model.get("served_model_name") or model.get("name")),
        flavor=cand.engine,
        capabilities=caps,
        capabilities_source="plan.model.capabilities",
        id_rule=id_rule,
        id_rule_source=id_source,
        api_key=_read_key(key_env),
        api_key_env=key_env,
        max_model_len=int(cand.max_model_len) if cand.max_model_len else None,
        metrics=metrics,
        metrics_source=metrics_src,
        vision=vision,
        vision_source=vision_src,
        few_shot=few_shot,
        stop=stop,
        sampling=dict((model.get("modes") or {}).get("sampling") or {}),
        timeout_s=timeout_s,
    )


def _plan_vision(plan: Plan, caps: dict[str, bool]) -> tuple[bool, str]:
    if not caps.get("vision"):
        return False, "the model declares no vision"
    cand = plan.chosen_candidate
    if cand.engine_args.get("language_model_only"):
        return False, "the plan serves the language model only (language_model_only)"
    try:
        from deploy.catalog import load_model

        serves = load_model(str(plan.model.get("name"))).variant(cand.variant).serves_vision
    except CatalogError:
        serves = cand.engine != "llama.cpp"
        return serves, f"catalog entry not found; {cand.engine} {'serves' if serves else 'lacks'} vision"
    if not serves:
        return False, f"variant {cand.variant} has no vision tower"
    return True, f"the plan serves vision ({cand.variant})"


def _catalog_entry(model_name: str, catalog_model: str | None) -> tuple[Any, str]:
    from deploy.catalog import available_models, load_model

    if catalog_model:
        return load_model(catalog_model), f"catalog entry {catalog_model!r} (--catalog-model)"
    wanted = {model_name.lower(), model_name.lower().rsplit("/", 1)[-1]}
    for name in available_models():
        entry = load_model(name)
        if {entry.name.lower(), entry.served_model_name.lower()} & wanted:
            return entry, f"catalog entry {entry.name!r} (matches the served name)"
    return load_model(constants.DEFAULT_MODEL), (
        f"catalog entry {constants.DEFAULT_MODEL!r} (default: no entry matches {model_name!r})"
    )


def target_from_url(
    url: str,
    model: str,
    flavor: str = "vllm",
    api_key_env: str | None = None,
    catalog_model: str | None = None,
    few_shot: bool | None = None,
    metrics: bool | None = None,
    vision: bool | None = None,
    max_model_len: int | None = None,
    timeout_s: float = 120.0,
) -> Target:
    """A target at any OpenAI-compatible URL (self-hosted or hosted); capabilities come from the catalog.

    >>> target_from_url("https://api.moonshot.ai/v1", "kimi-k2.5", flavor="moonshot").api_base
    'https://api.moonshot.ai/v1'
    """
    if flavor not in FLAVORS:
        raise InputError(f"unknown flavor {flavor!r} (known: {', '.join(FLAVORS)})")
    root, api_base = _normalise_url(url)
    entry, source = _catalog_entry(model, catalog_model)
    caps = {k: bool(v) for k, v in entry.capabilities.items()}
    id_rule, id_source = _id_rule(entry.parsers, source)
    catalog_few_shot, stop = _modes_request_profile(entry.modes)
    if metrics is None:
        metrics = flavor == "vllm"
        metrics_src = "vLLM always serves /metrics" if metrics else f"not declared for {flavor} (--metrics)"
    else:
        metrics_src = "--metrics" if metrics else "--no-metrics"
    if vision is None:
        vision = bool(caps.get("vision"))
        vision_src = f"{source} declares vision" if vision else f"no vision declared ({source})"
    else:
        vision_src = "--vision" if vision else "--no-vision"
        vision = vision and bool(caps.get("vision"))
    return Target(
        base_url=root,
        api_base=api_base,
        model=model,
        flavor=flavor,
        capabilities=caps,
        capabilities_source=source,
        id_rule=id_rule,
        id_rule_source=id_source,
        api_key=_read_key(api_key_env),
        api_key_env=api_key_env,
        max_model_len=max_model_len,
        metrics=metrics,
        metrics_source=metrics_src,
        vision=vision,
        vision_source=vision_src,
        few_shot=catalog_few_shot if few_shot is None else few_shot,
        stop=stop,
        sampling=dict(entry.modes.get("sampling") or {}),
        timeout_s=timeout_s,
    )


# --------------------------------------------------------------------------------------------------
# Pure validators on response payloads (plain dicts, as the engines return them)


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning of a message or delta: SGLang/llama.cpp/Moonshot say ``reasoning_content``, vLLM
    ``reasoning``."""
    return str(message.get("reasoning_content") or message.get("reasoning") or "")


def _first_message(payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    choices = payload.get("choices") or []
    if not choices:
        raise ValueError("the response has no choices")
    return choices[0].get("message") or {}, choices[0].get("finish_reason")


def validate_instant(payload: dict[str, Any]) -> tuple[bool, str]:
    """Instant mode: an answer in ``content``, no reasoning, no think tags.

    >>> validate_instant({"choices": [{"message": {"content": "Paris"}, "finish_reason": "stop"}]})
    (True, 'content answered, no reasoning')
    """
    msg, _ = _first_message(payload)
    content = str(msg.get("content") or "")
    if "</think>" in content:
        return False, "literal </think> in content: thinking text leaks (reasoning parser or template)"
    if "<think>" in content:
        return False, "literal <think> in content: instant mode was ignored"
    if reasoning_text(msg).strip():
        return False, "reasoning returned although thinking was disabled"
    if not content.strip():
        return False, "empty content"
    return True, "content answered, no reasoning"


def validate_thinking(payload: dict[str, Any]) -> tuple[bool, str]:
    """Thinking mode: reasoning in ``reasoning_content`` or ``reasoning``, and a separate answer."""
    msg, finish = _first_message(payload)
    content = str(msg.get("content") or "")
    reasoning = reasoning_text(msg)
    if "</think>" in content:
        return False, "literal </think> in content: thinking leaks into content (no reasoning parser)"
    if not reasoning.strip():
        return False, "no reasoning_content/reasoning in the message"
    if any(tag in reasoning for tag in THINK_TAGS):
        return False, "think tags inside the reasoning text: the parser did not strip them"
    if not content.strip():
        why = f" (finish_reason {finish}: the budget ran out while thinking)" if finish == "length" else ""
        return False, f"reasoning but no separate answer in content{why}"
    field_name = "reasoning_content" if msg.get("reasoning_content") else "reasoning"
    return True, f"reasoning in {field_name} ({len(reasoning)} chars) and a separate answer"


def tool_schema(tools: Iterable[dict[str, Any]], name: str) -> dict[str, Any] | None:
    for t in tools:
        fn = t.get("function", t)
        if fn.get("name") == name:
            return fn.get("parameters") or {"type": "object"}
    return None


def validate_arguments(arguments: Any, schema: dict[str, Any]) -> str | None:
    """None when the arguments are a JSON object valid against the schema, else why not."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return f"arguments are not valid JSON ({exc.msg} at char {exc.pos})"
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        cls(schema).validate(arguments)
    except jsonschema.SchemaError as exc:
        return f"the tool's schema is invalid: {exc.message}"
    except jsonschema.ValidationError as exc:
        return f"arguments do not match the schema: {exc.message}"
    return None


def validate_tool_id(call_id: Any, name: str, rule: str) -> str | None:
    """None when a tool-call id follows the rule (Kimi: ``functions.<name>:<n>``; generic: non-empty)."""
    if not isinstance(call_id, str) or not call_id:
        return "tool call has no id"
    if rule == ID_RULE_KIMI:
        m = KIMI_TOOL_ID.match(call_id)
        if not m:
            return f"id {call_id!r} is not functions.<name>:<n> (Kimi's format; the tool parser is wrong)"
        if m.group("name") != name:
            return f"id {call_id!r} names {m.group('name')!r} but the call is {name!r}"
    return None


def markers_in(text: str) -> list[str]:
    return [m for m in KIMI_TOOL_MARKERS + HERMES_TOOL_MARKERS if m in text]


def validate_tool_call(
    payload: dict[str, Any], tools: list[dict[str, Any]], id_rule: str, require_finish: bool = True
) -> tuple[bool, str]:
    """A tool call: finish_reason ``tool_calls``, a well-formed id, schema-valid JSON arguments, and no
    raw markers in content. Only the first call is judged (a model may repeat it)."""
    msg, finish = _first_message(payload)
    content = str(msg.get("content") or "")
    leaked = markers_in(content) + markers_in(reasoning_text(msg))
    if leaked:
        return False, f"raw tool markers in the text ({', '.join(leaked)}): tool parser missing or broken"
    calls = msg.get("tool_calls") or []
    if not calls:
        return False, f"no tool_calls (finish_reason {finish!r})"
    if require_finish and finish != "tool_calls":
        return False, f"finish_reason {finish!r}, expected 'tool_calls'"
    first = calls[0]
    fn = first.get("function") or {}
    name = fn.get("name")
    schema = tool_schema(tools, str(name))
    if schema is None:
        return False, f"called unknown tool {name!r}"
    problem = validate_tool_id(first.get("id"), str(name), id_rule) or validate_arguments(
        fn.get("arguments"), schema
    )
    if problem:
        return False, problem
    return True, f"{name}({fn.get('arguments')}) id {first.get('id')} [{id_rule} id rule]"


def assemble_stream(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Fold streamed chat.completion.chunk payloads into one chat.completion payload.

    >>> assemble_stream([{"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]}])["choices"]
    [{'index': 0, 'message': {'role': 'assistant', 'content': 'Hi'}, 'finish_reason': 'stop'}]
    """
    content: list[str] = []
    reasoning: list[str] = []
    reasoning_key = "reasoning_content"
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for key in ("reasoning_content", "reasoning"):
                if delta.get(key):
                    reasoning.append(delta[key])
                    reasoning_key = key
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    int(tc.get("index") or 0), {"id": None, "type": "function", "function": {}}
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                f = tc.get("function") or {}
                if f.get("name"):
                    slot["function"]["name"] = f["name"]
                if f.get("arguments"):
                    slot["function"]["arguments"] = slot["function"].get("arguments", "") + f["arguments"]
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if reasoning:
        message[reasoning_key] = "".join(reasoning)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


# --------------------------------------------------------------------------------------------------
# Requests


def mode_body(flavor: str, thinking: bool) -> dict[str, Any]:
    """The extra body that selects instant or thinking mode in this flavor's dialect.

    >>> mode_body("moonshot", False)
    {'thinking': {'type': 'disabled'}}
    >>> mode_body("vllm", False)
    {'chat_template_kwargs': {'thinking': False}}
    """
    if flavor == "moonshot":
        return {"thinking": {"type": "enabled" if thinking else "disabled"}}
    return {"chat_template_kwargs": {"thinking": thinking}}


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


def _client(target: Target) -> Any:
    from openai import OpenAI

    # One retry: a keep-alive connection right after a stream is occasionally dropped by llama-server.
    return OpenAI(
        base_url=target.api_base, api_key=target.api_key or "EMPTY", timeout=target.timeout_s, max_retries=1
    )


def _sampling(target: Target, thinking: bool) -> dict[str, Any]:
    s = dict(target.sampling.get("thinking" if thinking else "instant") or {})
    out: dict[str, Any] = {}
    if "temperature" in s:
        out["temperature"] = float(s["temperature"])
    if "top_p" in s:
        out["top_p"] = float(s["top_p"])
    if target.stop:
        out["stop"] = list(target.stop)
    return out


def chat_request(target: Target, kind: str) -> dict[str, Any]:
    """The keyword arguments of ``client.chat.completions.create`` for one check (``instant``,
    ``thinking``, ``tool``, ``stream``, ``vision``); unknown fields travel in ``extra_body``."""
    thinking = kind == "thinking"
    req: dict[str, Any] = {"model": target.model, **_sampling(target, thinking)}
    req["max_tokens"] = target.thinking_max_tokens if thinking else target.max_tokens
    if kind == "tool":
        history = few_shot_tools() if target.few_shot else []
        req["messages"] = history + [{"role": "user", "content": "What is the weather in Berlin?"}]
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
    req["messages"] = history + [{"role": "user", "content": "What is the capital of France?"}]
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


def _error_reason(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.response.text[:160].replace("\n", " ") if exc.response is not None else ""
        return f"HTTP {exc.status_code}: {body}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection failed ({exc.__cause__ or exc})"
    if isinstance(exc, requests.RequestException):
        return f"{exc.__class__.__name__}: {exc}"
    return f"{exc.__class__.__name__}: {exc}"


def _headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}


# --------------------------------------------------------------------------------------------------
# The checks


def _liveness_by_models(target: Target, t0: float, why: str) -> CheckResult:
    try:
        m = requests.get(f"{target.api_base}/models", headers=_headers(target), timeout=10.0)
    except requests.RequestException as exc:
        return CheckResult("liveness", FAIL, f"{why}; /v1/models: {_error_reason(exc)}", time.monotonic() - t0)
    dt = time.monotonic() - t0
    if m.status_code == 200:
        return CheckResult("liveness", PASS, f"{why}; GET /v1/models 200", dt)
    return CheckResult("liveness", FAIL, f"{why}; GET /v1/models {m.status_code}: {m.text[:160]}", dt)


def check_liveness(target: Target) -> CheckResult:
    """GET /health with the engine's semantics; hosted endpoints (no /health) are probed via /v1/models."""
    t0 = time.monotonic()
    if target.flavor == "moonshot":
        return _liveness_by_models(target, t0, "hosted API (no /health)")
    url = f"{target.base_url}/health"
    try:
        r = requests.get(url, headers=_headers(target), timeout=min(target.timeout_s, 10.0))
    except requests.ConnectionError:
        hint = " (vLLM does not answer until the model is loaded)" if target.flavor == "vllm" else ""
        return CheckResult("liveness", FAIL, f"nothing answers at {url}{hint}", time.monotonic() - t0)
    except requests.RequestException as exc:
        return CheckResult("liveness", FAIL, _error_reason(exc), time.monotonic() - t0)
    dt = time.monotonic() - t0
    if r.status_code == 200:
        return CheckResult("liveness", PASS, f"GET /health 200 ({target.flavor})", dt)
    if r.status_code == 503:
        meaning = {
            "llama.cpp": "llama-server is still loading the model",
            "sglang": "SGLang is still warming up (or its health generation failed)",
            "ktransformers": "SGLang/KTransformers is still warming up",
            "vllm": "vLLM's engine has died",
        }.get(target.flavor, "the server is not ready")
        return CheckResult("liveness", FAIL, f"GET /health 503: {meaning}", dt, {"body": r.text[:200]})
    if r.status_code in (404, 405):
        return _liveness_by_models(target, t0, f"no /health ({r.status_code})")
    return CheckResult("liveness", FAIL, f"GET /health {r.status_code}: {r.text[:160]}", dt)


def _reported_context(target: Target, entry: dict[str, Any]) -> tuple[int | None, str]:
    if isinstance(entry.get("max_model_len"), int):
        return entry["max_model_len"], "max_model_len in /v1/models"
    meta = entry.get("meta") or {}
    if isinstance(meta.get("n_ctx"), int):
        return meta["n_ctx"], "meta.n_ctx in /v1/models"
    if target.flavor == "llama.cpp":
        try:
            props = requests.get(f"{target.base_url}/props", headers=_headers(target), timeout=10.0).json()
            n_ctx = (props.get("default_generation_settings") or {}).get("n_ctx")
            if isinstance(n_ctx, int):
                return n_ctx, "default_generation_settings.n_ctx in /props"
        except (requests.RequestException, ValueError):
            pass
    return None, ""


def check_models(target: Target) -> CheckResult:
    """/v1/models lists the served name; the context it reports is at least the plan's."""
    t0 = time.monotonic()
    try:
        r = requests.get(f"{target.api_base}/models", headers=_headers(target), timeout=min(target.timeout_s, 10))
    except requests.RequestException as exc:
        return CheckResult("models", FAIL, _error_reason(exc), time.monotonic() - t0)
    dt = time.monotonic() - t0
    if r.status_code != 200:
        return CheckResult("models", FAIL, f"GET /v1/models {r.status_code}: {r.text[:160]}", dt)
    try:
        data = r.json().get("data") or []
    except ValueError:
        return CheckResult("models", FAIL, "GET /v1/models: not JSON", dt)
    ids = [str(m.get("id")) for m in data]
    entry = next((m for m in data if m.get("id") == target.model or target.model in (m.get("aliases") or [])), None)
    if entry is None:
        return CheckResult("models", FAIL, f"{target.model!r} not served (served: {', '.join(ids)})", dt)
    ctx, where = _reported_context(target, entry)
    details = {"served": ids, "reported_context": ctx}
    if ctx is None:
        return CheckResult("models", PASS, f"{target.model!r} listed; no context length reported", dt, details)
    if target.max_model_len and ctx < target.max_model_len:
        return CheckResult(
            "models", FAIL, f"{where} is {ctx}, below the plan's max_model_len {target.max_model_len}", dt, details
        )
    want = f" >= plan {target.max_model_len}" if target.max_model_len else ""
    return CheckResult("models", PASS, f"{target.model!r} listed; {where} {ctx}{want}", dt, details)


def _chat_check(
    name: str, target: Target, kind: str, validate: Callable[[dict[str, Any]], tuple[bool, str]]
) -> CheckResult:
    t0 = time.monotonic()
    req = chat_request(target, kind)
    try:
        payload = _client(target).chat.completions.create(**req).model_dump()
    except Exception as exc:  # noqa: BLE001 - any client failure is this check's verdict, not a crash
        return CheckResult(name, FAIL, _error_reason(exc), time.monotonic() - t0)
    dt = time.monotonic() - t0
    try:
        ok, why = validate(payload)
    except (ValueError, KeyError, TypeError) as exc:
        return CheckResult(name, FAIL, f"malformed response: {exc}", dt)
    msg, finish = _first_message(payload)
    details = {"finish_reason": finish, "content": str(msg.get("content") or "")[:200]}
    if reasoning_text(msg):
        details["reasoning"] = reasoning_text(msg)[:200]
    if msg.get("tool_calls"):
        details["tool_calls"] = msg["tool_calls"][:2]
    return CheckResult(name, PASS if ok else FAIL, why, dt, details)


def check_instant(target: Target) -> CheckResult:
    return _chat_check("instant", target, "instant", validate_instant)


def check_thinking(target: Target) -> CheckResult:
    if not target.capabilities.get("reasoning"):
        return CheckResult("thinking", SKIP, f"no reasoning declared ({target.capabilities_source})")
    return _chat_check("thinking", target, "thinking", validate_thinking)


def check_tool_call(target: Target) -> CheckResult:
    if not target.capabilities.get("tools"):
        return CheckResult("tool_call", SKIP, f"no tool use declared ({target.capabilities_source})")
    return _chat_check(
        "tool_call", target, "tool", lambda p: validate_tool_call(p, [WEATHER_TOOL], target.id_rule)
    )


def check_streaming(target: Target) -> CheckResult:
    """SSE chunks arrive; time to first token is recorded; the folded answer passes the instant rules."""
    t0 = time.monotonic()
    ttft = None
    chunks: list[dict[str, Any]] = []
    try:
        for event in _client(target).chat.completions.create(**chat_request(target, "stream")):
            chunk = event.model_dump()
            chunks.append(chunk)
            if ttft is None:
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content") or reasoning_text(delta) or delta.get("tool_calls"):
                        ttft = time.monotonic() - t0
    except Exception as exc:  # noqa: BLE001
        return CheckResult("streaming", FAIL, _error_reason(exc), time.monotonic() - t0, {"chunks": len(chunks)})
    dt = time.monotonic() - t0
    details = {"chunks": len(chunks), "ttft_s": round(ttft, 3) if ttft is not None else None}
    if not chunks:
        return CheckResult("streaming", FAIL, "no SSE chunks", dt, details)
    if ttft is None:
        return CheckResult("streaming", FAIL, f"{len(chunks)} chunks but no token in any delta", dt, details)
    ok, why = validate_instant(assemble_stream(chunks))
    if not ok:
        return CheckResult("streaming", FAIL, f"streamed answer: {why}", dt, details)
    return CheckResult("streaming", PASS, f"{len(chunks)} chunks, first token after {ttft:.2f} s", dt, details)


def check_vision(target: Target) -> CheckResult:
    if not target.vision:
        return CheckResult("vision", SKIP, target.vision_source or "vision not served")
    return _chat_check("vision", target, "vision", validate_instant)


_METRIC_LINE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?\s+\S+")


def check_metrics(target: Target) -> CheckResult:
    if not target.metrics:
        return CheckResult("metrics", SKIP, target.metrics_source or "metrics not enabled")
    t0 = time.monotonic()
    try:
        r = requests.get(f"{target.base_url}/metrics", headers=_headers(target), timeout=10.0)
    except requests.RequestException as exc:
        return CheckResult("metrics", FAIL, _error_reason(exc), time.monotonic() - t0)
    dt = time.monotonic() - t0
    if r.status_code != 200:
        return CheckResult("metrics", FAIL, f"GET /metrics {r.status_code} ({target.metrics_source})", dt)
    samples = [line for line in r.text.splitlines() if _METRIC_LINE.match(line)]
    if not samples:
        return CheckResult("metrics", FAIL, "GET /metrics 200 but no Prometheus samples", dt)
    return CheckResult("metrics", PASS, f"{len(samples)} Prometheus samples", dt, {"samples": len(samples)})


CHECKS: list[tuple[str, Callable[[Target], CheckResult]]] = [
    ("liveness", check_liveness),
    ("models", check_models),
    ("instant", check_instant),
    ("thinking", check_thinking),
    ("tool_call", check_tool_call),
    ("streaming", check_streaming),
    ("vision", check_vision),
    ("metrics", check_metrics),
]


def run_checks(target: Target, only: Iterable[str] | None = None) -> CheckReport:
    """Run the suite in order; when the server is not live the rest fail as not run (not skipped)."""
    wanted = set(only) if only else None
    results: list[CheckResult] = []
    live = True
    for name, fn in CHECKS:
        if wanted is not None and name not in wanted and name != "liveness":
            continue
        if not live:
            results.append(CheckResult(name, FAIL, "not run: the server is not live"))
            continue
        result = fn(target)
        results.append(result)
        if name == "liveness" and result.status == FAIL:
            live = False
    return CheckReport(target=target.describe(), results=results)


# --------------------------------------------------------------------------------------------------
# K2-Vendor-Verifier sample sets


_CREATE_ARGS = {
    "messages", "model", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "max_completion_tokens",
    "n", "parallel_tool_calls", "presence_penalty", "response_format", "seed", "stop", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user",
}


def load_tool_call_requests(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read a K2-Vendor-Verifier JSONL file: one chat request body per line (``_input`` is a system turn)."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise InputError(f"{p}: tool-call sample file not found") from None
    requests_: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise InputError(f"{p}:{n}: expected a request body with a 'messages' list")
        for m in body["messages"]:
            if m.get("role") == "_input":
                m["role"] = "system"
        requests_.append(body)
        if limit is not None and len(requests_) >= limit:
            break
    if not requests_:
        raise InputError(f"{p}: no requests")
    return requests_


def _one_sample(target: Target, body: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    req = {k: v for k, v in body.items() if k in _CREATE_ARGS}
    extra = {k: v for k, v in body.items() if k not in _CREATE_ARGS}
    req["model"] = target.model
    req.setdefault("max_tokens", max_tokens)
    if extra:
        req["extra_body"] = extra
    try:
        result = _client(target).chat.completions.create(**req)
        if req.get("stream"):
            payload = assemble_stream(event.model_dump() for event in result)
        else:
            payload = result.model_dump()
        msg, finish = _first_message(payload)
    except Exception as exc:  # noqa: BLE001
        return {"status": "failed", "error": _error_reason(exc), "finish_reason": None}
    out: dict[str, Any] = {"status": "success", "finish_reason": finish}
    if finish == "tool_calls":
        problems = []
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {}
            schema = tool_schema(body.get("tools") or [], str(fn.get("name")))
            problem = (
                f"unknown tool {fn.get('name')!r}" if schema is None else validate_arguments(fn.get("arguments"), schema)
            )
            if problem:
                problems.append(problem)
        out["valid"] = bool(msg.get("tool_calls")) and not problems
        out["problems"] = problems
    return out


def run_tool_call_set(
    target: Target,
    path: str | Path,
    concurrency: int = 4,
    threshold: float = 0.95,
    limit: int | None = 50,
    max_tokens: int = 512,
) -> tuple[CheckResult, dict[str, Any]]:
    """Send each request of a K2-Vendor-Verifier sample file; report finish-reason counts and the share of
    ``tool_calls`` answers whose arguments validate against their tool's schema (vs ``threshold``)."""
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1 (got {concurrency})")
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold must be in (0, 1] (got {threshold})")
    bodies = load_tool_call_requests(path, limit)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(lambda b: _one_sample(target, b, max_tokens), bodies))
    dt = time.monotonic() - t0
    finish = Counter(str(o["finish_reason"]) for o in outcomes if o["status"] == "success")
    failed = sum(1 for o in outcomes if o["status"] != "success")
    tool_finishes = [o for o in outcomes if o.get("finish_reason") == "tool_calls"]
    valid = sum(1 for o in tool_finishes if o.get("valid"))
    accuracy = valid / len(tool_finishes) if tool_finishes else 0.0
    summary = {
        "file": str(path),
        "requests": len(bodies),
        "failed_requests": failed,
        "finish_reasons": dict(finish),
        "tool_calls": len(tool_finishes),
        "schema_valid": valid,
        "schema_accuracy": round(accuracy, 4),
        "threshold": threshold,
        "errors": [o["error"] for o in outcomes if o["status"] != "success"][:5],
        "problems": [p for o in tool_finishes for p in o.get("problems", [])][:5],
    }
    if not tool_finishes:
        result = CheckResult("tool_call_set", FAIL, f"no request of {len(bodies)} ended in tool_calls", dt, summary)
    elif accuracy < threshold:
        result = CheckResult(
            "tool_call_set", FAIL, f"schema accuracy {accuracy:.1%} < {threshold:.0%} ({valid}/{len(tool_finishes)})",
            dt, summary,
        )
    else:
        result = CheckResult(
            "tool_call_set", PASS,
            f"schema accuracy {accuracy:.1%} >= {threshold:.0%} ({valid}/{len(tool_finishes)}); "
            f"finish reasons {dict(finish)}",
            dt, summary,
        )
    return result, summary


# --------------------------------------------------------------------------------------------------
# Output


def render_table(report: CheckReport) -> str:
    """The human table: one row per check, then the verdict."""
    t = report.target
    lines = [
        f"target: {t['api_base']}  model: {t['model']}  flavor: {t['flavor']}",
        f"capabilities: {t['capabilities_source']}; tool-call ids: {t['id_rule_source']}",
    ]
    rows = [(r.name, r.status.upper(), f"{r.seconds:.2f}s", r.reason) for r in report.results]
    w0 = max([len("check")] + [len(r[0]) for r in rows])
    lines.append(f"{'check':<{w0}}  {'status':<6}  {'time':>7}  reason")
    for name, status, secs, reason in rows:
        lines.append(f"{name:<{w0}}  {status:<6}  {secs:>7}  {reason}")
    counts = Counter(r.status for r in report.results)
    verdict = "OK" if report.ok else "FAILED"
    lines.append(f"{verdict}: {counts.get(PASS, 0)} passed, {counts.get(FAIL, 0)} failed, {counts.get(SKIP, 0)} skipped")
    return "\n".join(lines)
