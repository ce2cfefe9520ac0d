"""Every request `check` sends is bounded: an overall deadline (not only a per-read timeout, which a server
trickling one byte at a time never trips) and a maximum response size (an endless body is cut, not read
into memory until the process dies).

    >>> from deploy.checking.bounded import get
    >>> r = get("http://127.0.0.1:8000/health", timeout_s=10)     # doctest: +SKIP
    >>> r.status_code                                            # doctest: +SKIP
    200

``get`` wraps ``requests.get`` (a stalled or oversized answer raises a ``requests`` exception, so callers'
handlers keep working); ``http_client`` gives the ``openai`` client an httpx client whose transport
(deploy.httpx_deadline.CutoffTransport) applies the same two bounds to every chat request, streamed or not.
"""

from __future__ import annotations

import math
from typing import Any

import requests

try:  # the openai client this toolkit pins ships its HTTP stack as httpx2; older ones use httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from deploy.deadline import MAX_RESPONSE_BYTES, DeadlineExceeded, TooLarge, http_get
from deploy.errors import InputError
from deploy.httpx_deadline import CutoffTransport

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


def http_client(deadline_s: float, max_bytes: int = MAX_RESPONSE_BYTES) -> httpx.Client:
    """An httpx client for ``openai.OpenAI(http_client=...)``: per-read timeout and overall deadline both
    ``deadline_s``, answers capped at ``max_bytes``."""
    return httpx.Client(transport=CutoffTransport(deadline_s, max_bytes=max_bytes), timeout=deadline_s)


__all__ = [
    "MAX_RESPONSE_BYTES",
    "CutoffTransport",
    "DeadlineExceeded",
    "TooLarge",
    "check_timeout",
    "get",
    "http_client",
]
