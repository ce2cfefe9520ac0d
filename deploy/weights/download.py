"""Download a plan's weights with huggingface_hub: exact file selection, pinned commit, disk check first,
resume after a kill, retries, verification against weights.lock.

    >>> from deploy.planning.contract import load_plan
    >>> from deploy.weights.download import download_weights
    >>> w = load_plan("plan.json").chosen_candidate.weights
    >>> result = download_weights(w, dest=w.local_dir)     # doctest: +SKIP
    >>> result.verified                                     # doctest: +SKIP
    True

What the library does: the listing (``HfApi``), each file's metadata and redirect (``get_hf_file_metadata``),
the transfer (``http_get``, with its in-process Range resume after a dropped connection and its timeouts),
the local-dir bookkeeping and auth (``HF_TOKEN`` or the token file). What this module adds, because the
library lacks it:

- an exact selection: fnmatch ``*`` crosses ``/``, so ``UD-TQ1_0/*`` would also match
  ``UD-TQ1_0-extra/...``; here ``*`` stays within one path segment and ``**`` crosses them, and the
  library is handed the resulting file list, escaped;
- a hard disk-space check before the first byte (the library only warns);
- resume across processes and failed attempts: ``snapshot_download`` writes each file to
  ``<etag>.<random>.incomplete``, deletes it when it gives up, and a new process starts from byte zero;
  ``fetch_file`` writes to the library's temp path itself, never deletes it, continues the largest
  leftover by Range and hands the finished file back to the library's bookkeeping;
- sha256 verification inside the stream (the library checks only the size of a plain-HTTP download):
  ``http_get`` writes into a ``HashingWriter`` (deploy/weights/stream.py), so a file is verified as its
  last byte lands, with no second read; a resumed file hashes the prefix it kept once. ``verify`` then
  reuses those digests and hashes only what the stream did not cover.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deploy import constants, schema
from deploy.errors import AuthError, DiskSpaceError, DownloadError, InputError, VerificationError
from deploy.httpx_deadline import CutoffTransport
from deploy.planning.contract import Weights
from deploy.secrets import redact_url
from deploy.weights.lockfile import (
    FileCheck,
    Lock,
    LockedFile,
    missing_files,
    read_lock,
    verify,
    write_lock,
)
from deploy.weights.progress import QUIET, Progress, human_bytes
from deploy.weights.stream import HashingWriter

#: Free space kept on top of what the files need (filesystems misbehave when full).
DISK_MARGIN_MIN_BYTES = constants.GIB
DISK_MARGIN_FRACTION = 0.01
#: Read chunk of the library's streaming download; a `kill -9` loses at most this much received data.
CLIENT_CHUNK_BYTES = 1024 * 1024
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def _hub() -> Any:  # noqa: ANN401
    """Import huggingface_hub lazily (the CLI's other verbs do not pay for it), configured for us."""
    import huggingface_hub
    from huggingface_hub import constants as hf_constants
    from huggingface_hub.utils import disable_progress_bars

    # A kill then loses at most one chunk of received data; the default 10 MiB is 15% of a 64 MB file.
    hf_constants.DOWNLOAD_CHUNK_SIZE = CLIENT_CHUNK_BYTES
    disable_progress_bars()
    return huggingface_hub


def bound_header_phase(stall_s: float) -> None:
    """Every request the library sends gets its status line and headers within ``stall_s``, or fails as a
    ``ReadTimeout`` (a transport error, retried like a dropped connection): a per-read timeout never fires
    against an endpoint trickling its headers, and the stall watchdog only sees bytes on disk. The body is
    the watchdog's: a transfer may rightly take hours (deploy.httpx_deadline, ``whole=False``)."""
    hub = _hub()
    library = hub.get_session()  # the library's client: its event hooks and redirects, with our transport
    hooks, redirects, timeout = library.event_hooks, library.follow_redirects, library.timeout

    def client() -> Any:  # noqa: ANN401 - an httpx2.Client
        return type(library)(
            event_hooks=hooks,
            follow_redirects=redirects,
            timeout=timeout,
            transport=CutoffTransport(stall_s, whole=False),
        )

    hub.set_client_factory(client)


# ---------------------------------------------------------------- selection


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path pattern: ``*`` and ``?`` stay within a segment, ``**`` crosses ``/``, a trailing ``/``
    means everything below. ``pattern_regex("UD-TQ1_0/*").fullmatch("UD-TQ1_0-x/a.gguf")`` -> None."""
    if pattern.endswith("/"):
        pattern += "**"
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


def select_files(paths: list[str], patterns: list[str]) -> list[str]:
    """The paths matched by any pattern, in the listing's order.

    ``select_files(["a/x.gguf", "a-b/y.gguf"], ["a/*"])`` -> ``["a/x.gguf"]``"""
    regexes = [pattern_regex(p) for p in patterns] if patterns else [re.compile(".*")]
    return [p for p in paths if any(r.fullmatch(p) for r in regexes)]


def _fnmatch_literal(path: str) -> str:
    """An fnmatch pattern that matches exactly ``path`` (what the library's allow_patterns expects)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


# ---------------------------------------------------------------- endpoint, token, errors


def resolve_endpoint(endpoint: str | None) -> str:
    """``--endpoint`` if given, else ``HF_ENDPOINT``, else the Hub; without a trailing slash."""
    value = (endpoint or constants.HF_ENDPOINT).rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise InputError(f"endpoint {redact_url(value)!r}: expected an http(s) URL")
    schema.check_url(value, "endpoint")
    return value


def _translate(exc: BaseException, repo: str, endpoint: str) -> Exception:
    """A library exception as one of ours, with a message that names the repo and never a token."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = redact_url(endpoint)
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403) or isinstance(exc, GatedRepoError):
        return AuthError(
            f"{repo}: {where} refused access (HTTP {status}); set HF_TOKEN (or run `hf auth login`) "
            f"to a token that can read {repo}, and accept its license on the Hub if it is gated"
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"{repo}: revision not found at {where}")
    if isinstance(exc, EntryNotFoundError):
        return DownloadError(f"{repo}: a listed file is missing at {where} (HTTP {status})")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(f"{repo}: repository not found at {where}")
    if isinstance(exc, HfHubHTTPError):
        return DownloadError(f"{repo}: HTTP {status} from {where}")
    if isinstance(exc, ValueError) and "too large" in str(exc):
        return DownloadError(
            f"{repo}: a file is over the client's 50 GB plain-HTTP limit; install hf_xet and "
            f"use an endpoint that serves Xet, or a mirror with smaller files"
        )
    if isinstance(exc, LocalEntryNotFoundError):
        return DownloadError(f"{repo}: cannot reach {where}")
    return DownloadError(f"{repo}: {exc.__class__.__name__} talking to {where}")


def _disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT error behind ``exc`` (the library may wrap it), or None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _signed_url_refused(exc: BaseException, endpoint: str) -> bool:
    """A 403 from another origin than the endpoint: a large-file URL the endpoint signed and redirected to
    (a mirror restarted since signed it with a new key, or the URL expired). Asking the endpoint again
    gives a fresh URL, so this is retried; a 401/403 from the endpoint itself is a real auth failure."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) != 403:
        return False
    try:
        url = str(response.request.url)
    except (AttributeError, RuntimeError):
        return False
    return urlsplit(url).netloc not in ("", urlsplit(endpoint).netloc)


def check_reachable(endpoint: str, repo: str = "", timeout_s: float = 5.0) -> None:
    """Fail fast (DownloadError, before any folder is made) when nothing listens at ``endpoint``; a proxy
    in the environment for it skips the check (the proxy, not the endpoint, is what we connect to)."""
    import socket
    import urllib.request

    parts = urlsplit(endpoint)
    proxies = urllib.request.getproxies()
    if proxies.get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname or ""):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return
    except ConnectionRefusedError:
        where = f"{repo}: " if repo else ""
        raise DownloadError(
            f"{where}connection refused at {redact_url(endpoint)} (nothing listens)"
        ) from None
    except OSError:
        return  # DNS or routing: the download's own retries and messages handle it


def _retryable(exc: BaseException) -> bool:
    # A refused connection is retried: here the endpoint answered `check_reachable` before the download
    # began, so a refusal now is a server restarting (a mirror coming back on its port), and the retry
    # resumes from the bytes kept. An endpoint refused from the start fails in seconds before this point.
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status is not None:
        return status in (408, 429) or status >= 500
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(exc, httpx2.TransportError | OSError | LocalEntryNotFoundError)


def _with_retries(
    what: Any,
    repo: str,
    endpoint: str,
    retries: int,
    backoff_s: float,  # noqa: ANN401
    progress: Progress | None,
) -> Any:  # noqa: ANN401
    """Call ``what()``; retry transient failures with exponential backoff, translate the final one."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return what()
        except Exception as exc:  # noqa: BLE001 - translated below
            full = _disk_full(exc)
            if full is not None:
                where = f" writing {full.filename}" if full.filename else ""
                raise DiskSpaceError(
                    f"{repo}: disk full{where} ({full.strerror}); free space and rerun"
                ) from None
            err = _translate(exc, repo, endpoint)
            if _signed_url_refused(exc, endpoint) and attempt <= retries:
                err = DownloadError(
                    f"{repo}: a signed file URL was refused (mirror restarted?); re-resolving"
                )
            elif isinstance(err, AuthError) or not _retryable(exc) or attempt > retries:
                raise err from None
            wait = backoff_s * 2 ** (attempt - 1)
            if progress is not None:
                progress.message(f"attempt {attempt} failed ({err}); retrying in {wait:.0f}s")
            time.sleep(wait)


# ---------------------------------------------------------------- listing and lock


def _list_repo(weights: Weights, endpoint: str, existing: Lock | None) -> tuple[str, dict[str, Any]]:
    """(commit, {path: RepoFile}) at the pinned commit; library exceptions pass through untranslated."""
    hub = _hub()
    api = hub.HfApi(endpoint=endpoint)
    if existing and existing.repo == weights.repo and existing.revision == weights.revision:
        commit = existing.commit
    elif _COMMIT_RE.match(weights.revision):
        commit = weights.revision
    else:
        commit = api.model_info(weights.repo, revision=weights.revision).sha
    entries = api.list_repo_tree(weights.repo, revision=commit, recursive=True)
    return commit, {e.path: e for e in entries if isinstance(e, hub.hf_api.RepoFile)}


def build_lock(
    weights: Weights,
    endpoint: str,
    existing: Lock | None = None,
    retries: int = 0,
    backoff_s: float = 2.0,
    progress: Progress | None = None,
) -> Lock:
    """List the repo at a pinned commit and build the lock of the selected files (no file bytes fetched).

    The revision is resolved to a commit once; a lock already in the destination for the same repo and
    revision keeps its commit, so a rerun never drifts to a newer one.
    ``build_lock(w, "http://head:8090").files[0].sha256`` -> the Hub's LFS sha256."""
    repo = weights.repo
    commit, by_path = _with_retries(
        lambda: _list_repo(weights, endpoint, existing), repo, endpoint, retries, backoff_s, progress
    )
    chosen = select_files(list(by_path), weights.allow_patterns)
    if not chosen:
        raise DownloadError(
            f"{repo}@{commit[:12]}: no file matches {weights.allow_patterns} ({len(by_path)} files listed)"
        )
    files = []
    for p in chosen:
        e = by_path[p]
        files.append(
            LockedFile(path=p, size=e.size, sha256=e.lfs.sha256 if e.lfs else None, git_oid=e.blob_id)
        )
    return Lock(
        repo=repo, commit=commit, files=files, revision=weights.revision, endpoint=redact_url(endpoint)
    )


# ---------------------------------------------------------------- disk


@dataclass
class DiskCheck:
    dest: str
    need_bytes: int
    margin_bytes: int
    free_bytes: int

    @property
    def ok(self) -> bool:
        return self.free_bytes >= self.need_bytes + self.margin_bytes


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of ``path`` (``KIMI_DEPLOY_FREE_BYTES`` overrides it: fault injection)."""
    if constants.FREE_BYTES_OVERRIDE is not None:
        return constants.FREE_BYTES_OVERRIDE
    p = path
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(dest: Path, remaining: int) -> DiskCheck:
    """Raise DiskSpaceError (exit 4) unless ``dest`` has room for ``remaining`` bytes plus a margin.

    The library's temp files live inside ``dest`` and are renamed into place, so no second copy is needed."""
    margin = max(DISK_MARGIN_MIN_BYTES, int(remaining * DISK_MARGIN_FRACTION)) if remaining else 0
    check = DiskCheck(str(dest), remaining, margin, free_bytes(dest))
    if not check.ok:
        raise DiskSpaceError(
            f"{dest}: needs {human_bytes(remaining)} ({remaining} bytes) + {human_bytes(margin)} margin, "
            f"only {human_bytes(check.free_bytes)} ({check.free_bytes} bytes) free; free space or pick --dest"
        )
    return check


# ---------------------------------------------------------------- partial files


def _partials(dest: Path, f: LockedFile) -> list[Path]:
    """The library's leftover temp files for ``f`` (from a killed process), largest first."""
    from huggingface_hub._local_folder import get_local_download_paths

    base = get_local_download_paths(dest, f.path).incomplete_path(f.etag)
    found = [p for p in base.parent.glob(f"{base.stem}.*.incomplete") if p.is_file()]
    if base.is_file():
        found.append(base)
    return sorted(found, key=lambda p: -p.stat().st_size)


def _have_bytes(dest: Path, f: LockedFile) -> int:
    p = dest / f.path
    if p.is_file() and p.stat().st_size == f.size:
        return f.size
    parts = _partials(dest, f)
    return min(parts[0].stat().st_size, f.size) if parts else 0


def _xet_handled_by_library(meta: Any) -> bool:  # noqa: ANN401
    """A file the endpoint serves through Xet, with hf_xet installed: the library's own transfer fetches it
    (Xet's chunked download beats one HTTP stream), and ``verify`` hashes it after it lands."""
    import importlib.util

    from huggingface_hub import constants as hf_constants

    if meta.xet_file_data is None or hf_constants.HF_HUB_DISABLE_XET:
        return False
    return importlib.util.find_spec("hf_xet") is not None


def _open_partial(dest: Path, f: LockedFile) -> tuple[Path, int]:
    """The temp file to continue for ``f`` (the largest leftover, others removed, one of the wrong size
    emptied) and how many of its bytes are kept."""
    from huggingface_hub._local_folder import get_local_download_paths

    parts = _partials(dest, f)
    for p in parts[1:]:
        p.unlink(missing_ok=True)
    tmp = parts[0] if parts else get_local_download_paths(dest, f.path).incomplete_path(f.etag)
    have = tmp.stat().st_size if tmp.is_file() else 0
    if have > f.size:
        tmp.unlink()
        have = 0
    return tmp, have


def fetch_file(dest: Path, lock: Lock, f: LockedFile, endpoint: str) -> tuple[FileCheck | None, int, int]:
    """Fetch one locked file into ``dest`` through a ``HashingWriter``, continuing a leftover temp file by
    Range; returns (its check from the stream, or None when it must be hashed from disk; bytes resumed;
    bytes hashed in the stream, the resumed prefix included).

    The temp file is ours (the library's name, never deleted on a failure), so a retry or a new process
    continues it. The finished file is moved into place and the library's local metadata written, as
    ``hf_hub_download`` would.
    ``fetch_file(d, lock, lock.files[0], "http://head:8090")[0].problem`` -> None when it matched."""
    from huggingface_hub._local_folder import get_local_download_paths, write_download_metadata
    from huggingface_hub.file_download import get_hf_file_metadata, hf_hub_url, http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    hub = _hub()
    url = hf_hub_url(lock.repo, f.path, revision=lock.commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    if _xet_handled_by_library(meta):
        hub.hf_hub_download(lock.repo, f.path, revision=lock.commit, local_dir=str(dest), endpoint=endpoint)
        return None, 0, 0
    headers = build_hf_headers()
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN URL, as the library does: the token stays home
    paths = get_local_download_paths(dest, f.path)
    final = dest / f.path
    with WeakFileLock(paths.lock_path):
        tmp, have = _open_partial(dest, f)
        tmp.touch(exist_ok=True)
        with open(tmp, "r+b", buffering=0) as fh:
            writer = HashingWriter(fh, f)
            writer.absorb_prefix(have)
            http_get(
                meta.location,
                writer,
                resume_size=have,
                headers=headers,
                expected_size=f.size,
                displayed_filename=f.path,
            )
            in_stream = writer.complete()
            problem = writer.problem() if in_stream else None
            hashed = writer.hashed if in_stream else 0
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        st = final.stat()
    write_download_metadata(dest, f.path, commit_hash=lock.commit, etag=meta.etag or f.etag)
    check = FileCheck(f.path, st.st_size, st.st_mtime_ns, problem) if in_stream else None
    return check, have, hashed


@dataclass
class StreamTotals:
    """What the in-stream hashing covered over all attempts of one download."""

    files: int = 0  # files whose digest came from the stream
    bytes_hashed: int = 0  # bytes those digests cover (resumed prefixes read back once included)
    bytes_prefix: int = 0  # of those, resumed prefixes read back from disk
    resumed: int = 0  # bytes kept from earlier attempts or runs
    checks: dict[str, FileCheck] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, check: FileCheck | None, resumed: int, hashed: int) -> None:
        with self._lock:
            self.resumed += resumed
            if check is not None:
                self.files += 1
                self.bytes_hashed += hashed
                self.bytes_prefix += resumed
                self.checks[check.path] = check

    def to_dict(self) -> dict[str, int]:
        return {"files": self.files, "bytes_hashed": self.bytes_hashed, "bytes_prefix": self.bytes_prefix}


def fetch_all(dest: Path, lock: Lock, endpoint: str, totals: StreamTotals, max_workers: int = 8) -> None:
    """Fetch every locked file not yet complete in ``dest``, ``max_workers`` at a time, into ``totals``.

    The first failure cancels the files not started and is raised once the running ones end (they keep
    their temp files, so the next attempt continues them). ``fetch_all(d, lock, url, StreamTotals())``"""
    todo = [f for f in lock.files if not _complete_on_disk(dest, f)]
    if not todo:
        return
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo))), thread_name_prefix="fetch")
    try:
        futures = [pool.submit(fetch_file, dest, lock, f, endpoint) for f in todo]
        for fut in as_completed(futures):
            totals.add(*fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _complete_on_disk(dest: Path, f: LockedFile) -> bool:
    p = dest / f.path
    return p.is_file() and p.stat().st_size == f.size


def clean_orphans(dest: Path) -> int:
    """Remove leftover ``*.incomplete`` temp files in the library's folder under ``dest``; returns a count."""
    base = dest / ".cache" / "huggingface" / "download"
    n = 0
    if base.is_dir():
        for p in base.rglob("*.incomplete*"):
            p.unlink(missing_ok=True)
            n += 1
    return n


# ---------------------------------------------------------------- progress sampling


class _Sampler(threading.Thread):
    """Samples bytes on disk every ``period`` s for the progress display and the stall watchdog."""

    def __init__(
        self, dest: Path, lock: Lock, progress: Progress, stall_s: float, period: float = 0.5
    ) -> None:
        super().__init__(name="download-progress", daemon=True)
        self.dest, self.lock, self.progress = dest, lock, progress
        self.stall_s, self.period = stall_s, period
        self.stop_event = threading.Event()
        self.stalls = 0

    def sample(self) -> tuple[int, dict[str, tuple[int, int]], int]:
        done, active, complete = 0, {}, 0
        for f in self.lock.files:
            have = _have_bytes(self.dest, f)
            done += have
            if have == f.size:
                complete += 1
            elif have:
                active[f.path] = (have, f.size)
        return done, active, complete

    def run(self) -> None:
        last_bytes, last_change = -1, time.monotonic()
        while not self.stop_event.wait(self.period):
            done, active, complete = self.sample()
            now = time.monotonic()
            if done != last_bytes:
                last_bytes, last_change = done, now
            elif active and now - last_change >= self.stall_s:
                self.stalls += 1
                self.progress.message(
                    f"no bytes for {int(now - last_change)}s; the client retries the stalled "
                    "request from where it stopped"
                )
                last_change = now
            self.progress.update(done, active, complete)


def exit_keeping_partials(message: str = "interrupted; run the same command again to resume") -> None:
    """Make Ctrl-C end the process at once, like a kill: the library deletes its half-written files while
    unwinding from an exception, and those are what the next run resumes from."""

    def _handler(signum: int, frame: Any) -> None:  # noqa: ANN401
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, _handler)


# ---------------------------------------------------------------- the whole download


@dataclass
class DownloadResult:
    repo: str
    commit: str
    dest: str
    endpoint: str
    files: int
    bytes_total: int
    bytes_present_before: int
    bytes_fetched: int
    bytes_resumed: int
    seconds: float
    attempts: int
    verified: bool
    offline: bool = False
    disk: dict[str, int] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    stream: dict[str, int] = field(default_factory=dict)

    @property
    def rate_bps(self) -> float:
        return self.bytes_fetched / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate_bytes_per_s": round(self.rate_bps), "checked": self.what_was_checked()}

    def what_was_checked(self) -> str:
        """What "verified" rests on: files hashed now (or while downloading) and files only compared by
        size and mtime with the last `verify` (a flipped byte there goes unseen until `verify` re-hashes).

        >>> DownloadResult("o/n", "c", "/w", "", 3, 0, 0, 0, 0, 0.0, 0, True,
        ...                verify={"checked": 1, "skipped": 2}).what_was_checked()
        '1 hashed, 2 unchanged since the last verify (size and mtime only; `kimi-deploy verify /w` re-hashes)'
        >>> DownloadResult("o/n", "c", "/w", "", 2, 0, 0, 0, 0, 0.0, 0, True,
        ...                verify={"checked": 2, "prechecked": 2}).what_was_checked()
        '2 hashed (2 while downloading, no second read)'
        """
        hashed, trusted = int(self.verify.get("checked", 0)), int(self.verify.get("skipped", 0))
        streamed = int(self.verify.get("prechecked", 0))
        how = f" ({streamed} while downloading, no second read)" if streamed else ""
        parts = [f"{hashed} hashed{how}"] if hashed or not trusted else []
        if trusted:
            parts.append(
                f"{trusted} unchanged since the last verify (size and mtime only; "
                f"`kimi-deploy verify {self.dest}` re-hashes)"
            )
        return ", ".join(parts)


def _offline(weights: Weights, dest: Path) -> DownloadResult:
    lock = read_lock(dest)
    if lock.repo != weights.repo:
        raise VerificationError(f"{dest}/weights.lock is for {lock.repo}, the plan wants {weights.repo}")
    missing = missing_files(dest, lock)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise VerificationError(
            f"offline: {len(missing)} of {len(lock.files)} files of {lock.repo} missing or "
            f"incomplete in {dest}: {shown}"
        )
    t0 = time.monotonic()
    report = verify(dest, trust_stamp=True)
    if not report.ok:
        raise VerificationError(report.summary())
    return DownloadResult(
        repo=lock.repo,
        commit=lock.commit,
        dest=str(dest),
        endpoint="",
        files=len(lock.files),
        bytes_total=lock.total_bytes,
        bytes_present_before=lock.total_bytes,
        bytes_fetched=0,
        bytes_resumed=0,
        seconds=round(time.monotonic() - t0, 3),
        attempts=0,
        verified=True,
        offline=True,
        verify=report.to_dict(),
    )


def download_weights(
    weights: Weights,
    dest: str | Path,
    *,
    endpoint: str | None = None,
    offline: bool = False,
    progress: Progress | None = None,
    retries: int = 5,
    stall_s: float = 30.0,
    backoff_s: float = 2.0,
    max_workers: int = 8,
) -> DownloadResult:
    """Fetch the files of ``weights`` into ``dest``, write ``dest/weights.lock``, verify, return a summary.

    Raises DiskSpaceError (before any byte), AuthError, DownloadError (after ``retries`` attempts with
    exponential backoff from ``backoff_s``), VerificationError (corrupt files are moved to .quarantine)."""
    dest = Path(dest).expanduser()
    if offline or constants.HF_HUB_OFFLINE:
        return _offline(weights, dest)
    endpoint = resolve_endpoint(endpoint)
    check_reachable(endpoint, weights.repo)
    _hub()  # its chunk size and quiet progress, before any transfer
    from huggingface_hub import constants as hf_constants

    # The stall watchdog: a read that gets no byte for this long fails, and the library resumes it by Range.
    hf_constants.HF_HUB_DOWNLOAD_TIMEOUT = max(1, int(stall_s))
    bound_header_phase(stall_s)
    existing = None
    try:
        existing = read_lock(dest)
    except InputError:
        existing = None
    lock = build_lock(weights, endpoint, existing, retries, backoff_s, progress)
    before = sum(_have_bytes(dest, f) for f in lock.files)
    disk = check_disk(dest, lock.total_bytes - before)
    dest.mkdir(parents=True, exist_ok=True)
    write_lock(dest, lock)
    progress = progress or Progress(lock.total_bytes, len(lock.files), mode=QUIET)
    progress.total, progress.files = lock.total_bytes, len(lock.files)
    progress.message(
        f"{lock.repo}@{lock.commit[:12]}: {len(lock.files)} files, {human_bytes(lock.total_bytes)} "
        f"({human_bytes(lock.total_bytes - before)} to fetch) -> {dest}"
    )
    progress.update(before, {}, 0)
    sampler = _Sampler(dest, lock, progress, stall_s)
    sampler.start()
    t0 = time.monotonic()
    attempts = 0
    stream = StreamTotals()

    def fetch() -> None:
        nonlocal attempts
        attempts += 1
        fetch_all(dest, lock, endpoint, stream, max_workers)

    try:
        _with_retries(fetch, lock.repo, endpoint, retries, backoff_s, progress)
    finally:
        sampler.stop_event.set()
        sampler.join()
    done, _, complete = sampler.sample()
    progress.update(done, {}, complete, force=True)
    clean_orphans(dest)
    progress.message(f"verifying {len(lock.files)} files against {dest / 'weights.lock'}")
    # Files fetched now were hashed in the stream: verify reuses those digests (a stat each) and reads
    # only what the stream could not vouch for (files present before, a Xet transfer, a broken stream).
    report = verify(dest, trust_stamp=True, prechecked=stream.checks)
    seconds = time.monotonic() - t0
    result = DownloadResult(
        repo=lock.repo,
        commit=lock.commit,
        dest=str(dest),
        endpoint=redact_url(endpoint),
        files=len(lock.files),
        bytes_total=lock.total_bytes,
        bytes_present_before=before,
        bytes_fetched=lock.total_bytes - before,
        bytes_resumed=stream.resumed,
        seconds=round(seconds, 3),
        attempts=attempts,
        verified=report.ok,
        disk=asdict(disk),
        verify=report.to_dict(),
        stream=stream.to_dict(),
    )
    if not report.ok:
        raise VerificationError(report.summary() + " — run the download again to re-fetch them")
    return result
