"""What a check run costs, and the limits it keeps to: a request budget, bounded concurrency, 429 handling.

    >>> budget = Budget(max_requests=10)
    >>> meter = Meter("candidate", budget, concurrency=2)
    >>> meter.add_usage({"usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}})
    >>> meter.summary()["total_tokens"], budget.remaining
    (15, 10)

Every chat request `check` sends goes through :func:`send`: it takes one request from the run's budget
(``--max-requests``; retries count too), waits for a free slot among ``concurrency`` in flight, and on
HTTP 429 waits what the server's ``Retry-After`` asks (seconds or an HTTP date) when that is at most
``max_wait_s``, up to ``max_retries`` times; a longer ask fails the request at once. Token counts come
from each answer's ``usage`` (streams ask for it with ``stream_options.include_usage``).
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from deploy.errors import BudgetExhausted, RateLimited


class Budget:
    """A request budget shared by every endpoint of one run (None: no limit)."""

    def __init__(self, max_requests: int | None = None) -> None:
        self.max_requests = max_requests
        self.used = 0
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int | None:
        return None if self.max_requests is None else max(0, self.max_requests - self.used)

    def take(self) -> None:
        with self._lock:
            if self.max_requests is not None and self.used >= self.max_requests:
                raise BudgetExhausted(f"request budget of {self.max_requests} spent (--max-requests)")
            self.used += 1


class Meter:
    """One endpoint's counters: requests sent, 429s, seconds waited, tokens; and its concurrency gate."""

    def __init__(
        self,
        label: str,
        budget: Budget | None = None,
        concurrency: int = 4,
        max_wait_s: float = 30.0,
        max_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.label = label
        self.budget = budget or Budget()
        self.concurrency = concurrency
        self.max_wait_s = max_wait_s
        self.max_retries = max_retries
        self._sleep = sleep
        self._gate = threading.BoundedSemaphore(max(1, concurrency))
        self._lock = threading.Lock()
        self.requests = 0
        self.rate_limited = 0
        self.waited_s = 0.0
        self.tokens = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self.answers_without_usage = 0

    def add_usage(self, payload: dict[str, Any] | None) -> None:
        """Add one answer's ``usage`` (a chat.completion, or a stream chunk that carries it)."""
        usage = (payload or {}).get("usage")
        with self._lock:
            if not isinstance(usage, dict):
                self.answers_without_usage += 1
                return
            for key in self.tokens:
                if isinstance(usage.get(key), int):
                    self.tokens[key] += usage[key]

    def backoff(self, header: str | None, attempt: int) -> float | None:
        """Count one 429 and wait what its ``Retry-After`` asks (None, not waiting: longer than allowed,
        or retries spent). Without the header: 1, 2, 4... seconds, capped by ``max_wait_s``."""
        with self._lock:
            self.rate_limited += 1
        wait = retry_after_s(header)
        if wait is None:
            wait = min(self.max_wait_s, 2.0**attempt)
        if wait > self.max_wait_s or attempt >= self.max_retries:
            return None
        with self._lock:
            self.waited_s += wait
        self._sleep(wait)
        return wait

    def summary(self) -> dict[str, Any]:
        """The counters as the report shows them."""
        return {
            "endpoint": self.label,
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "waited_s": round(self.waited_s, 3),
            **self.tokens,
            "answers_without_usage": self.answers_without_usage,
            "concurrency": self.concurrency,
        }


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta-seconds or an HTTP date (RFC 9110 10.2.3).

    >>> retry_after_s("2"), retry_after_s(None), retry_after_s("soon")
    (2.0, None, None)
    >>> retry_after_s("Mon, 30 Nov 2026 00:00:10 GMT", datetime(2026, 11, 30, tzinfo=UTC))
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def send(meter: Meter, call: Callable[[], Any]) -> Any:
    """Run ``call`` (one chat request through the openai client) within the meter's limits.

    Raises BudgetExhausted when the budget is spent, and the client's own error when a 429 asks for a
    longer wait than allowed or retries run out (its message says so).
    """
    import openai

    attempt = 0
    dropped = 0
    while True:
        meter.budget.take()
        with meter._lock:
            meter.requests += 1
        try:
            with meter._gate:
                return call()
        except openai.RateLimitError as exc:
            header = exc.response.headers.get("retry-after") if exc.response is not None else None
            if meter.backoff(header, attempt) is None:
                raise RateLimited(
                    f"HTTP 429 rate limited {attempt + 1} time(s); Retry-After {header or 'absent'}"
                    f" (waits up to {meter.max_wait_s:g} s, {meter.max_retries} retries allowed)"
                ) from None
            attempt += 1
        except openai.APITimeoutError:
            raise
        except openai.APIConnectionError:
            # one retry: a keep-alive connection right after a stream is sometimes dropped (llama-server)
            if dropped:
                raise
            dropped += 1
