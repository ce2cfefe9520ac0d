"""Talk to a running vllm-router: its view of the workers, taking one out and back (a rolling upgrade's
drain), its readiness, and the requests it has in flight per worker.

    >>> client = RouterClient("http://127.0.0.1:8000", metrics_url="http://127.0.0.1:29000")
    >>> client.ready()  # doctest: +SKIP
    True
    >>> [(w.url, w.healthy, w.in_flight) for w in client.workers()]  # doctest: +SKIP
    [('http://127.0.0.1:8001', True, 0), ('http://127.0.0.1:8002', True, 1)]

The endpoints are vllm-router 0.1.17's own, found by experiment (docs/explanation/router.md):
``GET /readiness`` (200 ``{"status": "ready", "healthy_workers": n, "total_workers": m}`` once a worker is
healthy, else 503), ``GET /liveness`` (200 ``OK``), ``GET /workers`` (each worker's ``url``,
``is_healthy`` and ``load``: the requests the router has in flight on it), ``POST /remove_worker?url=``
and ``POST /add_worker?url=`` (200 with a sentence; removal does not cut requests already in flight),
and on the metrics port ``vllm_router_running_requests{worker="<url>"}``, which keeps counting a removed
worker's requests down to 0: what a drain waits for. With a key (``Router.api_key_env``) every endpoint
of the router's port wants ``Authorization: Bearer <key>``; the metrics port takes none.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import requests

from deploy.errors import RouterRequestError
from deploy.routers.argv import worker_url

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{worker="(?P<worker>[^"]*)"\} (?P<value>\S+)$')


@dataclass(frozen=True)
class WorkerState:
    """One worker as the router sees it."""

    url: str
    healthy: bool
    #: requests the router has in flight on this worker (``load`` in ``/workers``)
    in_flight: int


class RouterClient:
    """A running router at ``url`` (its metrics at ``metrics_url``), with the key when it has one."""

    def __init__(
        self, url: str, api_key: str | None = None, metrics_url: str | None = None, timeout_s: float = 10
    ) -> None:
        self.url = url.rstrip("/")
        self.metrics_url = metrics_url.rstrip("/") if metrics_url else None
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(self, method: str, path: str, **params: str) -> requests.Response:
        try:
            return requests.request(
                method, self.url + path, params=params or None, headers=self._headers, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise RouterRequestError(f"router {self.url}{path}: {exc.__class__.__name__}") from None

    def _ok(self, method: str, path: str, **params: str) -> requests.Response:
        reply = self._call(method, path, **params)
        if reply.status_code != 200:
            text = " ".join(reply.text.split())[:200]
            raise RouterRequestError(f"router {method} {path}: HTTP {reply.status_code} {text}")
        return reply

    def live(self) -> bool:
        """Whether the router's own process answers (``/liveness``), whatever its workers."""
        try:
            return self._call("GET", "/liveness").status_code == 200
        except RouterRequestError:
            return False

    def ready(self) -> bool:
        """Whether the router answers ``/readiness`` 200: at least one healthy worker to route to."""
        try:
            return self._call("GET", "/readiness").status_code == 200
        except RouterRequestError:
            return False

    def readiness(self) -> dict[str, Any]:
        """``/readiness``'s body (``status``, ``healthy_workers``, ``total_workers``), 200 or 503 alike."""
        reply = self._call("GET", "/readiness")
        if reply.status_code not in (200, 503):
            raise RouterRequestError(f"router GET /readiness: HTTP {reply.status_code}")
        return reply.json()

    def workers(self) -> list[WorkerState]:
        """Every worker the router routes to, with its health and in-flight count (``GET /workers``)."""
        body = self._ok("GET", "/workers").json()
        return [
            WorkerState(url=w["url"], healthy=bool(w["is_healthy"]), in_flight=int(w.get("load", 0)))
            for w in body.get("workers", [])
        ]

    def remove_worker(self, url: str) -> None:
        """Stop routing new requests to ``url``; the ones in flight there finish (``POST /remove_worker``)."""
        self._ok("POST", "/remove_worker", url=worker_url(url))

    def add_worker(self, url: str) -> None:
        """Route to ``url`` again (``POST /add_worker``; the router checks its health first)."""
        self._ok("POST", "/add_worker", url=worker_url(url))

    def metrics(self) -> dict[str, dict[str, float]]:
        """The router's per-worker gauges and counters: ``{metric name: {worker URL: value}}``."""
        if not self.metrics_url:
            raise RouterRequestError("router metrics: no metrics URL given")
        try:
            reply = requests.get(self.metrics_url + "/metrics", timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise RouterRequestError(f"router metrics {self.metrics_url}: {exc.__class__.__name__}") from None
        out: dict[str, dict[str, float]] = {}
        for line in reply.text.splitlines():
            found = _SAMPLE.match(line)
            if found:
                out.setdefault(found["name"], {})[found["worker"]] = float(found["value"])
        return out

    def in_flight(self, url: str) -> int:
        """Requests the router has in flight on ``url``, removed from the router or not
        (``vllm_router_running_requests``; 0 when the router never sent it one)."""
        return int(self.metrics().get("vllm_router_running_requests", {}).get(url, 0))

    def drain(self, url: str, deadline_s: float, poll_s: float = 0.2) -> bool:
        """Remove ``url`` from the router and wait until its in-flight requests reach 0 (True) or the
        deadline passes (False); the worker stays out of the router either way."""
        self.remove_worker(url)
        end = time.monotonic() + deadline_s
        while self.in_flight(url) > 0:
            if time.monotonic() >= end:
                return False
            time.sleep(poll_s)
        return True


__all__ = ["RouterClient", "RouterRequestError", "WorkerState"]
