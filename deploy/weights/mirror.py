"""A small read-only server for staged weights that speaks the part of the Hub protocol huggingface_hub uses.

A staged repo is a folder holding a ``weights.lock`` (every folder ``kimi-deploy download`` writes is
one); ``stage_folder`` turns any local folder into one. The server answers what ``snapshot_download``
and ``hf_hub_download`` ask for::

    GET  /api/models/{repo}[/revision/{rev}]        repo info with the commit sha
    GET  /api/models/{repo}/tree/{rev}[/{dir}]      listing with sizes, git oids and LFS {oid, size}
    HEAD /{repo}/resolve/{rev}/{path}               X-Repo-Commit, ETag, size; LFS files: 302 to the
    GET  /{repo}/resolve/{rev}/{path}                 second origin with X-Linked-Etag / X-Linked-Size
    GET  /lfs/{repo}/{sha256}?exp=&sig=             on the second origin (own port, signed URL, no token),
                                                    Range -> 206, like the Hub's CDN

    >>> srv = MirrorServer(MirrorConfig(root="/models", port=0))   # doctest: +SKIP
    >>> srv.start(); srv.url                                          # doctest: +SKIP
    'http://127.0.0.1:41231'

Only files listed in a lock are served, paths with ``..``/absolute parts are refused, and a file that
resolves (through symlinks) outside the root is refused. Every response is logged as one JSON line with
the body bytes sent (the kill/resume test counts re-fetched bytes from it). The ``fault_*`` options are
fault injection for tests: they corrupt or cut what is served and are off unless asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from deploy import schema
from deploy.errors import InputError
from deploy.fsutil import write_destination
from deploy.weights.lockfile import (
    LOCK_NAME,
    REPO_PATTERN,
    Lock,
    LockedFile,
    git_blob_oid,
    read_lock,
    sha256_file,
    write_lock,
)

#: Files the Hub stores in LFS whatever their size (its default .gitattributes), plus anything large.
LFS_SUFFIXES = (
    ".safetensors",
    ".gguf",
    ".bin",
    ".pt",
    ".pth",
    ".onnx",
    ".h5",
    ".msgpack",
    ".model",
    ".tiktoken",
)
LFS_MIN_BYTES = 10 * 1024 * 1024
_CHUNK = 1024 * 1024
_URL_TTL_S = 3600


@dataclass
class StagedRepo:
    repo: str
    root: Path
    lock: Lock
    by_path: dict[str, LockedFile]
    by_sha: dict[str, LockedFile]


def discover_repos(root: str | Path) -> dict[str, StagedRepo]:
    """Staged repos under ``root``: ``root`` itself or ``root/<owner>/<name>`` holding a weights.lock.

    ``discover_repos("/models")`` -> {"moonshotai/Kimi-K2.5": StagedRepo(...)}; the repo id comes
    from the lock, so a downloaded weights folder is served under the repo it came from."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{base}: not a directory")
    candidates = [base / LOCK_NAME, *sorted(base.glob(f"*/*/{LOCK_NAME}"))]
    repos: dict[str, StagedRepo] = {}
    for lock_file in candidates:
        if not lock_file.is_file():
            continue
        lock = read_lock(lock_file.parent)
        repos[lock.repo] = StagedRepo(
            repo=lock.repo,
            root=lock_file.parent.resolve(),
            lock=lock,
            by_path={f.path: f for f in lock.files},
            by_sha={f.sha256: f for f in lock.files if f.sha256},
        )
    return repos


def _is_lfs(rel: str, size: int) -> bool:
    return rel.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES


def _safe_relpath(rel: str) -> bool:
    parts = rel.split("/")
    return (
        bool(rel)
        and not rel.startswith("/")
        and "\\" not in rel
        and all(p not in ("", ".", "..") for p in parts)
    )


def stage_folder(src: str | Path, repo: str, into: str | Path, *, revision: str = "main") -> Path:
    """Stage every file of ``src`` as repo ``repo`` under ``into/<owner>/<name>`` (hard links when the
    filesystem allows, copies otherwise) and write its weights.lock; returns the staged folder.

    ``stage_folder("~/gguf", "ggml-org/gemma-3-270m-GGUF", "/srv/mirror")``"""
    if repo.count("/") != 1 or not re.match(REPO_PATTERN, repo):
        raise InputError(f"--repo {repo!r}: expected owner/name (letters, digits, '.', '_', '-')")
    src_dir = Path(src).expanduser()
    if not src_dir.is_dir():
        raise InputError(f"{src_dir}: not a directory")
    root = Path(into).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    dest = schema.inside(root, repo, "--repo")  # a symlinked owner folder cannot lead out of --into either
    dest.mkdir(parents=True, exist_ok=True)
    files: list[LockedFile] = []
    for p in sorted(src_dir.rglob("*")):
        rel = p.relative_to(src_dir).as_posix()
        if not p.is_file() or rel == LOCK_NAME or any(part.startswith(".") for part in rel.split("/")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not (target.exists() and os.path.samefile(p, target)):
            target.unlink(missing_ok=True)
            try:
                os.link(p, target)
            except OSError:
                shutil.copy2(p, target)
        size = target.stat().st_size
        files.append(
            LockedFile(
                path=rel,
                size=size,
                sha256=sha256_file(target) if _is_lfs(rel, size) else None,
                git_oid=git_blob_oid(target, size),
            )
        )
    if not files:
        raise InputError(f"{src_dir}: no files to stage")
    # A staged folder has no git history: its "commit" is a digest of its content, stable across restagings.
    digest = hashlib.sha1("\n".join(f"{f.path} {f.size} {f.git_oid}" for f in files).encode()).hexdigest()
    write_lock(dest, Lock(repo=repo, commit=digest, files=files, revision=revision))
    return dest


@dataclass
class MirrorConfig:
    """How to serve. ``token`` (if set) is required as ``Authorization: Bearer`` on the main origin."""

    root: str | Path
    host: str = "127.0.0.1"
    port: int = 0
    lfs_port: int = 0
    token: str | None = None
    path_prefix: str = ""
    threads: int = 32
    log_path: str | Path | None = None
    # fault injection (tests only)
    fault_corrupt: list[str] = field(default_factory=list)
    fault_drop_after: int = 0
    fault_stall_after: int = 0
    fault_stall_s: float = 20.0
    throttle_bps: int = 0


class _BoundedThreadingServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose requests run on a fixed-size pool instead of one thread each."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type, threads: int, mirror: MirrorServer) -> None:
        # set before binding: a failed bind calls server_close(), which reads both
        self.open_sockets: set[Any] = set()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mirror")
        self.mirror = mirror
        try:
            super().__init__(addr, handler)
        except OSError as exc:
            self.pool.shutdown(wait=False)
            raise InputError(
                f"cannot listen on {addr[0]}:{addr[1]} ({exc.strerror}); pick another port (0 = any free)"
            ) from None

    def process_request(self, request: Any, client_address: Any) -> None:  # noqa: ANN401
        self.open_sockets.add(request)
        self.pool.submit(self.process_request_thread, request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ANN401
        """A client that disconnects or stalls is routine, not a traceback on stderr; anything else is
        one line."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        print(f"mirror: error serving {client_address[0]}: {exc.__class__.__name__}: {exc}", file=sys.stderr)

    def shutdown_request(self, request: Any) -> None:  # noqa: ANN401
        self.open_sockets.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        # Keep-alive connections would hold their worker (and the process) open: end them.
        for sock in list(self.open_sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.pool.shutdown(wait=True, cancel_futures=True)


class MirrorServer:
    """Two listening origins (hub + LFS) over one set of staged repos; ``start()`` serves in threads."""

    def __init__(self, config: MirrorConfig) -> None:
        self.config = config
        self.repos = discover_repos(config.root)
        if not self.repos:
            raise InputError(
                f"{config.root}: no staged repos (a folder with {LOCK_NAME}, directly or as "
                "<owner>/<name>/; use `kimi-deploy mirror stage` or `kimi-deploy download`)"
            )
        self.root = Path(config.root).resolve()
        self.prefix = "/" + config.path_prefix.strip("/") if config.path_prefix.strip("/") else ""
        self._key = secrets.token_bytes(32)
        self._log_lock = threading.Lock()
        # a FIFO or device as the log would block or be clobbered: regular files (or links to one) only
        log_path = write_destination(config.log_path) if config.log_path else None
        self._log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        self._faulted: set[tuple[str, str]] = set()
        self.hub = _BoundedThreadingServer((config.host, config.port), _HubHandler, config.threads, self)
        try:
            self.lfs = _BoundedThreadingServer(
                (config.host, config.lfs_port), _LfsHandler, config.threads, self
            )
        except InputError:
            self.hub.server_close()
            raise
        self._threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.config.host)}:{self.hub.server_address[1]}{self.prefix}"

    @property
    def lfs_url(self) -> str:
        return f"http://{_url_host(self.config.host)}:{self.lfs.server_address[1]}"

    def start(self) -> None:
        for srv in (self.hub, self.lfs):
            t = threading.Thread(target=srv.serve_forever, name="mirror-accept", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        for srv in (self.hub, self.lfs):
            srv.shutdown()
            srv.server_close()
        if self._log:
            self._log.close()

    def log(self, **entry: Any) -> None:
        if self._log is None:
            return
        with self._log_lock:
            self._log.write(json.dumps({"ts": round(time.time(), 3), **entry}) + "\n")

    def sign(self, repo: str, sha: str, expires: int) -> str:
        return hmac.new(self._key, f"{repo}/{sha}/{expires}".encode(), hashlib.sha256).hexdigest()

    def resolve_file(self, repo: StagedRepo, rel: str) -> Path | None:
        """The file on disk for a locked path, or None when it would leave the root (symlinks included)."""
        p = (repo.root / rel).resolve()
        if not p.is_relative_to(self.root) or not p.is_relative_to(repo.root) or not p.is_file():
            return None
        return p

    def first_fault(self, kind: str, key: str) -> bool:
        """True the first time a fault of ``kind`` is due for ``key`` (each file is hit once, then served)."""
        with self._log_lock:
            if (kind, key) in self._faulted:
                return False
            self._faulted.add((kind, key))
            return True


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


#: Seconds a connection may take to send a whole request line and headers (an idle keep-alive connection
#: is closed after as long): a client trickling them, or a few dozen idle ones, never hold the pool.
HEADER_DEADLINE_S = 5.0
#: Seconds any one read or write on a connection may wait (a stalled download is dropped, not kept).
READ_TIMEOUT_S = 60.0


class _Handler(BaseHTTPRequestHandler):
    server_version = "kimi-deploy-mirror"
    protocol_version = "HTTP/1.1"
    server: _BoundedThreadingServer
    timeout = READ_TIMEOUT_S

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def handle_one_request(self) -> None:
        self._header_timer = threading.Timer(HEADER_DEADLINE_S, self._cut)
        self._header_timer.daemon = True
        self._header_timer.start()
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            # the client went away or stalled: nothing to answer, nobody to tell
            self.close_connection = True
        finally:
            self._header_timer.cancel()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._header_timer.cancel()  # the request is in; the transfer has its per-read timeout
        return ok

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Access lines go to the JSON log (without headers, so never a token).
        return

    @property
    def mirror(self) -> MirrorServer:
        return self.server.mirror

    def _send_json(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.mirror.log(
            origin=self.origin,
            method=self.command,
            path=self._log_path(),
            status=status,
            bytes=0 if self.command == "HEAD" else len(data),
        )

    def _error(self, status: int, message: str, code: str = "") -> None:
        extra = {"X-Error-Message": message}
        if code:
            extra["X-Error-Code"] = code
        self._send_json(status, {"error": message}, extra)

    origin = "hub"

    def _log_path(self) -> str:
        return urlsplit(self.path).path

    def _serve_file(self, repo: StagedRepo, f: LockedFile, headers: dict[str, str]) -> None:
        path = self.mirror.resolve_file(repo, f.path)
        if path is None:
            self._error(404, f"{repo.repo}: {f.path} is not served", "EntryNotFound")
            return
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                self._error(416, f"unsatisfiable range {rng}")
                return
            start, end = parsed
            status = 206
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", f'attachment; filename="{quote(Path(f.path).name)}"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            self.mirror.log(
                origin=self.origin, method="HEAD", repo=repo.repo, file=f.path, status=status, bytes=0
            )
            return
        sent = self._stream(repo, f, path, start, length)
        self.mirror.log(
            origin=self.origin,
            method="GET",
            repo=repo.repo,
            file=f.path,
            status=status,
            range=rng or "",
            start=start,
            bytes=sent,
        )

    def _stream(self, repo: StagedRepo, f: LockedFile, path: Path, start: int, length: int) -> int:
        cfg = self.mirror.config
        corrupt_at = f.size // 2 if f.path in cfg.fault_corrupt else -1
        key = f"{repo.repo}/{f.path}"
        drop_at = (
            cfg.fault_drop_after if cfg.fault_drop_after and self.mirror.first_fault("drop", key) else -1
        )
        stall_at = (
            cfg.fault_stall_after if cfg.fault_stall_after and self.mirror.first_fault("stall", key) else -1
        )
        sent = 0
        t0 = time.monotonic()
        chunk_size = min(_CHUNK, max(16 * 1024, cfg.throttle_bps // 20)) if cfg.throttle_bps else _CHUNK
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                while sent < length:
                    n = min(chunk_size, length - sent)
                    if drop_at >= 0 and sent + n > drop_at:
                        n = drop_at - sent
                    if stall_at >= 0 and sent >= stall_at:
                        self.wfile.flush()
                        self.mirror.stopping.wait(cfg.fault_stall_s)
                        stall_at = -1
                    elif stall_at >= 0 and sent + n > stall_at:
                        n = stall_at - sent
                    data = bytearray(fh.read(n)) if n else bytearray()
                    pos = start + sent
                    if pos <= corrupt_at < pos + len(data):
                        data[corrupt_at - pos] ^= 0xFF
                    if data:
                        self.wfile.write(data)
                        sent += len(data)
                    if drop_at >= 0 and sent >= drop_at:
                        self.close_connection = True
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        break
                    if cfg.throttle_bps:
                        ahead = sent / cfg.throttle_bps - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        return sent


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            return (max(0, size - n), size - 1) if n > 0 else None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


class _HubHandler(_Handler):
    origin = "hub"

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _refuse_writes(self) -> None:
        self._error(405, "read-only mirror")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_writes  # noqa: N815

    def _authorized(self) -> bool:
        token = self.mirror.config.token
        if not token:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    def _route(self) -> None:
        raw = urlsplit(self.path)
        path = raw.path
        prefix = self.mirror.prefix
        if prefix:
            if not (path == prefix or path.startswith(prefix + "/")):
                self._error(404, "not found")
                return
            path = path[len(prefix) :]
        segments = [unquote(s) for s in path.split("/")[1:]]
        if any(s in ("..", ".") or s.startswith("/") or "\\" in s for s in segments):
            self._error(400, "path refused (.. or absolute parts)", "PathRefused")
            return
        if not self._authorized():
            repo = "/".join(segments[2:4]) if segments[:2] == ["api", "models"] else "/".join(segments[:2])
            self._error(401, f"{repo}: this mirror needs a token (Authorization: Bearer)", "Unauthorized")
            return
        query = parse_qs(raw.query)
        if segments[:2] == ["api", "models"] and len(segments) >= 4:
            self._api(segments[2:], query)
        elif len(segments) >= 5 and segments[2] == "resolve":
            self._resolve("/".join(segments[:2]), segments[3], "/".join(segments[4:]))
        else:
            self._error(404, "not found")

    def _repo_at(self, repo_id: str, rev: str) -> StagedRepo | None:
        repo = self.mirror.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            return None
        if rev not in (repo.lock.commit, repo.lock.revision, "main"):
            self._error(404, f"Revision {rev} not found in {repo_id}", "RevisionNotFound")
            return None
        return repo

    def _api(self, rest: list[str], query: dict[str, list[str]]) -> None:
        repo_id = "/".join(rest[:2])
        tail = rest[2:]
        if not tail or tail[0] == "revision":
            repo = self._repo_at(repo_id, tail[1] if len(tail) > 1 else "main")
            if repo:
                self._send_json(
                    200,
                    {
                        "id": repo.repo,
                        "modelId": repo.repo,
                        "sha": repo.lock.commit,
                        "private": False,
                        "siblings": [{"rfilename": f.path, "size": f.size} for f in repo.lock.files],
                    },
                )
        elif tail[0] == "tree" and len(tail) >= 2:
            repo = self._repo_at(repo_id, tail[1])
            if repo:
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                self._send_json(200, list(_tree(repo.lock.files, "/".join(tail[2:]), recursive)))
        else:
            self._error(404, "not found")

    def _resolve(self, repo_id: str, rev: str, rel: str) -> None:
        repo = self._repo_at(repo_id, rev)
        if repo is None:
            return
        f = repo.by_path.get(rel) if _safe_relpath(rel) else None
        if f is None or self.mirror.resolve_file(repo, rel) is None:
            self._error(404, f"{repo_id}: entry {rel} not found", "EntryNotFound")
            return
        common = {"X-Repo-Commit": repo.lock.commit, "ETag": f'"{f.etag}"'}
        if f.lfs:
            expires = int(time.time()) + _URL_TTL_S
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0] or _url_host(self.mirror.config.host)
            location = (
                f"http://{host}:{self.mirror.lfs.server_address[1]}/lfs/{repo.repo}/{f.sha256}"
                f"?exp={expires}&sig={self.mirror.sign(repo.repo, f.sha256 or '', expires)}"
            )
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
            for k, v in common.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.mirror.log(origin="hub", method=self.command, repo=repo.repo, file=rel, status=302, bytes=0)
            return
        self._serve_file(repo, f, common)


def _tree(files: Iterable[LockedFile], under: str, recursive: bool) -> Iterable[dict[str, Any]]:
    under = under.strip("/")
    prefix = f"{under}/" if under else ""
    folders: set[str] = set()
    for f in files:
        if not f.path.startswith(prefix):
            continue
        rest = f.path[len(prefix) :]
        parts = rest.split("/")
        for i in range(1, len(parts)):
            if not recursive and i > 1:
                break
            folders.add(prefix + "/".join(parts[:i]))
        if recursive or len(parts) == 1:
            entry: dict[str, Any] = {"type": "file", "oid": f.git_oid, "size": f.size, "path": f.path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            yield entry
    for d in sorted(folders):
        yield {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}


class _LfsHandler(_Handler):
    origin = "lfs"

    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        raw = urlsplit(self.path)
        segments = [unquote(s) for s in raw.path.split("/")[1:]]
        if len(segments) != 4 or segments[0] != "lfs":
            self._error(404, "not found")
            return
        repo_id, sha = "/".join(segments[1:3]), segments[3]
        q = parse_qs(raw.query)
        try:
            expires = int(q.get("exp", ["0"])[0])
        except ValueError:
            expires = 0
        sig = q.get("sig", [""])[0]
        # bytes, not str: compare_digest refuses non-ASCII strings (a TypeError, not a 403)
        good = self.mirror.sign(repo_id, sha, expires).encode()
        if expires < time.time() or not hmac.compare_digest(sig.encode("utf-8", "replace"), good):
            self._error(403, "signature invalid or expired")
            return
        repo = self.mirror.repos.get(repo_id)
        f = repo.by_sha.get(sha) if repo else None
        if repo is None or f is None:
            self._error(404, "not found")
            return
        self._serve_file(repo, f, {"ETag": f'"{sha}"'})
