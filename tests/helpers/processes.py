"""Test processes on loopback: start one with its output in a log (stopped at the end, killed if it
lingers), and wait until it is ready, failing with its log's tail when it exits or time runs out."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import requests


def until(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen, log: Path, timeout_s: float = 60
) -> None:
    """Poll ``ready`` until it holds; fail with ``log``'s tail if ``proc`` exits or time runs out."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, f"{what} exited: {log.read_text()[-3000:]}"
        with contextlib.suppress(requests.RequestException, ValueError):
            if ready():
                return
        time.sleep(0.1)
    raise AssertionError(f"{what} not ready in {timeout_s} s: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``cmd`` running in its own session with stdout and stderr in ``log``; terminated on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Terminate ``proc`` and wait for it; kill it if it outlives ``timeout_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
