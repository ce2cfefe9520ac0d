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
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

#: What the support bundle puts in a secret's place; ``SHORT_MASK`` is what logs and reports show.
MASK = "<redacted>"
SHORT_MASK = "***"
#: A value shorter than this is not replaced by value (it would match innocent text); patterns still apply.
MIN_SECRET_LEN = 6
#: Files that hold nothing but a secret: their content is replaced whole.
SECRET_FILES = ("api-key", ".sglang-api-key.yaml", "token", "stored_tokens")

_SECRET_NAME = r"[A-Za-z0-9_]*(?:TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)[A-Za-z0-9_]*"
_PATTERNS = [
    # Authorization: Bearer X / bearer X anywhere
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=:-]{4,}"), r"\1" + MASK),
    # Authorization: Basic X, X-Api-Key: X style headers
    (
        re.compile(r"(?i)(\b(?:authorization|x-api-key|api-key)\s*:\s*)(?!bearer\b)(?!<redacted>)\S+"),
        r"\1" + MASK,
    ),
    # Hugging Face user tokens
    (re.compile(r"\bhf_[A-Za-z0-9]{6,}"), MASK),
    # --api-key VALUE / --api-key=VALUE / --hf-token VALUE
    (re.compile(r"(--(?:api-key|hf-token|token)(?:=|\s+))(?!<redacted>)\S+"), r"\1" + MASK),
    # NAME=value lines (env files, `env` dumps) whose name says secret
    (
        re.compile(rf"(?im)^(\s*(?:export\s+)?{_SECRET_NAME}=)(?!['\"]?<redacted>['\"]?$).+$"),
        r"\1" + MASK,
    ),
    # YAML / JSON api_key fields
    (
        re.compile(
            r"""(?im)((?:^\s*|["'])(?:api_key|api-key|hf_token|token|password)["']?\s*:\s*)"""
            r"""(?!<redacted>)(?!null\b)[^\s,}]+"""
        ),
        r"\1" + MASK,
    ),
]


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
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            for part in (line, line.split("=", 1)[-1], line.split(":", 1)[-1]):
                part = part.strip().strip("'\"")
                if len(part) >= MIN_SECRET_LEN:
                    values.add(part)
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None], mask: str = SHORT_MASK) -> str:
    """``text`` with every secret value replaced by ``mask`` (servers may echo the key they were given)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, mask)
    return text


def redact_url(url: str) -> str:
    """Drop credentials and query strings from a URL before it is printed or stored."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Redactor:
    """Replace known secret values, then the secret patterns, with ``MASK``; counts what it replaced."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self.count = 0

    def text(self, text: str) -> str:
        for value in self.secrets:
            if value in text:
                self.count += text.count(value)
                text = text.replace(value, MASK)
        for pattern, repl in _PATTERNS:
            text, n = pattern.subn(repl, text)
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
    "hf_token_files",
    "is_secret_name",
    "redact",
    "redact_url",
    "secret_values",
]
