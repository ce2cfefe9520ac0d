"""Find every secret the toolkit reads, and strip secrets from text before it goes into a support bundle.

    >>> r = Redactor(["s3cr3t-value-1"])
    >>> r.text("--api-key s3cr3t-value-1\\nAuthorization: Bearer abcdefgh12345\\nHF_TOKEN=hf_x\\n")
    '--api-key <redacted>\\nAuthorization: Bearer <redacted>\\nHF_TOKEN=<redacted>\\n'
    >>> r.count
    3

Known values come from where the toolkit reads secrets: the environment (names with TOKEN, KEY, SECRET
or PASSWORD, as deploy.serving.target reads them), the rendered env files, ``monitoring/api-key`` (what
Prometheus sends), SGLang's key config file, and huggingface_hub's token files. On top of the values,
patterns catch a secret the toolkit never saw: bearer headers, ``hf_`` tokens, ``--api-key VALUE``, env-file
lines and YAML ``api_key:`` lines whose name says secret. Values are never logged; only counts are reported.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from deploy.serving import target as launch_target

MASK = "<redacted>"
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


def _hf_token_files() -> list[Path]:
    paths = []
    with contextlib.suppress(Exception):
        from huggingface_hub import constants as hf

        paths += [Path(hf.HF_TOKEN_PATH), Path(hf.HF_STORED_TOKENS_PATH)]
    return paths


def known_secrets(env_files: Iterable[Path] = (), secret_files: Iterable[Path] = ()) -> list[str]:
    """Secret values: the environment and ``env_files`` (names with TOKEN/KEY/SECRET/PASSWORD), and the
    whole content (and each ``key: value`` / ``=value`` in it) of ``secret_files`` and the HF token files."""
    values = set(launch_target.secret_values(tuple(env_files)))
    for name, value in os.environ.items():
        if re.fullmatch(_SECRET_NAME, name.upper()) and len(value) >= MIN_SECRET_LEN:
            values.add(value)
    for path in [*secret_files, *_hf_token_files()]:
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


class Redactor:
    """Replace known secret values, then the secret patterns; counts what it replaced."""

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


__all__ = ["MASK", "Redactor", "known_secrets"]
