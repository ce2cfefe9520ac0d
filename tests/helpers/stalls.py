"""A loopback HTTP server that stalls in the header phase, for the deadline tests (issue 27).

    >>> with StallServer(Stall("header-bytes", 0.1), {"/health": (200, b"ok")}) as server:  # doctest: +SKIP
    ...     requests.get(server.url + "/metrics", timeout=5)  # never ends on a per-read timeout
    >>> server.lifetimes()                                       # doctest: +SKIP
    [3.01]

No real engine trickles its status line or headers one byte at a time (that is the fault under test), so
this small server is the only way to produce it; it is a real TCP server on 127.0.0.1 that the verbs, run as
real processes or in-process, talk to. Paths in ``answers`` get a whole answer at once (so a verb gets past
its liveness probe to the reader under test); every other request gets the stall. The server watches each
stalled connection for the client's close between trickled bytes, so ``lifetimes()`` says how long each
stalled connection stayed open: a reader that abandons its call but keeps the socket (a thread reading on)
shows up as a connection that outlives the reader's deadline.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass

from hypothesis import strategies as st

#: How the answer stalls: the status line itself one byte at a time; the status line whole, then one
#: header that never ends, one byte at a time; the status line, then complete header lines one at a time
#: (the client reads a line at once, and each arrives well within any per-read timeout).
PHASES = ("status-line", "header-bytes", "header-lines")


@dataclass(frozen=True)
class Stall:
    """One header-phase stall: its phase (PHASES) and the pause between trickled pieces (seconds, always
    well below every per-read timeout, so only a whole-operation deadline ends it)."""

    phase: str
    interval_s: float

    def pieces(self) -> list[bytes]:
        """What is sent before the endless part, piece by piece."""
        status = b"HTTP/1.1 200 OK\r\n"
        if self.phase == "status-line":
            return [status[i : i + 1] for i in range(len(status))]
        if self.phase == "header-bytes":
            return [status, b"X-Stall: "]
        return [status]

    def endless(self, n: int) -> bytes:
        """The ``n``th piece of the part that never ends."""
        return b"X-Stall-%d: 1\r\n" % n if self.phase == "header-lines" else b"a"


#: Generated stalls: every phase, paced from 50 ms to 400 ms.
STALLS = st.builds(
    Stall,
    phase=st.sampled_from(PHASES),
    interval_s=st.sampled_from([0.05, 0.1, 0.2, 0.4]),
)


class StallServer:
    """``Stall`` on every request to a path not in ``answers`` (``{path: (status, body)}``)."""

    def __init__(self, stall: Stall, answers: dict[str, tuple[int, bytes]] | None = None) -> None:
        self.stall = stall
        self.answers = answers or {}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._opened: dict[int, float] = {}
        self._closed: dict[int, float] = {}
        self._threads: list[threading.Thread] = []
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StallServer:
        accept = threading.Thread(target=self._accept, name="stall-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._listener.close()

    def lifetimes(self) -> list[float]:
        """Seconds each stalled connection stayed open (the open ones: until now)."""
        now = time.monotonic()
        with self._lock:
            return [self._closed.get(n, now) - t for n, t in self._opened.items()]

    def stalled(self) -> int:
        """How many requests got the stall."""
        with self._lock:
            return len(self._opened)

    def wait_all_closed(self, timeout_s: float) -> bool:
        """True once the client closed every stalled connection (waits on the close, up to ``timeout_s``)."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._closed) == len(self._opened), timeout_s)

    def _accept(self) -> None:
        n = 0
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        with conn:
            try:
                request = conn.recv(65536)
            except OSError:
                return
            path = request.split(b" ", 2)[1].decode("latin-1") if request.count(b" ") >= 2 else "/"
            if path in self.answers:
                status, body = self.answers[path]
                with_length = b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                conn.sendall(
                    b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n" % status + with_length + body
                )
                return
            with self._lock:
                self._opened[n] = time.monotonic()
            try:
                pieces = iter(self.stall.pieces())
                i = 0
                while not self._stop.is_set():
                    piece = next(pieces, None)
                    conn.sendall(piece if piece is not None else self.stall.endless(i))
                    i += piece is None
                    if self._closed_by_client(conn):
                        break
            except OSError:  # reset by the client
                pass
            with self._lock:
                self._closed[n] = time.monotonic()
                self._lock.notify_all()

    def _closed_by_client(self, conn: socket.socket) -> bool:
        """Wait one interval for the client's close (what it still sends, a request body, is read)."""
        conn.settimeout(self.stall.interval_s)
        try:
            return conn.recv(65536) == b""
        except TimeoutError:
            return False


def models_answer(model: str) -> tuple[int, bytes]:
    """A ``/v1/models`` answer listing ``model``."""
    return 200, json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode()
