"""Every file the toolkit reads goes through a JSON Schema here: one line naming the file, the key and the
reason (exit 2), never a traceback.

    >>> from deploy.schema import validate, PORT
    >>> validate({"port": 8000}, {"type": "object", "properties": {"port": PORT}}, "plan.json")
    {'port': 8000}
    >>> validate({"port": 0}, {"type": "object", "properties": {"port": PORT}}, "plan.json")
    Traceback (most recent call last):
    ...
    deploy.errors.InputError: plan.json: port: 0 is less than the minimum of 1

The stages keep their schemas next to their readers (``deploy/planning/schema.py`` for plan.json, ...);
this module holds the shared pieces: the value formats that reach a shell, a unit file or an env file
(addresses, ports, names, paths), the reader that refuses what is not a regular file, binary, too deep
or too large, and ``check_*`` helpers for the same values arriving on the command line.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from deploy.errors import InputError
from deploy.fsutil import MAX_INPUT_BYTES, MAX_INT_DIGITS, loads_strict, read_regular_text

#: Deepest nesting any input may have (plan.json is 5 deep); deeper is refused before Python recurses.
MAX_DEPTH = 32
#: The most nodes a profile or plan may list, and GPUs per node (larger is a typo, not a cluster).
MAX_NODES = 1024
MAX_GPUS_PER_NODE = 64

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?\Z")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z"
#: Served model names and repo ids: letters, digits, ``._-/:`` (``moonshotai/Kimi-K2.5``).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}\Z"
#: owner/name, as the Hub spells repo ids (no "..", no leading "/": staged repos become folders)
REPO_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z"
INTERFACE_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._:@-]{0,14})?\Z"
#: A path in a file: any characters but control characters (newlines would break env and unit files).
#: Patterns end in ``\Z``, not ``$`` (which also matches before a final newline).
PATH_PATTERN = r"^[^\x00-\x1f\x7f]{1,4096}\Z"

PORT: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 65535}
HOST: dict[str, Any] = {"type": "string", "format": "host"}
NAME: dict[str, Any] = {"type": "string", "pattern": NAME_PATTERN}
ENV_NAME: dict[str, Any] = {"type": "string", "pattern": ENV_NAME_PATTERN}
MODEL_NAME: dict[str, Any] = {"type": "string", "pattern": MODEL_NAME_PATTERN}
PATH: dict[str, Any] = {"type": "string", "pattern": PATH_PATTERN}
RELPATH: dict[str, Any] = {"type": "string", "format": "relpath"}
REPO: dict[str, Any] = {"type": "string", "pattern": REPO_PATTERN}
INTERFACE: dict[str, Any] = {"type": "string", "pattern": INTERFACE_PATTERN}
#: Free text that lands in comments and messages: one line, printable.
TEXT: dict[str, Any] = {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]{0,1000}\Z"}
#: A short word an engine takes as a flag value (parser names, dtypes, backends).
WORD: dict[str, Any] = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}\Z"}
FRACTION: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
POSITIVE: dict[str, Any] = {"type": "integer", "minimum": 1}
#: A finite number >= 0 (NaN and infinity never get this far: the JSON reader refuses them).
AMOUNT: dict[str, Any] = {"type": "number", "minimum": 0}


def is_host(value: str) -> bool:
    """An IPv4/IPv6 address (IPv6 optionally in brackets) or a DNS host name; nothing a shell would read.

    >>> is_host("10.0.0.2"), is_host("[::1]"), is_host("node-1.cluster"), is_host("$(touch x)")
    (True, True, True, False)
    """
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value[1:-1] if value.startswith("[") and value.endswith("]") else value)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(value)) and not value.replace(".", "").isdigit()


def is_relpath(value: str) -> bool:
    """A relative POSIX path that stays inside its folder: no ``..``, not absolute, no control characters.

    >>> is_relpath("a/b.gguf"), is_relpath("../x"), is_relpath("/etc/passwd"), is_relpath("a/./b")
    (True, False, False, False)
    """
    if not isinstance(value, str) or not value or not re.match(PATH_PATTERN, value) or "\\" in value:
        return False
    parts = value.split("/")
    return not value.startswith("/") and all(p not in ("", ".", "..") for p in parts)


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("host")(lambda v: not isinstance(v, str) or is_host(v))
FORMATS.checks("relpath")(lambda v: not isinstance(v, str) or is_relpath(v))


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate(data: Any, schema: dict[str, Any], source: str, error: type[InputError] = InputError) -> Any:
    """Return ``data`` when it matches ``schema``, else raise ``error``: ``source: key.path: reason``."""
    validator = jsonschema.Draft202012Validator(schema, format_checker=FORMATS)
    best = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if best is None:
        return data
    where = _where(best.absolute_path)
    reason = best.message
    if best.validator == "format":
        reason = f"{best.instance!r} is not a valid {best.validator_value}"
    elif best.validator == "pattern":
        reason = f"{best.instance!r} has characters that are not allowed here"
    raise error(_one_line(f"{source}: {where + ': ' if where else ''}{reason}", 300))


def depth_ok(text: str) -> bool:
    """Whether the brackets of a JSON text (outside its strings) nest at most MAX_DEPTH deep."""
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_json(text: str, source: str, error: type[InputError] = InputError) -> Any:
    """JSON without NaN/Infinity, nesting at most MAX_DEPTH: ``parse_json('{"a": 1}', "x.json")``."""
    if not depth_ok(text):
        raise error(f"{source}: nested more than {MAX_DEPTH} levels deep")
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        raise error(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{source}: not valid JSON ({_one_line(exc)})") from None


def finite(data: Any) -> bool:
    """Whether every number in ``data`` is finite and every integer has at most MAX_INT_DIGITS digits:
    ``finite({"a": [1.0, float("inf")]})`` -> False."""
    if isinstance(data, float):
        return math.isfinite(data)
    if isinstance(data, int) and not isinstance(data, bool):
        return abs(data) < 10**MAX_INT_DIGITS
    if isinstance(data, dict):
        return all(finite(v) for v in data.values())
    if isinstance(data, list):
        return all(finite(v) for v in data)
    return True


def parse_yaml(text: str, source: str, error: type[InputError] = InputError) -> Any:
    """YAML (safe loader) without .nan/.inf; too deep a nesting is refused, not a traceback."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{source}: not valid YAML{where}") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{source}: not valid YAML ({_one_line(exc)})") from None
    if not finite(data):
        raise error(f"{source}: NaN or infinity (or an integer too large) is not a value this toolkit takes")
    return data


def read_text(path: str | Path, error: type[InputError] = InputError, missing: str | None = None) -> str:
    """A regular file's UTF-8 text (never blocks on a FIFO; size-capped). ``missing``: the message when
    there is no file (default: ``<path>: not found``)."""
    try:
        return read_regular_text(path, MAX_INPUT_BYTES)
    except FileNotFoundError:
        raise error(missing or f"{path}: not found") from None
    except InputError as exc:
        raise error(str(exc)) from None


def load_json(
    path: str | Path,
    schema: dict[str, Any] | None,
    error: type[InputError] = InputError,
    missing: str | None = None,
) -> Any:
    """Read, parse and validate a JSON file: ``load_json("plan.json", PLAN_SCHEMA, PlanError)``."""
    data = parse_json(read_text(path, error, missing), str(path), error)
    return validate(data, schema, str(path), error) if schema is not None else data


def load_yaml(
    path: str | Path,
    schema: dict[str, Any] | None,
    error: type[InputError] = InputError,
    missing: str | None = None,
) -> Any:
    """Read, parse and validate a YAML (or JSON) file."""
    data = parse_yaml(read_text(path, error, missing), str(path), error)
    return validate(data, schema, str(path), error) if schema is not None else data


# ------------------------------------------------------------------------ values from the command line


def check_host(value: str, what: str = "--bind") -> str:
    """``check_host("0.0.0.0")`` -> '0.0.0.0'; anything but an address or host name is InputError."""
    if not is_host(value):
        raise InputError(f"{what} {value!r}: not an IP address or host name")
    return value


def check_port(value: Any, what: str = "--port") -> int:
    """``check_port(8000)`` -> 8000; outside 1-65535 (or not an integer) is InputError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InputError(f"{what} {value!r}: not a port (1-65535)")
    return value


def check_url(value: Any, what: str = "--url") -> str:
    """An http(s) URL with a host and, if any, a numeric port in 1-65535; anything else (``http://[::1``,
    ``http://h:abc``, ``ftp://x``) is InputError. ``check_url("http://127.0.0.1:8000/v1")`` returns it."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not re.match(r"^https?://[^\s]{1,2000}\Z", value.strip()):
        raise InputError(f"{what} {value!r}: expected an http:// or https:// URL")
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise InputError(f"{what} {value!r}: not a valid URL ({exc})") from None
    if not parts.hostname or not is_host(parts.hostname):
        raise InputError(f"{what} {value!r}: no valid host in the URL")
    if port is not None and not 1 <= port <= 65535:
        raise InputError(f"{what} {value!r}: not a port (1-65535)")
    return value


def check_env_name(value: str, what: str = "--api-key-env") -> str:
    if not isinstance(value, str) or not re.match(ENV_NAME_PATTERN, value):
        raise InputError(f"{what} {value!r}: not an environment variable name")
    return value


def inside(base: str | Path, rel: str, what: str, *, last_may_link: bool = False) -> Path:
    """``base / rel`` when ``rel`` is a relative path that stays inside ``base`` (symlinks resolved), else
    InputError naming ``what``: ``inside("/models/x", "a/b.gguf", "weights.lock")``.

    With ``last_may_link`` the last component may be a symlink to anywhere (a weights file linked from a
    cache): only the folders on the way must stay inside, so renaming the path moves the link, never
    what it points to."""
    if not is_relpath(rel):
        raise InputError(f"{what}: path {rel!r} must be relative and stay inside {base}")
    root = Path(base).resolve()
    path = root / PurePosixPath(rel)
    target = (path.parent.resolve() / path.name) if last_may_link else path.resolve()
    if target != root and root not in target.parents:
        raise InputError(f"{what}: path {rel!r} leads outside {base} (through a symlink)")
    return Path(base) / PurePosixPath(rel)


__all__ = [
    "AMOUNT",
    "COUNT",
    "ENV_NAME",
    "FRACTION",
    "HOST",
    "INTERFACE",
    "MAX_DEPTH",
    "MAX_GPUS_PER_NODE",
    "MAX_NODES",
    "MODEL_NAME",
    "NAME",
    "PATH",
    "PORT",
    "POSITIVE",
    "RELPATH",
    "REPO",
    "REPO_PATTERN",
    "TEXT",
    "WORD",
    "check_env_name",
    "check_host",
    "check_port",
    "check_url",
    "inside",
    "is_host",
    "is_relpath",
    "load_json",
    "load_yaml",
    "parse_json",
    "parse_yaml",
    "read_text",
    "validate",
]
