"""weights.lock: what a weights folder must contain, and whether it does.

The lock lists the repo, the pinned commit and, for every file, its path, size and digest (the Hub's
LFS sha256, or the git blob sha1 for small non-LFS files). ``verify`` re-hashes the folder in
parallel, moves any mismatching file to ``<dir>/.quarantine/`` and, when everything matches, writes a
stamp (``<dir>/.kimi-deploy-verified.json``) holding the lock's digest and every file's size and
mtime, so later stages can ask "verified?" with a few ``stat`` calls instead of hashing 600 GB:

    >>> from deploy.weights.lockfile import verify, is_verified
    >>> report = verify("/models/moonshotai/Kimi-K2.5")      # doctest: +SKIP
    >>> report.ok, is_verified("/models/moonshotai/Kimi-K2.5")  # doctest: +SKIP
    (True, True)
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy import schema
from deploy.errors import InputError, VerificationError
from deploy.fsutil import atomic_write_json, kind_of

LOCK_NAME = "weights.lock"
STAMP_NAME = ".kimi-deploy-verified.json"
QUARANTINE_DIR = ".quarantine"
LOCK_SCHEMA = 1
_CHUNK = 8 * 1024 * 1024
REPO_PATTERN = schema.REPO_PATTERN

#: weights.lock: every path relative and inside the folder, digests in hex, sizes whole bytes.
LOCK_SCHEMA_JSON: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "weights.lock",
    "type": "object",
    "required": ["schema", "repo", "commit", "files"],
    "properties": {
        "schema": {"const": LOCK_SCHEMA},
        "repo": {"type": "string", "pattern": REPO_PATTERN},
        "commit": {"type": "string", "pattern": r"^[0-9a-f]{40}\Z"},
        "revision": {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]{1,256}\Z"},
        "endpoint": {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]{0,2048}\Z"},
        "files": {
            "type": "array",
            "maxItems": 100000,
            "items": {
                "type": "object",
                "required": ["path", "size"],
                "additionalProperties": False,
                "properties": {
                    "path": schema.RELPATH,
                    "size": schema.COUNT,
                    "sha256": {"type": ["string", "null"], "pattern": r"^[0-9a-f]{64}\Z"},
                    "git_oid": {"type": ["string", "null"], "pattern": r"^[0-9a-f]{40}\Z"},
                },
            },
        },
    },
}


@dataclass
class LockedFile:
    """One file of the lock. ``sha256`` is set for LFS files, ``git_oid`` (git blob sha1) always."""

    path: str
    size: int
    sha256: str | None = None
    git_oid: str | None = None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def etag(self) -> str:
        """The ETag the Hub serves for this file (sha256 for LFS, the git blob id otherwise)."""
        return self.sha256 or self.git_oid or ""


@dataclass
class Lock:
    """A weights.lock: ``Lock(repo="moonshotai/Kimi-K2.5", commit="<40 hex>", files=[...])``."""

    repo: str
    commit: str
    files: list[LockedFile]
    revision: str = "main"
    endpoint: str = ""
    schema: int = LOCK_SCHEMA

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> LockedFile | None:
        for f in self.files:
            if f.path == path:
                return f
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema": d.pop("schema"), **d}


def lock_from_dict(data: Any, source: str = LOCK_NAME) -> Lock:
    """Parse a lock; a malformed one (bad types, a path with ``..`` or absolute) raises InputError naming
    ``source``, the key and the reason."""
    if not isinstance(data, dict) or data.get("schema") != LOCK_SCHEMA:
        raise InputError(f"{source}: not a weights.lock of schema {LOCK_SCHEMA}")
    schema.validate(data, LOCK_SCHEMA_JSON, source)
    paths = [f["path"] for f in data["files"]]
    if len(set(paths)) != len(paths):
        raise InputError(f"{source}: files: a path is listed twice")
    try:
        files = [LockedFile(**f) for f in data["files"]]
        return Lock(
            repo=data["repo"],
            commit=data["commit"],
            files=files,
            revision=data.get("revision", "main"),
            endpoint=data.get("endpoint", ""),
        )
    except (KeyError, TypeError) as exc:
        raise InputError(f"{source}: malformed weights.lock ({exc.__class__.__name__}: {exc})") from None


def lock_path(directory: str | Path) -> Path:
    return Path(directory) / LOCK_NAME


def read_lock(directory: str | Path) -> Lock:
    """``read_lock("/models/x")`` -> Lock; InputError when the folder has no readable lock."""
    p = lock_path(directory)
    data = schema.load_json(p, None, missing=f"{p}: no weights.lock (run `kimi-deploy download` first)")
    return lock_from_dict(data, str(p))


def locked_path(directory: str | Path, rel: str) -> Path:
    """``directory / rel`` for a path of the lock, refused (InputError, exit 2) when it is not relative or
    when a folder on the way is a symlink leading outside ``directory``: verify never moves or stamps a
    file outside the weights folder. The file itself may be a symlink (weights linked from a cache): it is
    read through, and a mismatch moves the link, not its target."""
    return schema.inside(directory, rel, f"{lock_path(directory)}", last_may_link=True)


def check_paths(directory: str | Path, lock: Lock) -> None:
    """Every locked path stays inside ``directory`` (see ``locked_path``), and so does the quarantine."""
    reserved = (LOCK_NAME, STAMP_NAME, QUARANTINE_DIR)
    for f in lock.files:
        if f.path.split("/")[0] in reserved:
            raise InputError(f"{lock_path(directory)}: path {f.path!r} names the toolkit's own bookkeeping")
        locked_path(directory, f.path)
    schema.inside(directory, QUARANTINE_DIR, f"{directory}/{QUARANTINE_DIR}")


def write_lock(directory: str | Path, lock: Lock) -> Path:
    """Write ``<directory>/weights.lock`` atomically (it never holds a token or an endpoint's credentials)."""
    return atomic_write_json(lock_path(directory), lock.to_dict())


def lock_digest(directory: str | Path) -> str:
    """sha256 of the lock file's bytes: the stamp is valid only for the lock it was made against."""
    return hashlib.sha256(schema.read_text(lock_path(directory)).encode()).hexdigest()


def git_blob_oid(path: str | Path, size: int | None = None) -> str:
    """The git blob id of a file (sha1 of ``blob <size>\\0`` + content), as the Hub lists small files."""
    p = Path(path)
    h = hashlib.sha1(f"blob {size if size is not None else p.stat().st_size}\0".encode())
    with open(p, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Streaming sha256 of a file (8 MiB reads; hashlib releases the GIL, so threads hash in parallel)."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return h.hexdigest()


@dataclass(frozen=True)
class FileCheck:
    """One file's hash result and the ``stat`` it was taken at (reusable while size and mtime hold)."""

    path: str
    size: int
    mtime_ns: int
    problem: str | None


def check_file(directory: str | Path, f: LockedFile) -> FileCheck:
    """Hash one locked file now: ``check_file(d, lock.files[0]).problem is None`` when it matches."""
    p = Path(directory) / f.path
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        return FileCheck(f.path, -1, -1, "missing")
    return FileCheck(f.path, st.st_size, st.st_mtime_ns, _file_matches(Path(directory), f))


def _file_matches(directory: Path, f: LockedFile) -> str | None:
    """None when the file matches its lock entry, else the reason."""
    p = directory / f.path
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({kind_of(st.st_mode)})"
    size = st.st_size
    if size != f.size:
        return f"size {size} != {f.size}"
    if f.sha256 is not None:
        got = sha256_file(p)
        return None if got == f.sha256 else f"sha256 {got[:12]}… != {f.sha256[:12]}…"
    if f.git_oid is not None:
        got = git_blob_oid(p, size)
        return None if got == f.git_oid else f"git blob {got[:12]}… != {f.git_oid[:12]}…"
    return None


@dataclass
class VerifyReport:
    """Outcome of ``verify``: ``ok`` only when every locked file is present and matches."""

    directory: str
    repo: str
    commit: str
    checked: int = 0
    skipped: int = 0
    bytes_hashed: int = 0  # read and hashed by this call
    prechecked: int = 0  # of `checked`, files whose digest was taken while downloading (not read again)
    bytes_prechecked: int = 0
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)
    quarantined: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.mismatched

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def summary(self) -> str:
        if self.ok:
            streamed = (
                f", {self.bytes_prechecked / 1e9:.2f} GB hashed while downloading" if self.prechecked else ""
            )
            return (
                f"verified {self.checked + self.skipped} files of {self.repo}@{self.commit[:12]} "
                f"({self.bytes_hashed / 1e9:.2f} GB hashed in {self.seconds:.1f}s{streamed})"
            )
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({', '.join(self.missing[:5])})")
        if self.mismatched:
            moved = f", moved to {QUARANTINE_DIR}/" if self.quarantined else ""
            parts.append(f"{len(self.mismatched)} corrupt ({', '.join(list(self.mismatched)[:5])}{moved})")
        return f"{self.directory}: {'; '.join(parts)}"


def _quarantine(directory: Path, rel: str) -> str:
    moved = f"{QUARANTINE_DIR}/{rel}.{time.strftime('%Y%m%dT%H%M%S')}"
    target = directory / moved
    target.parent.mkdir(parents=True, exist_ok=True)
    schema.inside(directory, moved, f"{directory}/{QUARANTINE_DIR}")  # no symlinked folder on the way
    os.replace(locked_path(directory, rel), target)
    return str(target.relative_to(directory))


def _stamp_entries(directory: Path, files: Iterable[LockedFile]) -> dict[str, dict[str, int]]:
    out = {}
    for f in files:
        st = (directory / f.path).stat()
        out[f.path] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def _read_stamp(directory: Path) -> dict[str, Any] | None:
    try:
        data = schema.load_json(directory / STAMP_NAME, STAMP_SCHEMA)
    except InputError:
        return None  # no stamp, or one that is not ours: the folder is simply not verified
    return data


STAMP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["lock_sha256", "files"],
    "properties": {
        "lock_sha256": {"type": "string"},
        "files": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"size": schema.COUNT, "mtime_ns": {"type": "integer"}},
            },
        },
    },
}


def _unchanged_since_stamp(directory: Path, stamp: dict[str, Any] | None, f: LockedFile) -> bool:
    if not stamp:
        return False
    entry = stamp.get("files", {}).get(f.path)
    if not entry:
        return False
    try:
        st = (directory / f.path).stat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return entry == {"size": st.st_size, "mtime_ns": st.st_mtime_ns} and st.st_size == f.size


def verify(
    directory: str | Path,
    *,
    workers: int | None = None,
    quarantine: bool = True,
    trust_stamp: bool = False,
    prechecked: dict[str, FileCheck] | None = None,
) -> VerifyReport:
    """Re-hash every locked file of ``directory`` (in parallel) and compare with weights.lock.

    Mismatching files are moved to ``<directory>/.quarantine/`` (never left looking complete). With
    ``trust_stamp`` files unchanged (size + mtime) since a previous successful verification of the same
    lock are not hashed again, and ``prechecked`` results (hashed while a download was still running)
    are reused for files whose size and mtime have not changed since.
    ``verify("/models/x").ok`` -> bool; raises nothing on a mismatch.
    """
    d = Path(directory)
    lock = read_lock(d)
    check_paths(d, lock)
    digest = lock_digest(d)
    stamp = _read_stamp(d)
    if stamp is not None and stamp.get("lock_sha256") != digest:
        stamp = None
    report = VerifyReport(directory=str(d), repo=lock.repo, commit=lock.commit)
    t0 = time.monotonic()
    (d / STAMP_NAME).unlink(missing_ok=True)  # stale until proven again

    todo: list[LockedFile] = []
    for f in lock.files:
        if trust_stamp and _unchanged_since_stamp(d, stamp, f):
            report.skipped += 1
        else:
            todo.append(f)
    n = workers or min(8, max(1, os.cpu_count() or 1))
    # Largest first, so one huge file does not start last and leave the other workers idle.
    todo.sort(key=lambda f: -f.size)

    def result(f: LockedFile) -> tuple[LockedFile, str | None, bool]:
        known = (prechecked or {}).get(f.path)
        if known is not None:
            try:
                st = (d / f.path).stat()
                if (st.st_size, st.st_mtime_ns) == (known.size, known.mtime_ns):
                    return f, known.problem, True
            except (FileNotFoundError, NotADirectoryError):
                pass
        return f, _file_matches(d, f), False

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="verify") as pool:
        results = list(pool.map(result, todo))
    for f, problem, reused in results:
        report.checked += 1
        if problem == "missing":
            report.missing.append(f.path)
            continue
        hashed = f.size if problem is None or not problem.startswith("size") else 0
        if reused:
            report.prechecked += 1
            report.bytes_prechecked += hashed
        else:
            report.bytes_hashed += hashed
        if problem is not None:
            report.mismatched[f.path] = problem
            # only a file (or a link) is moved aside; a folder or device in its place is reported, left alone
            if quarantine and (os.path.islink(d / f.path) or os.path.isfile(d / f.path)):
                report.quarantined[f.path] = _quarantine(d, f.path)
    report.missing.sort()
    report.seconds = round(time.monotonic() - t0, 3)
    if report.ok:
        atomic_write_json(
            d / STAMP_NAME,
            {
                "lock_sha256": digest,
                "repo": lock.repo,
                "commit": lock.commit,
                "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": _stamp_entries(d, lock.files),
            },
        )
    return report


def verify_or_raise(directory: str | Path, **kwargs: Any) -> VerifyReport:
    """``verify`` that raises VerificationError (exit 5) with the summary when anything is off."""
    report = verify(directory, **kwargs)
    if not report.ok:
        raise VerificationError(report.summary())
    return report


@dataclass
class VerificationStatus:
    """Cheap answer for `up`: ``verified`` plus why not (``missing``/``changed`` files, or a reason)."""

    verified: bool
    reason: str
    repo: str = ""
    commit: str = ""
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def missing_files(directory: str | Path, lock: Lock | None = None) -> list[str]:
    """Locked files absent or of the wrong size (no hashing): the offline completeness check."""
    d = Path(directory)
    lock = lock or read_lock(d)
    check_paths(d, lock)
    out = []
    for f in lock.files:
        try:
            if (d / f.path).stat().st_size == f.size:
                continue
        except (FileNotFoundError, NotADirectoryError):
            pass
        out.append(f.path)
    return out


def verification_status(directory: str | Path) -> VerificationStatus:
    """``verification_status("/models/x")`` -> VerificationStatus, from ``stat`` calls only (no hashing)."""
    d = Path(directory)
    if not lock_path(d).is_file():
        return VerificationStatus(False, f"{d}: no {LOCK_NAME} (run `kimi-deploy download`)")
    try:
        lock = read_lock(d)
        check_paths(d, lock)
    except InputError as exc:
        return VerificationStatus(False, str(exc))
    stamp = _read_stamp(d)
    base = {"repo": lock.repo, "commit": lock.commit}
    if stamp is None:
        return VerificationStatus(False, f"{d}: never verified (run `kimi-deploy verify {d}`)", **base)
    if stamp.get("lock_sha256") != lock_digest(d):
        return VerificationStatus(False, f"{d}: {LOCK_NAME} changed since the last verification", **base)
    missing, changed = [], []
    for f in lock.files:
        if not (d / f.path).exists():
            missing.append(f.path)
        elif not _unchanged_since_stamp(d, stamp, f):
            changed.append(f.path)
    if missing or changed:
        what = ", ".join((missing + changed)[:5])
        return VerificationStatus(
            False,
            f"{d}: files missing or changed since verification: {what}",
            missing=missing,
            changed=changed,
            **base,
        )
    return VerificationStatus(True, f"{d}: verified {len(lock.files)} files", **base)


def is_verified(directory: str | Path) -> bool:
    """True when ``directory`` passed ``verify`` and nothing changed since (stat only)."""
    return verification_status(directory).verified
