"""deploy.deadline's cutoff for httpx clients: the ``openai`` client of `check` and the ``huggingface_hub``
client of `download`/`upgrade` (both ship their HTTP stack as httpx2 in the versions this toolkit pins).

    >>> client = httpx.Client(transport=CutoffTransport(10.0), timeout=10.0)   # doctest: +SKIP
    >>> client.get("http://127.0.0.1:8000/v1/models").json()                   # doctest: +SKIP

Each request connects anew (no idle connection is kept), so its ``Cutoff`` sees its socket from the connect
on and shuts it down at the deadline: with ``whole=True`` (check) the whole answer, headers and body, must
arrive within ``deadline_s`` and ``max_bytes``; with ``whole=False`` (a download, whose body may rightly take
hours and has its own stall watchdog) only the status line and headers must. Either way the request ends in
the caller's thread with ``httpx.ReadTimeout`` (a ``TransportError``: callers that retry transport errors
retry it), and no thread or connection stays behind.
"""

from __future__ import annotations

from typing import Any

try:  # the openai and huggingface_hub versions this toolkit pins ship their HTTP stack as httpx2
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

from deploy.deadline import MAX_RESPONSE_BYTES, Cutoff


class _BoundedStream(httpx.SyncByteStream):
    """The body of one answer: cut at ``max_bytes``; at the cutoff's deadline a ``ReadTimeout`` (whatever
    the shut socket made the library raise, or a body without a length that just ended there)."""

    def __init__(self, inner: httpx.SyncByteStream, cut: Cutoff, max_bytes: int, url: str) -> None:
        self._inner, self._cut, self._max, self._url, self._seen = inner, cut, max_bytes, url, 0

    def __iter__(self):  # noqa: ANN204
        try:
            for chunk in self._inner:
                self._seen += len(chunk)
                if self._seen > self._max:
                    raise httpx.ReadError(f"answer larger than {self._max} bytes from {self._url}")
                yield chunk
        except Exception:
            if self._cut.fired:
                raise self._late() from None
            raise
        if self._cut.fired:
            raise self._late()

    def _late(self) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(f"no complete answer within {self._cut.seconds:g} s from {self._url}")

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._cut.close()


class CutoffTransport(httpx.HTTPTransport):
    """An httpx transport whose answers must arrive within ``deadline_s``: whole and at most ``max_bytes``
    (``whole=True``), or only their status line and headers (``whole=False``)."""

    def __init__(
        self,
        deadline_s: float,
        *,
        whole: bool = True,
        max_bytes: int = MAX_RESPONSE_BYTES,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("limits", httpx.Limits(max_keepalive_connections=0))
        super().__init__(**kwargs)
        self.deadline_s, self.whole, self.max_bytes = deadline_s, whole, max_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        cut = Cutoff(self.deadline_s, str(request.url)).__enter__()
        try:
            with cut.watching():
                response = super().handle_request(request)
        except Exception:
            cut.close()
            if cut.fired:
                raise self._no_headers(request) from None
            raise
        if self.whole:
            response.stream = _BoundedStream(response.stream, cut, self.max_bytes, str(request.url))
            return response
        cut.close()  # the headers are in: from here the caller's own timeouts and watchdog apply
        if cut.fired:  # headers that "ended" at the shutdown are no headers
            response.close()
            raise self._no_headers(request)
        return response

    def _no_headers(self, request: httpx.Request) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(
            f"no answer's headers within {self.deadline_s:g} s from {request.url}", request=request
        )


__all__ = ["CutoffTransport"]
