"""Whole-operation deadlines for network reads: a per-read timeout alone never fires against a server
that trickles one byte at a time, in its body or in its status line and headers.

    >>> with Cutoff(3.0, "http://127.0.0.1:8000/metrics") as cut:    # doctest: +SKIP
    ...     with cut.watching():
    ...         reply = requests.get("http://127.0.0.1:8000/metrics", timeout=3)
    >>> r = http_get("http://127.0.0.1:8000/metrics", timeout_s=3)     # doctest: +SKIP
    >>> r = http_request("POST", "http://127.0.0.1:8000/workers", json={}, timeout_s=5)  # doctest: +SKIP

A ``Cutoff`` shuts down every socket the calling thread connects while ``watching()`` once its deadline
passes: the library blocked in a read (requests/urllib3, httpx, http.client alike) sees the connection end
and returns at once, in the caller's own thread. Nothing is left running behind the caller: no thread goes on
reading an abandoned answer, and the watchdog thread ends with the cutoff. Sockets are seen through Python's
``socket.connect`` audit event (documented in the standard library's audit events table), so no HTTP
library's internals are patched; the cutoff keeps a duplicate of each socket's descriptor, so the shutdown
reaches the connection even after a TLS layer took the socket over.

``http_request``/``http_get`` are ``requests`` calls run under a cutoff: connect, headers and the whole body
arrive within ``timeout_s`` and at most ``max_bytes``, or a ``requests`` exception is raised
(``DeadlineExceeded``, a ``requests.Timeout``; ``TooLarge``), so callers' handlers keep working.

What a cutoff cannot end: a name lookup (``getaddrinfo``) runs before any socket exists and is bounded by
the system resolver's own timeout and attempts (resolv.conf); a connect in progress at the deadline ends at
its own connect timeout (each call's is its whole deadline) and is shut down as soon as it connects.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import requests

#: The largest answer any status probe or check reads.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: After the deadline the watchdog shuts down again this often (a socket that connected after the first
#: shutdown), until the cutoff closes or the deadline has passed twice over.
RESHUT_INTERVAL_S = 0.05


class DeadlineExceeded(requests.Timeout):
    """The whole answer did not arrive within the overall deadline."""


class TooLarge(requests.RequestException):
    """The answer is larger than the limit."""


_watching = threading.local()


def _on_audit(event: str, args: tuple[Any, ...]) -> None:
    # every socket.connect in this thread while a cutoff watches belongs to that cutoff's operation
    if event == "socket.connect":
        cutoffs = getattr(_watching, "cutoffs", None)
        if cutoffs:
            for cutoff in cutoffs:
                cutoff.add(args[0])


sys.addaudithook(_on_audit)


class Cutoff:
    """Shut down, ``seconds`` after it opens, every socket registered with it (by ``watching()`` or
    ``add``); ``fired`` says whether the deadline passed. A context manager: leaving it stops the watchdog
    and releases the duplicated descriptors.

    >>> with Cutoff(5.0, "nothing") as cut:
    ...     cut.fired
    False
    """

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = max(0.0, seconds), what
        self._lock = threading.Lock()
        self._dups: list[socket.socket] = []
        self._closed = threading.Event()
        self._fired = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="deadline-cutoff", daemon=True)

    @property
    def fired(self) -> bool:
        return self._fired.is_set()

    def __enter__(self) -> Cutoff:
        self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the watchdog (it ends before this returns) and close the duplicated descriptors."""
        self._closed.set()
        if self._watchdog.is_alive() and self._watchdog is not threading.current_thread():
            self._watchdog.join()
        with self._lock:
            for dup in self._dups:
                dup.close()
            self._dups.clear()

    def add(self, sock: socket.socket) -> None:
        """Watch ``sock`` (shut at once when the deadline already passed)."""
        with contextlib.suppress(OSError):  # no descriptor left to duplicate: its per-read timeout remains
            dup = sock.dup()
            with self._lock:
                if self._closed.is_set():
                    dup.close()
                    return
                self._dups.append(dup)
                if self.fired:
                    _shut(dup)

    @contextlib.contextmanager
    def watching(self) -> Iterator[Cutoff]:
        """Every socket this thread connects inside the block is registered with this cutoff."""
        cutoffs = getattr(_watching, "cutoffs", None)
        if cutoffs is None:
            cutoffs = _watching.cutoffs = []
        cutoffs.append(self)
        try:
            yield self
        finally:
            cutoffs.remove(self)

    def _watch(self) -> None:
        if self._closed.wait(self.seconds):
            return
        self._fired.set()
        # a connect still in progress ends by its own timeout, at most the whole deadline again
        for _ in range(max(1, int(self.seconds / RESHUT_INTERVAL_S) + 1)):
            with self._lock:
                for dup in self._dups:
                    _shut(dup)
            if self._closed.wait(RESHUT_INTERVAL_S):
                return


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (yet), or already shut
        sock.shutdown(socket.SHUT_RDWR)


def http_request(
    method: str,
    url: str,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    json: Any = None,
    params: dict[str, Any] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> requests.Response:
    """``requests.request`` that gives up after ``timeout_s`` in all (connect, headers and every read of
    the body) and past ``max_bytes`` of body; the response has its body read (``.text``/``.json()`` work).
    Raises ``DeadlineExceeded`` at the deadline, ``TooLarge`` past the size, else what ``requests`` raises."""
    headers_in = False
    with Cutoff(timeout_s, url) as cut, requests.Session() as session:
        try:
            with cut.watching():
                r = session.request(
                    method, url, headers=headers, json=json, params=params, timeout=timeout_s, stream=True
                )
                headers_in = not cut.fired
                try:
                    body = bytearray()
                    for chunk in r.iter_content(chunk_size=65536):
                        body += chunk
                        if len(body) > max_bytes:
                            raise TooLarge(f"answer larger than {max_bytes} bytes from {url}")
                    r._content = bytes(body)  # what .text/.json() read
                finally:
                    r.close()
        except Exception as exc:  # noqa: BLE001 - whatever the cut socket made the library raise
            if cut.fired and not isinstance(exc, TooLarge):
                raise _late(timeout_s, url, headers_in) from None
            raise
        # a body without a length ends at the shutdown as if the server had closed it: that is no answer
        if cut.fired:
            raise _late(timeout_s, url, headers_in)
    return r


def _late(timeout_s: float, url: str, headers_in: bool) -> DeadlineExceeded:
    what = "complete answer" if headers_in else "answer's headers"
    return DeadlineExceeded(f"no {what} within {timeout_s:g} s from {url}")


def http_get(
    url: str,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> requests.Response:
    """``http_request("GET", ...)``."""
    return http_request("GET", url, timeout_s=timeout_s, headers=headers, params=params, max_bytes=max_bytes)


__all__ = [
    "MAX_RESPONSE_BYTES",
    "Cutoff",
    "DeadlineExceeded",
    "TooLarge",
    "http_get",
    "http_request",
]
