"""Reach the other nodes over ssh the way the Ansible path does (key, user, ssh options), and run
``facts`` there with the node's own ``python3``.

    >>> from deploy.preflight.remote import Ssh
    >>> Ssh(user="root", key="/k").argv("10.0.0.2", ["true"])[-2:]
    ['root@10.0.0.2', 'true']
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from deploy.preflight import facts

#: Long enough for an ssh handshake on a loaded node; a node that needs longer is reported unreachable.
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Ssh:
    user: str | None = None
    key: str | None = None
    options: tuple[str, ...] = field(default_factory=tuple)
    python: str = "python3"

    def argv(self, address: str, remote: list[str]) -> list[str]:
        """ssh in batch mode (never a password prompt), then the remote command quoted for its shell."""
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        argv += ["-i", self.key] if self.key else []
        argv += list(self.options)
        target = f"{self.user}@{address}" if self.user else address
        return [*argv, target, shlex.join(remote)]


class RemoteError(Exception):
    """ssh or the remote facts script failed; the message is one line for the check's value."""


def remote_facts(ssh: Ssh, address: str, request: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
    """(facts, t_sent, t_back): the node's facts and the local clock around the call, for the skew."""
    argv = ssh.argv(address, facts.remote_argv(ssh.python, "collect", json.dumps(request)))
    sent = time.time()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=CONNECT_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"ssh {address}: no answer in {CONNECT_TIMEOUT_S + 60} s") from None
    back = time.time()
    if p.returncode != 0:
        raise RemoteError(
            f"ssh {address} (rc {p.returncode}): {(p.stderr.strip() or p.stdout.strip())[-200:]}"
        )
    try:
        return json.loads(p.stdout.strip().splitlines()[-1]), sent, back
    except (ValueError, IndexError):
        raise RemoteError(f"ssh {address}: the facts script printed no JSON: {p.stdout[-200:]!r}") from None


def _here_argv(*args: str) -> list[str]:
    """``facts`` run on this host (the head) by this interpreter, as it runs on the other nodes."""
    return facts.remote_argv(sys.executable, *args)


def remote_listen(
    ssh: Ssh, address: str, ports: list[int], here: bool = False
) -> tuple[subprocess.Popen[str], list[int]]:
    """Start ``facts listen`` on the node (``here``: on this host, without ssh); returns the process (close
    its stdin to stop it) and the ports it bound."""
    args = ("listen", *map(str, ports))
    proc = subprocess.Popen(
        _here_argv(*args) if here else ssh.argv(address, facts.remote_argv(ssh.python, *args)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the listener's first line, once every port is bound
    try:
        return proc, list(json.loads(line)["bound"])
    except (ValueError, KeyError):
        stop(proc)
        raise RemoteError(
            f"ssh {address}: listener did not start: {(proc.stderr.read() if proc.stderr else '')[-200:]}"
        ) from None


def remote_connect(
    ssh: Ssh, address: str, target: str, ports: list[int], here: bool = False
) -> dict[str, str]:
    """``{port: why}`` for each of ``ports`` on ``target`` that the node at ``address`` (``here``: this
    host) cannot open a TCP connection to; RemoteError when ssh or the script fails."""
    args = ("connect", target, *map(str, ports))
    argv = _here_argv(*args) if here else ssh.argv(address, facts.remote_argv(ssh.python, *args))
    timeout = CONNECT_TIMEOUT_S + facts.CONNECT_TIMEOUT_S * max(1, len(ports)) + 30
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"ssh {address}: no answer in {timeout:.0f} s") from None
    if p.returncode != 0:
        raise RemoteError(
            f"ssh {address} (rc {p.returncode}): {(p.stderr.strip() or p.stdout.strip())[-200:]}"
        )
    try:
        return dict(json.loads(p.stdout.strip().splitlines()[-1])["failed"])
    except (ValueError, IndexError, KeyError):
        raise RemoteError(f"ssh {address}: the connect script printed no JSON: {p.stdout[-200:]!r}") from None


def stop(proc: subprocess.Popen[str]) -> None:
    """Close the remote process's stdin (it exits) and reap it; kill it if it lingers."""
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
