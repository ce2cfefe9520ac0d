"""Quoting for the exact place a value lands: a systemd command line, a systemd path setting, an env file.

    >>> systemd_word("until curl http://10.0.0.2:8000/health; do sleep 2; done")
    '"until curl http://10.0.0.2:8000/health; do sleep 2; done"'
    >>> systemd_word("50% of $HOME")
    '"50%% of $$HOME"'
    >>> env_line("NCCL_SOCKET_IFNAME", "ens10f0")
    'NCCL_SOCKET_IFNAME=ens10f0'

systemd reads ``ExecStart=``/``ExecStartPost=`` differently from bash (systemd.service(5), "Command
lines"): it splits on whitespace honouring double and single quotes, turns C escapes (``\\n``, ``\\"``)
into characters, replaces ``$VAR``/``${VAR}`` from the unit's environment (``$$`` is a dollar) and ``%x``
specifiers everywhere (``%%`` is a percent). ``systemd_word`` makes one word that systemd hands to the
program unchanged; control characters are refused, since no quoting keeps them on one unit line.

The env file (``kimi-deploy.env``) is read by three parsers: bash (the launch script sources it),
systemd (``EnvironmentFile=``) and `kimi-deploy up` (``parse_env_file``). Rather than quote for all three,
values are kept to characters that all of them read literally without quotes (``ENV_VALUE_CHARS``);
the reader accepts those, plus a single- or double-quoted value of the same characters and spaces, and
refuses every other shell construct (``$``, backquotes, backslashes, nested quotes) with the line number,
so what `up` passes to the engine is always what the shell would have read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from deploy.errors import InputError
from deploy.schema import read_text

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: What an env file value may hold unquoted: the same in bash, systemd and `parse_env_file`.
ENV_VALUE_CHARS = "-A-Za-z0-9._+/=:,@%"  # no "~": bash expands it in assignments
_ENV_VALUE = re.compile(rf"[{ENV_VALUE_CHARS}]*\Z")
_ENV_QUOTED = re.compile(rf"""(['"])([{ENV_VALUE_CHARS} ]*)\1\Z""")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def systemd_word(value: Any) -> str:
    """``value`` as one word of a systemd command line, passed to the program exactly as given."""
    text = str(value)
    if _CONTROL.search(text):
        raise InputError(f"{text!r}: a control character cannot appear on a systemd unit line")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%")
    return f'"{escaped}"'


def systemd_text(value: Any) -> str:
    """Free text for a setting such as ``Description=``: one line, ``%`` doubled (a specifier otherwise)."""
    return " ".join(str(value).split()).replace("%", "%%")


def systemd_path(value: Any) -> str:
    """A path for ``EnvironmentFile=``/``WorkingDirectory=`` (no quoting there: only ``%`` is special)."""
    text = str(value)
    if _CONTROL.search(text) or text != text.strip() or not text.startswith("/"):
        raise InputError(f"{text!r}: a systemd unit needs an absolute path without control characters")
    if re.search(r"[\s\"'\\]", text):
        raise InputError(f"{text!r}: a systemd unit cannot reference a path with spaces, quotes or '\\'")
    return text.replace("%", "%%")


#: a user name systemd's User= and useradd both take: systemd's portable name rule (a letter or '_'
#: first, then letters, digits, '_' or '-', at most 32 characters; systemd.exec(5) "User=", useradd(8)
#: "CAVEATS"), lower case only as useradd's default NAME_REGEX asks
_SERVICE_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def check_service_user(value: Any, what: str = "--service-user") -> str:
    """A user name for the units' ``User=`` and the install script's ``runuser -u``; anything else (a number,
    a space, a quote, a newline) is InputError naming the rule. ``root`` is refused: it is the default.

    >>> check_service_user("kimi")
    'kimi'
    """
    text = str(value)
    if not _SERVICE_USER.fullmatch(text):
        raise InputError(
            f"{what} {text!r}: a user name is a lower-case letter or '_', then up to 31 lower-case letters, "
            "digits, '_' or '-'"
        )
    if text == "root":
        raise InputError(f"{what} root: the units run as root without it; name a dedicated user")
    return text


def check_env_value(name: str, value: Any) -> str:
    """The value for ``NAME=value`` in the env file, refused (exit 2) unless it is made of
    ENV_VALUE_CHARS only (no quoting needed by bash, systemd or ``parse_env_file``)."""
    text = str(value)
    if not _ENV_VALUE.match(text):
        raise InputError(
            f"{name}: the env file takes values of the characters [{ENV_VALUE_CHARS}] only "
            "(bash, systemd and kimi-deploy must read it alike); this one has others"
        )
    return text


def env_line(name: str, value: Any) -> str:
    if not _ENV_NAME.match(name):
        raise InputError(f"{name!r}: not an environment variable name")
    return f"{name}={check_env_value(name, value)}"


def parse_env_file(path: str | Path) -> dict[str, str]:
    """``NAME=value`` pairs of an env file (``export`` allowed, comments and blank lines skipped); a value
    written another way than the shell, systemd and this reader all read alike is InputError (exit 2)
    naming the line, and the value is never shown. A missing file is an empty mapping."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return {}
    text = read_text(p)
    pairs: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        body = line.removeprefix("export ").lstrip()
        name, sep, value = body.partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise InputError(f"{p}: line {number}: expected NAME=value")
        if _ENV_VALUE.match(value):
            pairs[name] = value
            continue
        quoted = _ENV_QUOTED.match(value)
        if quoted is None:
            raise InputError(
                f"{p}: line {number}: the value of {name} uses shell syntax kimi-deploy does not read "
                f"(quotes inside, '$', '\\', backquotes or a trailing comment); write it with the "
                f"characters [{ENV_VALUE_CHARS}] only"
            )
        pairs[name] = quoted.group(2)
    return pairs


__all__ = [
    "ENV_VALUE_CHARS",
    "check_env_value",
    "check_service_user",
    "env_line",
    "parse_env_file",
    "systemd_path",
    "systemd_text",
    "systemd_word",
]
