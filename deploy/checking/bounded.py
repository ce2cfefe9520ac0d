"""Every request `check` sends is bounded: an overall deadline (not only a per-read timeout, which a server
trickling one byte at a time never trips) and a maximum response size (an endless body is cut, not read
into memory until the process dies).

    >>> from deploy.checking.bounded import get
    >>> r = get("http://127.0.0.1:8000/health", timeout_s=10)     # doctest: +SKIP
    >>> r.status_code                                            # doctest: +SKIP
    200

``get`` wraps ``requests.get`` (a stalled or oversized answer raises a ``requests`` exception, so callers'
handlers keep working); ``http_client`` gives the ``openai`` client an httpx client whose transport applies
the same two bounds to every chat request, streamed or not.
"""

from __future__ import annotations

import math
import time
from typing import Any

import requests

try:  # the openai client this toolkit pins ships its HTTP stack as httpx2; older ones use httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from deploy.deadline import MAX_RESPONSE_BYTES, DeadlineExceeded, TooLarge, http_get, within
from deploy.errors import InputError

#: The longest `check --timeout` may be, in seconds.
MAX_TIMEOUT_S = 3600.0


def check_timeout(value: Any, what: str = "--timeout") -> float:
    """``check_timeout(120)`` -> 120.0; zero, negative, NaN, infinite or over an hour is InputError."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} {value!r}: not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TIMEOUT_S:
        raise InputError(f"{what} {value!r}: expected seconds in (0, {MAX_TIMEOUT_S:g}]")
    return seconds


def get(
    url: str,
    *,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    max_bytes: int = MAX_RESPONSE_BYTES,
) -> requests.Response:
    """``requests.get`` bounded in all, headers included (deploy.deadline.http_get)."""
    return http_get(url, timeout_s=timeout_s, headers=headers, max_bytes=max_bytes)


class _BoundedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, deadline: float, max_bytes: int, url: str) -> None:
        self._inner, self._deadline, self._max, self._url, self._seen = inner, deadline, max_bytes, url, 0

    def __iter__(self):  # noqa: ANN204
        for chunk in self._inner:
            self._seen += len(chunk)
            if self._seen > self._max:
                raise httpx.ReadError(f"answer larger than {self._max} bytes from {self._url}")
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout(f"no complete answer within the deadline from {self._url}")
            yield chunk

    def close(self) -> None:
        self._inner.close()


class BoundedTransport(httpx.HTTPTransport):
    """An httpx transport whose responses must arrive whole within ``deadline_s`` and ``max_bytes``."""

    def __init__(self, deadline_s: float, max_bytes: int = MAX_RESPONSE_BYTES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deadline_s, self.max_bytes = deadline_s, max_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.deadline_s
        response = within(
            self.deadline_s,
            lambda: super(BoundedTransport, self).handle_request(request),
            lambda: httpx.ReadTimeout(f"no answer's headers within {self.deadline_s:g} s", request=request),
        )
        response.stream = _BoundedStream(response.stream, deadline, self.max_bytes, str(request.url))
        return response


def http_client(deadline_s: float, max_bytes: int = MAX_RESPONSE_BYTES) -> httpx.Client:
    """An httpx client for ``openai.OpenAI(http_client=...)``: per-read timeout and overall deadline both
    ``deadline_s``, answers capped at ``max_bytes``."""
    return httpx.Client(transport=BoundedTransport(deadline_s, max_bytes), timeout=deadline_s)


__all__ = [
    "MAX_RESPONSE_BYTES",
    "BoundedTransport",
    "DeadlineExceeded",
    "TooLarge",
    "check_timeout",
    "get",
    "http_client",
    "within",
]
