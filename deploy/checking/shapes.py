"""Response shapes a Kimi client relies on, judged on plain dicts (live answers or recorded payloads).

    >>> validate_instant({"choices": [{"message": {"content": "Paris"}, "finish_reason": "stop"}]})
    (True, 'content answered, no reasoning')

Reasoning is ``reasoning_content`` (SGLang, llama.cpp, Moonshot's API) or ``reasoning`` (vLLM); tool-call
ids are ``functions.<name>:<n>`` for models served with the kimi_k2 tool parser (any unique id otherwise);
raw tool markers or a literal ``</think>`` in ``content`` mean a parser is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import jsonschema

from deploy.fsutil import loads_strict

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


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning of a message or delta: SGLang/llama.cpp/Moonshot say ``reasoning_content``, vLLM
    ``reasoning``."""
    return str(message.get("reasoning_content") or message.get("reasoning") or "")


def first_message(payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    choices = payload.get("choices") or []
    if not choices:
        raise ValueError("the response has no choices")
    return choices[0].get("message") or {}, choices[0].get("finish_reason")


def validate_instant(payload: dict[str, Any]) -> tuple[bool, str]:
    """Instant mode: an answer in ``content``, no reasoning, no think tags.

    >>> validate_instant({"choices": [{"message": {"content": "Paris"}, "finish_reason": "stop"}]})
    (True, 'content answered, no reasoning')
    """
    msg, _ = first_message(payload)
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
    msg, finish = first_message(payload)
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


#: How long a tool schema's own regular expressions may run against one call's arguments.
PATTERN_DEADLINE_S = 3.0
#: Validates stdin's {"schema", "arguments"} and prints why not (or nothing): run in a child process so a
#: catastrophic ``pattern`` (``^(a+)+$``) is killed at the deadline; Python's re cannot be interrupted.
_CHILD = (
    "import json, sys\n"
    "from deploy.checking.shapes import _validate_here\n"
    "job = json.load(sys.stdin)\n"
    "print(_validate_here(job['arguments'], job['schema']) or '', end='')\n"
)


def _has_pattern(schema: Any) -> bool:
    """Whether a schema holds a user regular expression anywhere (``pattern``, ``patternProperties``)."""
    if isinstance(schema, dict):
        if isinstance(schema.get("pattern"), str) or isinstance(schema.get("patternProperties"), dict):
            return True
        return any(_has_pattern(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_has_pattern(v) for v in schema)
    return False


def _validate_here(arguments: Any, schema: dict[str, Any]) -> str | None:
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        cls(schema).validate(arguments)
    except jsonschema.SchemaError as exc:
        return f"the tool's schema is invalid: {exc.message}"
    except jsonschema.ValidationError as exc:
        return f"arguments do not match the schema: {exc.message}"
    except Exception as exc:  # noqa: BLE001
        # an unresolvable $ref (never fetched), a regex re cannot compile, a schema nested too deep:
        # referencing's errors share no base class with jsonschema's
        return f"the tool's schema cannot be checked: {exc.__class__.__name__}: {str(exc)[:120]}"
    return None


def validate_arguments(arguments: Any, schema: dict[str, Any]) -> str | None:
    """None when the arguments are a JSON object valid against the schema, else why not. A schema with its
    own regular expressions is checked in a child process killed after PATTERN_DEADLINE_S."""
    if isinstance(arguments, str):
        try:
            arguments = loads_strict(arguments)
        except json.JSONDecodeError as exc:
            return f"arguments are not valid JSON ({exc.msg} at char {exc.pos})"
        except (ValueError, RecursionError) as exc:
            return f"arguments are not valid JSON ({str(exc)[:120]})"
    if not _has_pattern(schema):
        return _validate_here(arguments, schema)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps({"arguments": arguments, "schema": schema}),
            capture_output=True,
            text=True,
            timeout=PATTERN_DEADLINE_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return (
            f"the tool's schema patterns did not finish within {PATTERN_DEADLINE_S:g} s (catastrophic regex?)"
        )
    if done.returncode != 0:
        return f"the tool's schema cannot be checked (validator exit {done.returncode})"
    return done.stdout or None


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
    msg, finish = first_message(payload)
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
