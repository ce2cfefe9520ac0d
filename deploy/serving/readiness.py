"""Is the engine ready? One HTTP probe of its health endpoint, read with the engine's own semantics.

    >>> from deploy.serving.readiness import health_url, probe
    >>> url = health_url("llama.cpp", "0.0.0.0", 8001)
    >>> url
    'http://127.0.0.1:8001/health'
    >>> probe(url, "llama.cpp").state  # doctest: +SKIP
    'loading'

How each engine says "not yet" (see ../shared/reference/kimi-k2.5.md §5):

- vLLM: the port does not accept until the model is loaded, then ``/health`` 200 (503 if the engine died);
- SGLang (and KTransformers, which runs SGLang): ``/health`` 503 until warm-up ends, then 200;
- llama-server: the port opens early, every path answers 503 ``Loading model`` until ready, then 200.

So "ready" is a 200 from ``/health`` for all of them; what differs is how the waiting state reads in the
progress line and whether a 503 is expected (loading) or a sign of trouble (vLLM after load).

A worker that serves no HTTP but listens (llama.cpp's ``rpc-server``) is ready when a socket listens on its
port. That is read from this host's socket table (`probe_listen`, `wait_listening`), not by connecting:
rpc-server serves one client at a time with a listen backlog of one, so while the head holds its session a
probe connection is never accepted, and a few of them fill the backlog until connects time out. From another
host (the head's `check`), `rpc_reachable` first looks for the head's own session to the worker and
connects only when there is none.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from deploy.deadline import Cutoff

READY = "ready"
REFUSED = "refused"  # nothing accepts on the port yet
LOADING = "loading"  # the engine answers but says it is not ready (503 while loading/warming up)
UNHEALTHY = "unhealthy"  # an answer that is neither 200 nor the engine's loading answer
NO_ANSWER = "no_answer"  # connected, but no HTTP answer within the probe timeout

#: Backoff between probes: start small so a fast engine is seen quickly, never above 250 ms.
FIRST_INTERVAL_S = 0.02
MAX_INTERVAL_S = 0.25
BACKOFF = 1.5
#: How often the engine's activity (its log) is looked at between probes.
WATCH_SLICE_S = 0.01


@dataclass(frozen=True)
class EngineHealth:
    """How one engine reports readiness: the path, and what its waiting states mean."""

    path: str
    waiting_status: tuple[int, ...]  # HTTP statuses that mean "still loading", not "broken"
    refused_means: str
    loading_means: str


ENGINE_HEALTH: dict[str, EngineHealth] = {
    "vllm": EngineHealth(
        "/health",
        (),
        "loading (vLLM answers only once the model is loaded)",
        "503: the engine is not healthy",
    ),
    "sglang": EngineHealth(
        "/health", (503,), "starting (port not open yet)", "warming up (503 until warm-up)"
    ),
    "ktransformers": EngineHealth(
        "/health", (503,), "starting (port not open yet)", "warming up (503 until warm-up)"
    ),
    "llama.cpp": EngineHealth("/health", (503,), "starting (port not open yet)", "503 Loading model"),
    # llama.cpp's rpc-server: no HTTP at all, an accepting port is all it says
    "rpc": EngineHealth("", (), "starting (rpc-server port not open yet)", "not accepting"),
}


@dataclass(frozen=True)
class Probe:
    """One probe: a state (READY, REFUSED, LOADING, UNHEALTHY, NO_ANSWER), the HTTP status, a note."""

    state: str
    status: int | None = None
    detail: str = ""

    def describe(self, engine: str) -> str:
        """The waiting state in words, as the engine means it."""
        h = engine_health(engine)
        if self.state == REFUSED:
            return h.refused_means
        if self.state == LOADING:
            return h.loading_means
        if self.state == UNHEALTHY:
            return f"HTTP {self.status} {self.detail}".strip() if self.status is not None else self.detail
        if self.state == NO_ANSWER:
            return self.detail if engine == "rpc" and self.detail else "port open, no HTTP answer yet"
        return "ready"


def engine_health(engine: str) -> EngineHealth:
    """The readiness semantics of ``engine``; unknown engines get llama-server's (any 503 is loading)."""
    return ENGINE_HEALTH.get(engine, ENGINE_HEALTH["llama.cpp"])


def probe_host(bind_host: str) -> str:
    """Where to connect for a server bound to ``bind_host``: a wildcard bind is probed on loopback.

    >>> probe_host("0.0.0.0"), probe_host("10.0.0.5")
    ('127.0.0.1', '10.0.0.5')
    """
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host in ("::", "[::]"):
        return "::1"
    return bind_host


def health_url(engine: str, host: str, port: int) -> str:
    """The health URL of an engine bound to ``host:port``."""
    h = probe_host(host)
    if ":" in h:
        h = f"[{h}]"
    return f"http://{h}:{port}{engine_health(engine).path}"


def probe(url: str, engine: str, timeout_s: float = 2.0) -> Probe:
    """GET the health URL once (``Connection: close``) and classify the answer for ``engine``."""
    try:
        parsed = http.client.urlsplit(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    except ValueError as exc:  # "http://[::1", a port that is not a number
        return Probe(UNHEALTHY, detail=f"not a URL ({exc})")
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    # the whole probe, headers included, ends at timeout_s: a server trickling its status line one byte
    # at a time never trips the per-read timeout, so the cutoff shuts the socket down under it; an answer
    # cut there (its headers end at the shutdown as if complete) is no answer, never a 200
    with Cutoff(timeout_s, url) as cut:
        try:
            with cut.watching():
                conn.request("GET", parsed.path or "/", headers={"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read(512).decode("utf-8", "replace").strip()
        except ConnectionRefusedError:
            return Probe(REFUSED)
        except TimeoutError:
            return Probe(NO_ANSWER)
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            # reset/closed mid-answer happens while a server is still coming up
            return Probe(NO_ANSWER, detail="" if cut.fired else exc.__class__.__name__)
        finally:
            conn.close()
        if cut.fired:
            return Probe(NO_ANSWER)
    if resp.status == 200:
        return Probe(READY, 200, body[:80])
    if resp.status in engine_health(engine).waiting_status:
        return Probe(LOADING, resp.status, body[:80])
    return Probe(UNHEALTHY, resp.status, body[:80])


def probe_tcp(host: str, port: int, timeout_s: float = 2.0) -> Probe:
    """Connect once to ``host:port`` and close: READY when it accepts, else why not (in ``detail``).

    >>> probe_tcp("127.0.0.1", 9).state  # doctest: +SKIP
    'refused'
    """
    try:
        with socket.create_connection((probe_host(host), port), timeout=timeout_s):
            return Probe(READY, detail="accepting")
    except ConnectionRefusedError:
        return Probe(REFUSED, detail="connection refused")
    except TimeoutError:
        return Probe(NO_ANSWER, detail=f"no answer in {timeout_s:g} s")
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "") or exc.__class__.__name__
        return Probe(UNHEALTHY, detail=reason.lower())


def _same_host(ip: str, host: str, wildcard: bool) -> bool:
    ip = ip.removeprefix("::ffff:")
    return ip == host or (wildcard and ip in ("0.0.0.0", "::"))


def _tcp_table() -> list[Any]:
    with contextlib.suppress(psutil.Error, OSError):
        return list(psutil.net_connections(kind="tcp"))
    return []


def probe_listen(host: str, port: int) -> Probe:
    """READY when a socket on this host listens on ``host:port`` (or on a wildcard address and ``port``).

    >>> probe_listen("127.0.0.1", 9).state  # doctest: +SKIP
    'refused'
    """
    if any(
        c.status == psutil.CONN_LISTEN
        and c.laddr
        and c.laddr.port == port
        and _same_host(c.laddr.ip, host, True)
        for c in _tcp_table()
    ):
        return Probe(READY, detail="listening")
    return Probe(REFUSED, detail="not listening")


def session_to(host: str, port: int) -> bool:
    """Whether a process on this host holds an established TCP connection to ``host:port``."""
    return any(
        c.status == psutil.CONN_ESTABLISHED
        and c.raddr
        and c.raddr.port == port
        and _same_host(c.raddr.ip, host, False)
        for c in _tcp_table()
    )


def rpc_reachable(host: str, port: int, timeout_s: float = 5.0) -> Probe:
    """Is the rpc-server at ``host:port`` there, seen from this host (the head)?

    An established session from here (the head's llama-server holds one while it serves) says yes without
    touching the worker; otherwise one connection is tried. A worker whose process is gone closes that
    session (it leaves ESTABLISHED) and refuses the connection.

    >>> rpc_reachable("10.0.0.2", 50052).detail  # doctest: +SKIP
    'connection refused'
    """
    if session_to(host, port):
        return Probe(READY, detail="the head holds a session to it")
    return probe_tcp(host, port, timeout_s)


@dataclass(frozen=True)
class WaitResult:
    """How a wait ended: ``ready`` True, or why not (``exited`` with ``returncode``, or the deadline)."""

    ready: bool
    elapsed_s: float
    polls: int
    last: Probe
    returncode: int | None = None  # set when the process exited while waiting

    @property
    def timed_out(self) -> bool:
        return not self.ready and self.returncode is None


def wait_ready(
    url: str,
    engine: str,
    deadline_s: float,
    exit_status: Callable[[], int | None],
    on_progress: Callable[[float, Probe], None] | None = None,
    progress_every_s: float = 5.0,
    activity: Callable[[], int] | None = None,
) -> WaitResult:
    """Poll ``url`` until a 200, the process exits, or ``deadline_s`` passes.

    ``exit_status()`` returns the engine's exit status once it has exited, else None; it is asked before
    every probe so a crash ends the wait at once. Probes back off from 20 ms to at most 250 ms.
    ``activity()`` (e.g. the engine log's size) is watched between probes: when it changes the engine is
    doing something (engines log the moment they are ready), so the next probe goes out at once and the
    backoff starts again from 20 ms. ``on_progress(elapsed, last_probe)`` is called every
    ``progress_every_s`` seconds.

        >>> r = wait_ready("http://127.0.0.1:8001/health", "llama.cpp", 60, proc.poll)  # doctest: +SKIP
        >>> r.ready, round(r.elapsed_s)  # doctest: +SKIP
        (True, 3)
    """
    return _wait(
        lambda timeout_s: probe(url, engine, timeout_s=timeout_s),
        deadline_s,
        exit_status,
        on_progress,
        progress_every_s,
        activity,
    )


def wait_listening(
    host: str,
    port: int,
    deadline_s: float,
    exit_status: Callable[[], int | None],
    on_progress: Callable[[float, Probe], None] | None = None,
    progress_every_s: float = 5.0,
) -> WaitResult:
    """Like `wait_ready`, for a worker without HTTP: poll until a socket here listens on ``host:port``.

    >>> wait_listening("10.0.0.2", 50052, 300, proc.poll).ready  # doctest: +SKIP
    True
    """
    return _wait(
        lambda _timeout_s: probe_listen(host, port),
        deadline_s,
        exit_status,
        on_progress,
        progress_every_s,
        None,
    )


def _wait(
    check: Callable[[float], Probe],
    deadline_s: float,
    exit_status: Callable[[], int | None],
    on_progress: Callable[[float, Probe], None] | None,
    progress_every_s: float,
    activity: Callable[[], int] | None,
) -> WaitResult:
    t0 = time.monotonic()
    interval = FIRST_INTERVAL_S
    next_progress = progress_every_s
    polls = 0
    last = Probe(REFUSED)
    while True:
        elapsed = time.monotonic() - t0
        rc = exit_status()
        if rc is not None:
            return WaitResult(False, elapsed, polls, last, returncode=rc)
        remaining = deadline_s - elapsed
        if remaining <= 0:
            return WaitResult(False, elapsed, polls, last)
        last = check(max(0.05, min(2.0, remaining)))
        polls += 1
        elapsed = time.monotonic() - t0
        if last.state == READY:
            return WaitResult(True, elapsed, polls, last)
        if on_progress is not None and elapsed >= next_progress:
            on_progress(elapsed, last)
            next_progress = elapsed + progress_every_s
        woke = _pause(max(0.0, min(interval, deadline_s - elapsed)), activity)
        interval = FIRST_INTERVAL_S if woke else min(MAX_INTERVAL_S, interval * BACKOFF)


def _pause(seconds: float, activity: Callable[[], int] | None) -> bool:
    """Sleep ``seconds``; return True early (after at least FIRST_INTERVAL_S) when ``activity()`` changes."""
    if activity is None or seconds <= FIRST_INTERVAL_S:
        time.sleep(seconds)
        return False
    end = time.monotonic() + seconds
    mark = activity()
    time.sleep(FIRST_INTERVAL_S)
    while (left := end - time.monotonic()) > 0:
        if activity() != mark:
            return True
        time.sleep(min(WATCH_SLICE_S, left))
    return False
