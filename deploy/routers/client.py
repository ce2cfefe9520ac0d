"""Talk to a running router: its view of the workers, taking one out and back (a rolling upgrade's drain),
its readiness, and the requests it has in flight per worker. The routes and metric names are the router's
data (``deploy.routers.base.Router``), so one client serves vllm-router and sglang-router.

    >>> client = RouterClient("http://127.0.0.1:8000", metrics_url="http://127.0.0.1:29000",
    ...                       program="sglang-router")
    >>> client.ready()  # doctest: +SKIP
    True
    >>> [(w.url, w.healthy, w.in_flight) for w in client.workers()]  # doctest: +SKIP
    [('http://127.0.0.1:8001', True, 0), ('http://127.0.0.1:8002', True, 1)]

Both routers answer, found by experiment (docs/explanation/router.md): ``GET /readiness`` (200
``{"status": "ready", "healthy_workers": n, "total_workers": m}`` once a worker is healthy, else 503),
``GET /liveness`` (200 ``OK``), ``GET /workers`` (each worker's ``url``, ``is_healthy``, ``load``: the
requests the router has in flight on it, and its ``id``). Taking a worker out and back differs
(``Router.remove_worker_route``, ``Router.add_worker_route``): vllm-router 0.1.17 has ``POST
/remove_worker?url=`` and ``POST /add_worker?url=``; sglang-router 0.3.2 answers those 404 and has
``DELETE /workers/{id}`` and ``POST /workers`` with ``{"url", "model_id", "api_key"}`` (202, done in the
background). Neither removal cuts requests already in flight. vllm-router keeps counting a removed worker's
requests in ``vllm_router_running_requests{worker}`` down to 0; sglang-router resets
``smg_worker_requests_active`` at the removal, but counts each finished request in
``smg_worker_cb_outcomes_total{worker}`` on, so a drain there waits until that counter has grown by the
in-flight count last seen before the worker left (``Router.drain_counter``). With a key every endpoint that
touches the workers wants ``Authorization: Bearer <key>``; the metrics port takes none.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import requests

from deploy.deadline import http_get, http_request
from deploy.errors import RouterRequestError
from deploy.routers import registry
from deploy.routers.argv import worker_url
from deploy.routers.base import Router

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_WORKER = re.compile(r'(?:^|,)worker="(?P<worker>[^"]*)"')


@dataclass(frozen=True)
class WorkerState:
    """One worker as the router sees it."""

    url: str
    healthy: bool
    #: requests the router has in flight on this worker (``load`` in ``/workers``)
    in_flight: int
    #: the router's own id for it (sglang-router's ``DELETE /workers/{id}`` takes it)
    id: str = ""


def parse_worker_series(text: str) -> dict[str, dict[str, float]]:
    """``{metric: {worker URL: value}}`` from Prometheus text: every series with a ``worker`` label, its
    other labels summed over (``smg_worker_cb_outcomes_total`` per outcome becomes per worker).

    >>> parse_worker_series('a{worker="u",outcome="success"} 2\\na{worker="u",outcome="failure"} 1\\nb 3')
    {'a': {'u': 3.0}}
    """
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        worker = _WORKER.search(found["labels"]) if found else None
        if found and worker:
            series = out.setdefault(found["name"], {})
            series[worker["worker"]] = series.get(worker["worker"], 0.0) + float(found["value"])
    return out


class RouterClient:
    """A running ``program`` (a router name or Router) at ``url``, its metrics at ``metrics_url``, with the
    key when it has one."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        metrics_url: str | None = None,
        timeout_s: float = 10,
        *,
        program: Router | str,
    ) -> None:
        self.url = url.rstrip("/")
        self.metrics_url = metrics_url.rstrip("/") if metrics_url else None
        self.timeout_s = timeout_s
        self.program = program if isinstance(program, Router) else registry.get(program)
        self._key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        try:
            # the whole answer within the timeout: a router that stalls its headers hangs no verb
            return http_request(
                method, self.url + path, json=body, headers=self._headers, timeout_s=self.timeout_s
            )
        except requests.RequestException as exc:
            raise RouterRequestError(f"router {self.url}{path}: {exc.__class__.__name__}") from None

    def _ok(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        reply = self._call(method, path, body)
        # 202: sglang-router accepted the change and applies it in the background
        if reply.status_code not in (200, 201, 202):
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
        """``/readiness``'s body (``status``, and ``healthy_workers``/``total_workers`` or ``reason``), 200
        or 503 alike."""
        reply = self._call("GET", "/readiness")
        if reply.status_code not in (200, 503):
            raise RouterRequestError(f"router GET /readiness: HTTP {reply.status_code}")
        return reply.json()

    def workers(self) -> list[WorkerState]:
        """Every worker the router routes to, with its health and in-flight count (``GET /workers``)."""
        body = self._ok("GET", "/workers").json()
        return [
            WorkerState(
                url=w["url"],
                healthy=bool(w["is_healthy"]),
                in_flight=int(w.get("load", 0)),
                id=str(w.get("id", "")),
            )
            for w in body.get("workers", [])
        ]

    def _route(self, route: str, url: str) -> tuple[str, str]:
        method, path = route.split(" ", 1)
        ident = ""
        if "{id}" in path:
            ident = next((w.id for w in self.workers() if w.url == url), "")
            if not ident:
                raise RouterRequestError(f"router {self.url}: no worker {url}")
        return method, path.format(url=urllib.parse.quote(url, safe=""), id=urllib.parse.quote(ident))

    def remove_worker(self, url: str) -> None:
        """Stop routing new requests to ``url``; the ones in flight there finish."""
        self._ok(*self._route(self.program.remove_worker_route, worker_url(url)))

    def served_model(self, url: str) -> str | None:
        """The first model ``url`` (a worker) lists on its ``/v1/models``, asked with the key."""
        try:
            data = http_get(f"{url}/v1/models", headers=self._headers, timeout_s=self.timeout_s).json()
            return str(data["data"][0]["id"])
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
            return None

    def add_worker(self, url: str) -> None:
        """Route to ``url`` again (the router checks its health first); sglang-router gets the model the
        worker serves and the key, as the launcher registers it."""
        method, path = self._route(self.program.add_worker_route, worker_url(url))
        body = None
        if self.program.add_worker_json:
            fields = {"url": url, "model_id": self.served_model(url), "api_key": self._key}
            body = {k: v for k, v in fields.items() if v}
        self._ok(method, path, body)

    def metrics(self) -> dict[str, dict[str, float]]:
        """The router's per-worker gauges and counters: ``{metric name: {worker URL: value}}``."""
        if not self.metrics_url:
            raise RouterRequestError("router metrics: no metrics URL given")
        try:
            reply = http_get(self.metrics_url + "/metrics", timeout_s=self.timeout_s)
        except requests.RequestException as exc:
            raise RouterRequestError(f"router metrics {self.metrics_url}: {exc.__class__.__name__}") from None
        return parse_worker_series(reply.text)

    def _series(self, key: str, url: str) -> float:
        return self.metrics().get(self.program.metrics[key], {}).get(url, 0.0)

    def in_flight(self, url: str) -> int:
        """Requests the router has in flight on ``url`` (``Router.metrics["running_requests"]``; 0 when the
        router never sent it one, and on sglang-router once the worker is removed)."""
        return int(self._series("running_requests", url))

    def drain(self, url: str, deadline_s: float, poll_s: float = 0.2) -> bool:
        """Remove ``url`` from the router and wait until its in-flight requests reach 0 (True) or the
        deadline passes (False); the worker stays out of the router either way."""
        end = time.monotonic() + deadline_s
        counter = self.program.drain_counter
        if counter is None:
            self.remove_worker(url)
            finished = lambda: self.in_flight(url) == 0  # noqa: E731
        else:
            last = self._last_load(url, counter, end, poll_s)
            finished = lambda: self._series(counter, url) - last[1] >= last[0]  # noqa: E731
        while not finished():
            if time.monotonic() >= end:
                return False
            time.sleep(poll_s)
        return True

    def _snapshot(self, url: str, counter: str) -> tuple[int, float] | None:
        """(in-flight count, finished counter) of ``url`` at one instant (the counter read on both sides of
        the count, retried until it did not move), None once the router no longer lists it."""
        while True:
            before = self._series(counter, url)
            load = next((w.in_flight for w in self.workers() if w.url == url), None)
            if load is None:
                return None
            if self._series(counter, url) == before:
                return load, before

    def _last_load(self, url: str, counter: str, end: float, poll_s: float) -> tuple[int, float]:
        """Remove ``url`` and return (its in-flight count, its finished counter) as last seen before the
        router let it go: requests it had then finish after, none are added."""
        seen = self._snapshot(url, counter) or (0, self._series(counter, url))
        self.remove_worker(url)
        while time.monotonic() < end:
            now = self._snapshot(url, counter)
            if now is None:
                return seen
            seen = now
            time.sleep(poll_s)
        return seen


__all__ = ["RouterClient", "RouterRequestError", "WorkerState", "parse_worker_series"]
