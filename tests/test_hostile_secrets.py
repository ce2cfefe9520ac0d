"""Secrets by shape (issue 27): one redaction (deploy.secrets.scrub) masks a credential the toolkit never
saw from its shape alone: every Authorization header whatever its scheme, any header, field, flag or
query parameter whose name says key/token/secret/password in any case style, URL userinfo; and a known
secret in its raw, URL-encoded and JSON-escaped forms. Hypothesis generates the names, case styles,
schemes, secrets and contexts; a fixed list would only prove the cases someone thought of.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from deploy.secrets import Redactor, redact, redact_data

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
#: Credentials as services issue them: a letter or digit, then URL-safe characters.
SECRET = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(ALNUM),
    st.text(alphabet=ALNUM + "-_.~", min_size=9, max_size=40),
)
PREFIX = st.lists(
    st.sampled_from(["db", "api", "access", "my", "service", "hf", "x", "openai", "s3"]), max_size=3
)
LAST = st.sampled_from(["key", "token", "secret", "password", "apikey", "credential", "passwd", "auth"])


def styled(words: list[str], style: str) -> str:
    """``["api", "key"]`` as snake, SCREAMING_SNAKE, camelCase, kebab or Train-Case."""
    if style == "snake":
        return "_".join(words)
    if style == "screaming":
        return "_".join(words).upper()
    if style == "camel":
        return words[0] + "".join(w.capitalize() for w in words[1:])
    if style == "kebab":
        return "-".join(words)
    return "-".join(w.capitalize() for w in words)


NAME = st.builds(
    lambda pre, last, style: styled([*pre, last], style),
    PREFIX,
    LAST,
    st.sampled_from(["snake", "screaming", "camel", "kebab", "train"]),
)


@st.composite
def credential_in_context(draw: st.DrawFn) -> tuple[str, str]:
    """(text, secret): a secret placed where a credential goes, in one of the shapes text carries it."""
    secret, name = draw(SECRET), draw(NAME)
    shape = draw(
        st.sampled_from(["auth", "header", "userinfo", "query", "json", "yaml", "env", "flag", "repr"])
    )
    scheme = draw(st.sampled_from(["Basic", "Bearer", "Token", "Digest", "ApiKey", "AWS4-HMAC-SHA256", ""]))
    header = draw(st.sampled_from(["Authorization", "authorization", "Proxy-Authorization"]))
    user = draw(st.text(alphabet=ALNUM, min_size=1, max_size=8))
    text = {
        "auth": f"{header}: {scheme} {secret}".replace("  ", " "),
        "header": f"{styled(['x', *name.replace('_', '-').split('-')], 'train')}: {secret}",
        "userinfo": f"GET https://{user}:{secret}@hub.example:8443/api/models failed",
        "query": f"https://hub.example/v1/models?limit=2&{name}={secret}&page=1",
        "json": json.dumps({"model": "m", name: secret, "n": 3}),
        "yaml": f"engine:\n  {name}: {secret}\n  port: 8000",
        "env": f"{styled(name.replace('-', '_').split('_'), 'screaming')}={secret}",
        "flag": f"serve --{styled(name.replace('_', '-').split('-'), 'kebab').lower()} {secret} --port 8000",
        "repr": repr({name: secret}),
    }[shape]
    before = draw(st.sampled_from(["", "log line: ", "2026-01-01T00:00:00 INFO "]))
    return before + text + draw(st.sampled_from(["", "\n", " (retrying)\n"])), secret


@SETTINGS
@given(case=credential_in_context())
def test_a_credential_nobody_named_is_masked_by_its_shape(case: tuple[str, str]) -> None:
    text, secret = case
    out = Redactor([]).text(text)
    assert secret not in out, (text, out)
    assert secret not in redact(text, [])


@SETTINGS
@given(secret=st.text(min_size=8, max_size=30).filter(lambda s: s.strip() == s and len(set(s)) > 3))
def test_a_known_secret_is_masked_in_every_encoded_form(secret: str) -> None:
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    text = " | ".join(f"form {i}: {f}" for i, f in enumerate(sorted(forms)))
    out = Redactor([secret]).text(text)
    for form in forms:
        assert form not in out, (form, out)
    assert json.loads(json.dumps(redact_data({"echo": json.dumps({"k": secret})}, [secret])))


@SETTINGS
@given(
    words=st.lists(
        st.sampled_from(["max", "kv", "cache", "completion", "prompt", "api", "env"]), min_size=1, max_size=3
    )
)
def test_what_is_not_a_credential_stays_readable(words: list[str]) -> None:
    """Counts and names of variables are not secrets: ``kv_cache_tokens: 715072``, ``api_key_env``."""
    name = "_".join([*words, "tokens"])
    text = f'{{"{name}": 715072, "api_key_env": "KIMI_API_KEY"}}\nper token: 2 values'
    assert Redactor([]).text(text) == text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_never_prints_or_writes_url_userinfo(tmp_path: Path) -> None:
    """A real `check` against a URL carrying user:password (on a closed loopback port, so it fails fast):
    neither its output nor its report holds the password."""
    password = "pw-" + os.urandom(6).hex()
    url = f"http://alice:{password}@127.0.0.1:{_closed_port()}/v1?api_key={password}x"
    r = subprocess.run(
        [sys.executable, "-m", "deploy", "check", "--url", url, "--model", "m", "--timeout", "5",
         "-o", str(tmp_path / "report.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KIMI_API_KEY": "k-" + os.urandom(6).hex()},
    )  # fmt: skip
    assert "Traceback" not in r.stderr and r.returncode != 0
    written = (tmp_path / "report.json").read_text() if (tmp_path / "report.json").exists() else ""
    for text in (r.stdout, r.stderr, written):
        assert password not in text
