"""Whole-operation deadlines for network reads: a per-read timeout alone never fires against a server
that trickles one byte at a time, in its body or in its status line and headers.

    >>> within(1.0, lambda: 42, TimeoutError)
    42
    >>> r = http_get("http://127.0.0.1:8000/metrics", timeout_s=3)   # doctest: +SKIP

``within`` runs a call in a daemon thread and gives up on it at the deadline (the abandoned call keeps its
socket's per-read timeout and never keeps the process alive); ``http_get`` is ``requests.get`` whose
connect, headers and whole body arrive within ``timeout_s`` and at most ``max_bytes``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests

T = TypeVar("T")
#: The largest answer any status probe or check reads.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class DeadlineExceeded(requests.Timeout):
    """The whole answer did not arrive within the overall deadline."""


class TooLarge(requests.RequestException):
    """The answer is larger than the limit."""


def within(seconds: float, call: Callable[[], T], late: Callable[[], BaseException]) -> T:
    """``call()``'s result (or its exception), or ``late()`` raised once ``seconds`` have passed."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="deadline-call", daemon=True).start()
    if not done.wait(max(0.0, seconds)):
        raise late()
    if "error" in box:
        raise box["error"]
    return box["value"]


def http_get(
    url: str,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> requests.Response:
    """``requests.get`` that gives up after ``timeout_s`` in all (connect, headers and every read of the
    body) and past ``max_bytes`` of body; the response has its body read (``.text``/``.json()`` work)."""
    deadline = time.monotonic() + timeout_s
    r = within(
        timeout_s,
        lambda: requests.get(url, headers=headers, timeout=timeout_s, stream=True),
        lambda: DeadlineExceeded(f"no answer's headers within {timeout_s:g} s from {url}"),
    )
    try:
        body = bytearray()
        for chunk in r.iter_content(chunk_size=65536):
            body += chunk
            if len(body) > max_bytes:
                raise TooLarge(f"answer larger than {max_bytes} bytes from {url}")
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"no complete answer within {timeout_s:g} s from {url}")
        r._content = bytes(body)  # what .text/.json() read
    finally:
        r.close()
    return r


__all__ = ["MAX_RESPONSE_BYTES", "DeadlineExceeded", "TooLarge", "http_get", "within"]
