"""Secrets: which names and values are secret, and taking them out of text before it is shown or stored.

    >>> redact("Incorrect API key provided: sk-123456789", ["sk-123456789", None])
    'Incorrect API key provided: ***'
    >>> r = Redactor(["s3cr3t-value-1"])
    >>> r.text("--api-key s3cr3t-value-1\\nAuthorization: Bearer abcdefgh12345\\nHF_TOKEN=hf_x\\n")
    '--api-key <redacted>\\nAuthorization: Bearer <redacted>\\nHF_TOKEN=<redacted>\\n'
    >>> r.count
    3
    >>> redact_url("https://user:pw@hub.example:8443/api?token=x")
    'https://hub.example:8443/api'

The one place for it: `up`/`status` logs and `check` reports replace known values with ``***`` (``redact``);
the support bundle replaces known values and, on top, patterns that catch a secret the toolkit never saw
(bearer headers, ``hf_`` tokens, ``--api-key VALUE``, env-file and YAML lines whose name says secret) with
``<redacted>`` (``Redactor``); a URL loses its credentials and query (``redact_url``). Known values come from
the environment and the env files (names with TOKEN, KEY, SECRET, PASSWORD, PASSWD or CREDENTIAL:
``secret_values``; deploy.serving.target reads the env files) and from files that hold nothing but a secret
(``file_secrets``: ``monitoring/api-key``, SGLang's key config, huggingface_hub's token files). Values are
never logged; only counts are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

from deploy.errors import InputError
from deploy.fsutil import read_regular_bytes

#: What the support bundle puts in a secret's place; ``SHORT_MASK`` is what logs and reports show.
MASK = "<redacted>"
SHORT_MASK = "***"
#: A value shorter than this is not replaced by value (it would match innocent text); patterns still apply.
MIN_SECRET_LEN = 6
#: Files that hold nothing but a secret: their content is replaced whole.
SECRET_FILES = ("api-key", ".sglang-api-key.yaml", "token", "stored_tokens")

_SECRET_NAME = r"[A-Za-z0-9_]*(?:TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)[A-Za-z0-9_]*"
#: The last word of a field, header, flag or query parameter whose value is a credential, whatever the
#: case style (``apiKey``, ``API_KEY``, ``x-api-key``, ``NAME_KEY``, ``hf_token``, ``X-Auth-Token``).
SECRET_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential", "credentials", "auth"}
)
_SKIP_VALUES = frozenset({"", "null", "none", "true", "false", MASK, SHORT_MASK})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")


def is_secret_key(name: str) -> bool:
    """Whether a field, header, flag or parameter name says its value is a credential (its last word).

    >>> [is_secret_key(n) for n in ("apiKey", "NAME_KEY", "x-auth-token", "max_tokens", "api_key_env")]
    [True, True, True, False, False]
    """
    words = _WORDS.findall(name)
    return bool(words) and words[-1].lower() in SECRET_WORDS


_Sub = tuple["re.Pattern[str]", "Callable[[re.Match[str], str], str | None]"]


def _keep(m: re.Match[str], group: str, mask: str) -> str | None:
    """``m`` with ``group`` replaced by ``mask``; None (no change) when it already is a mask or no value."""
    value = m.group(group)
    inner = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
    if inner.strip().lower() in _SKIP_VALUES or inner in (MASK, SHORT_MASK):
        return None
    quoted = mask if inner is value else value[0] + mask + value[-1]
    start, end = m.span(group)
    return m.group(0)[: start - m.start()] + quoted + m.group(0)[end - m.start() :]


def _named(m: re.Match[str], mask: str) -> str | None:
    return _keep(m, "value", mask) if is_secret_key(m.group("name")) else None


def _compound(m: re.Match[str], mask: str) -> str | None:
    return _named(m, mask) if len(_WORDS.findall(m.group("name"))) > 1 else None


_VALUE = r"""(?P<value>"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s,;}\]&#"'<>]+)"""
_SHAPES: list[_Sub] = [
    # any Authorization header, whatever its scheme: the scheme word stays, the credential goes
    (
        re.compile(
            r"""(?i)\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?(?:[A-Za-z][\w-]*\s+)?"""
            r"""(?P<value>[^\s"',}]+)"""
        ),
        lambda m, mask: _keep(m, "value", mask),
    ),
    # cookies carry sessions: the whole header value
    (re.compile(r"(?im)^\s*(?:set-)?cookie\s*:\s*(?P<value>.+)$"), lambda m, mask: _keep(m, "value", mask)),
    # URL userinfo: scheme://user:password@host
    (
        re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://(?P<value>[^/\s@?#\"'<>]+)@"),
        lambda m, mask: _keep(m, "value", mask),
    ),
    # bearer credentials anywhere (a log line quoting a header)
    (
        re.compile(r"(?i)\bbearer\s+(?P<value>[A-Za-z0-9._~+/=:-]{4,})"),
        lambda m, mask: _keep(m, "value", mask),
    ),
    # token formats that announce themselves: Hugging Face, OpenAI-style keys
    (
        re.compile(r"\b(?P<value>hf_[A-Za-z0-9]{6,}|sk-[A-Za-z0-9_-]{16,})(?![A-Za-z0-9_-])"),
        lambda m, mask: _keep(m, "value", mask),
    ),
    # --api-key VALUE / --hf-token=VALUE: any flag whose last word says credential
    (
        re.compile(r"--(?P<name>[A-Za-z0-9][A-Za-z0-9-]*)(?:=|[ \t]+)(?P<value>(?!-)[^\s\"']+)"),
        _named,
    ),
    # "name": "value" (JSON, Python reprs), a YAML/header line ``name: value``, and ``name=value`` (env
    # files, query strings, log fields); prose ("per token: 2") is neither, so it stays readable
    (re.compile(r"""["'](?P<name>[A-Za-z_][A-Za-z0-9_.-]*)["'][ \t]*:[ \t]*""" + _VALUE), _named),
    (
        re.compile(
            r"""(?m)^[ \t-]*(?:export[ \t]+)?(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)[ \t]*[:=][ \t]*""" + _VALUE
        ),
        _named,
    ),
    (re.compile(r"""(?<![\w.-])(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)=""" + _VALUE), _named),
    # a header quoted mid-line (``... X-Api-Key: v``): compound names only, so prose stays readable
    (
        re.compile(
            r"""(?<![\w.-])(?P<name>"""
            + r"""[A-Za-z][A-Za-z0-9]*(?:[_.-][A-Za-z0-9]+)+|[a-z]+[A-Z][A-Za-z0-9]*)[ \t]*:[ \t]+"""
            + _VALUE
        ),
        _compound,
    ),
]


def encoded_forms(value: str) -> list[str]:
    """``value`` as it may appear in text: raw, URL-encoded (both ways) and JSON-escaped.

    >>> encoded_forms('a/b"c')
    ['a/b"c', 'a%2Fb%22c', 'a/b\\\\"c']
    """
    forms = [value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]]
    return list(dict.fromkeys(forms))


def scrub(text: str, secrets: Iterable[str | None], mask: str = MASK) -> tuple[str, int]:
    """``text`` with every known secret (in each of its encoded forms) and every credential by shape
    replaced by ``mask``, and how many were replaced. The one redaction every report, log tail and
    support bundle goes through."""
    count = 0
    values = {f for s in secrets if s and len(s) >= 4 for f in encoded_forms(s)}
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            count += text.count(value)
            text = text.replace(value, mask)
    for pattern, fix in _SHAPES:

        def sub(m: re.Match[str], fix=fix) -> str:
            nonlocal count
            out = fix(m, mask)
            if out is None:
                return m.group(0)
            count += 1
            return out

        text = pattern.sub(sub, text)
    return text, count


def is_secret_name(name: str) -> bool:
    """Whether a variable's name says it holds a secret (``KIMI_API_KEY``, ``HF_TOKEN``, ``DB_PASSWORD``)."""
    return re.fullmatch(_SECRET_NAME, name.upper()) is not None


def secret_values(
    pairs: Iterable[tuple[str, str]] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """The values of ``environ`` (default: this process's environment) and ``pairs`` (e.g. an env file's)
    whose name says secret, longest first."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in [*environ.items(), *pairs]
        if is_secret_name(name) and len(value) >= MIN_SECRET_LEN
    }
    return sorted(values, key=len, reverse=True)


def hf_token_files() -> list[Path]:
    """huggingface_hub's token files (the token and the stored tokens), where it has them."""
    paths = []
    with contextlib.suppress(Exception):
        from huggingface_hub import constants as hf

        paths += [Path(hf.HF_TOKEN_PATH), Path(hf.HF_STORED_TOKENS_PATH)]
    return paths


def file_secrets(paths: Iterable[Path]) -> list[str]:
    """The secret values in files that hold nothing but secrets: each line whole, and each ``key: value``
    / ``=value`` in it. A file that cannot be read holds none."""
    values: set[str] = set()
    for path in paths:
        try:  # never blocks on a FIFO, never reads a device or an endless file
            text = read_regular_bytes(path, 1 << 20).decode("utf-8", "replace")
        except (OSError, InputError):
            continue
        for line in text.splitlines():
            line = line.strip()
            for part in (line, line.split("=", 1)[-1], line.split(":", 1)[-1]):
                part = part.strip().strip("'\"")
                if len(part) >= MIN_SECRET_LEN:
                    values.add(part)
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None], mask: str = SHORT_MASK) -> str:
    """``text`` with every secret value and credential shape replaced by ``mask`` (see ``scrub``)."""
    return scrub(text, secrets, mask)[0]


def redact_data(data: Any, secrets: Iterable[str | None], mask: str = SHORT_MASK) -> Any:
    """A JSON-like value with every string redacted and every field whose name says credential masked,
    keeping its structure (a report stays valid JSON).

    >>> redact_data({"apiKey": 12345678, "url": "http://u:pw@h/x", "n": 1}, [])
    {'apiKey': '***', 'url': 'http://***@h/x', 'n': 1}
    """
    known = [s for s in secrets if s]
    if isinstance(data, dict):
        return {
            k: mask
            if isinstance(k, str) and is_secret_key(k) and data[k] not in (None, "", True, False)
            else redact_data(data[k], known, mask)
            for k in data
        }
    if isinstance(data, list):
        return [redact_data(v, known, mask) for v in data]
    if isinstance(data, str):
        return redact(data, known, mask)
    return data


def redact_url(url: str) -> str:
    """Drop credentials and query strings from a URL before it is printed or stored; a URL that does not
    parse is shown with its credential shapes masked instead."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return redact(url, [])
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Redactor:
    """Replace known secret values, then the secret patterns, with ``MASK``; counts what it replaced."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self.count = 0

    def text(self, text: str) -> str:
        text, n = scrub(text, self.secrets, MASK)
        self.count += n
        return text

    def is_secret_file(self, path: Path) -> bool:
        return path.name in SECRET_FILES


__all__ = [
    "MASK",
    "MIN_SECRET_LEN",
    "SECRET_FILES",
    "SHORT_MASK",
    "Redactor",
    "file_secrets",
    "encoded_forms",
    "hf_token_files",
    "is_secret_key",
    "is_secret_name",
    "redact",
    "redact_data",
    "redact_url",
    "scrub",
    "secret_values",
]
