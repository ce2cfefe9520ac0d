"""A stand-in for a router in its prefill/decode mode, in front of fake role servers, for `check`'s KV
transfer test: a real HTTP process on loopback.

    python tests/helpers/pd_front.py --prefill URL [--prefill URL ...] --decode URL [--decode URL ...]
    # prints: PD FRONT listening on http://127.0.0.1:PORT

Each ``POST /v1/chat/completions`` goes to one prefill (its answer read and dropped) and then to one
decode, whose answer the client gets, the way vllm-router's prefill/decode flow sends a request; each role
is taken in turn (round robin). ``GET`` paths go to the first decode. Why a stand-in: the real routers'
prefill/decode mode is the router's own test (tests/test_router_pd.py), and what this test checks is the
reading of each role's transfer counters around the suite; no engine here runs a split on CPU, so the
servers behind it are deploy/fakes/faultserver.py with ``--pd-role``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BANNER = "PD FRONT"
TIMEOUT_S = 30


class Front(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], prefill: list[str], decode: list[str]) -> None:
        super().__init__(address, Handler)
        self.decode_urls = decode
        self._prefill, self._decode = itertools.cycle(prefill), itertools.cycle(decode)
        self._lock = threading.Lock()

    def next_pair(self) -> tuple[str, str]:
        with self._lock:
            return next(self._prefill), next(self._decode)


def _forward(url: str, method: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            return r.status, r.headers.get("Content-Type", "application/json"), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", "application/json"), exc.read()


class Handler(BaseHTTPRequestHandler):
    server: Front

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(f"[pd front] {self.command} {self.path}\n")

    def _headers(self) -> dict[str, str]:
        keep = ("Content-Type", "Authorization")
        return {k: v for k in keep if (v := self.headers.get(k))}

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._reply(*_forward(self.server.decode_urls[0] + self.path, "GET", None, self._headers()))

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        prefill, decode = self.server.next_pair()
        status, content_type, answer = _forward(prefill + self.path, "POST", body, self._headers())
        if status != 200:  # a prefill that failed answers for the request, as the routers do
            return self._reply(status, content_type, answer)
        self._reply(*_forward(decode + self.path, "POST", body, self._headers()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefill", action="append", required=True)
    ap.add_argument("--decode", action="append", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    front = Front(
        ("127.0.0.1", args.port), [u.rstrip("/") for u in args.prefill], [u.rstrip("/") for u in args.decode]
    )
    host, port = front.server_address[:2]
    print(f"{BANNER} listening on http://{host}:{port}", flush=True)
    try:
        front.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        front.server_close()


if __name__ == "__main__":
    main()
