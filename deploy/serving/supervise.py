"""Run one engine per node as a detached process group, with a pidfile, a log file and a lock.

    >>> from deploy.serving.supervise import RunFiles, start, running, stop
    >>> files = RunFiles.for_node(".kimi-deploy", "ci")
    >>> launched = start(["rendered/launch-ci.sh"], files, meta={"engine": "llama.cpp"})  # doctest: +SKIP
    >>> running(files).pid == launched.proc.pid  # doctest: +SKIP
    True
    >>> stop(running(files), grace_s=10).how  # doctest: +SKIP
    'SIGTERM'

State lives under ``<state_dir>/run/``: ``<node>.json`` (the pidfile: pid, process group, the process's
start time, the URL and the engine), ``<node>.log`` (the engine's stdout and stderr) and ``<node>.lock``
(an ``flock`` held while an ``up`` is starting that node). A pidfile counts only while its process is alive
and is the same process (same start time), so a stale file or a reused pid is never mistaken for a server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from deploy import schema
from deploy.errors import InputError, LaunchError
from deploy.fsutil import atomic_write_json
from deploy.serving.manifest_schema import PIDFILE_SCHEMA

#: Set in the engine's environment (inherited by everything it starts) to recognise its processes later.
RUN_ID_ENV = "KIMI_DEPLOY_RUN_ID"


@dataclass(frozen=True)
class RunFiles:
    """The pidfile, log and lock of one node's engine."""

    node: str
    run_dir: Path

    @classmethod
    def for_node(cls, state_dir: str | Path, node: str) -> RunFiles:
        return cls(node, Path(state_dir) / "run")

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.node}.json"

    @property
    def log(self) -> Path:
        return self.run_dir / f"{self.node}.log"

    @property
    def lock(self) -> Path:
        return self.run_dir / f"{self.node}.lock"


@dataclass(frozen=True)
class Running:
    """A live engine as its pidfile describes it."""

    files: RunFiles
    pid: int
    pgid: int
    meta: dict[str, Any]


def all_nodes(state_dir: str | Path) -> list[str]:
    """Nodes that have a pidfile under ``state_dir`` (live or stale)."""
    run_dir = Path(state_dir) / "run"
    return sorted(p.stem for p in run_dir.glob("*.json")) if run_dir.is_dir() else []


@contextlib.contextmanager
def node_lock(files: RunFiles) -> Iterator[None]:
    """Hold ``<node>.lock`` (flock, non-blocking) for the body; a second holder gets a LaunchError.

    The kernel drops the lock when the holder exits, however it exits, so a crashed ``up`` never leaves
    a stale lock behind.
    """
    _make_run_dir(files)
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_text(files.lock).strip() or "another process"
            raise LaunchError(
                f"another `kimi-deploy up` ({holder}) is starting node {files.node!r} "
                f"(lock {files.lock}); wait for it or run `kimi-deploy down`"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Launched:
    """What `start` launched: the Popen (to poll and reap), its pidfile view, where its log begins."""

    proc: subprocess.Popen[bytes]
    run: Running
    log_offset: int


def start(
    argv: list[str],
    files: RunFiles,
    meta: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> Launched:
    """Start ``argv`` in a new session (its own process group), output appended to the node's log.

    The pidfile is written before this returns, so a ``down`` from another shell can stop a server that is
    still loading.
    """
    _make_run_dir(files)
    run_id = secrets.token_hex(8)
    child_env = {**(env if env is not None else os.environ), RUN_ID_ENV: run_id}
    # engines log their arguments (vLLM prints --api-key's value): the log is readable by its owner only
    fd = os.open(files.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log:
        log.write(
            f"--- kimi-deploy up {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: "
            f"{' '.join(argv)}\n".encode()
        )
        log.flush()
        # the log is appended to across runs; diagnosis reads only what this run wrote
        offset = log.tell()
        data = {**meta, "log": str(files.log), "log_offset": offset, "run_id": run_id}
        # recorded before the fork: a supervisor killed between fork and the pidfile below leaves an engine
        # that `down` still finds, by the run id in its environment
        atomic_write_json(files.pidfile, {**data, "spawning": True})
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=child_env,
                cwd=cwd,
            )
        except OSError as exc:
            forget(files)
            raise LaunchError(f"cannot start {argv[0]}: {exc.strerror}") from None
    write_pidfile(files, proc.pid, data)
    # start_new_session makes the child the leader of its own group, so its pgid is its pid
    return Launched(proc, Running(files, proc.pid, proc.pid, data), offset)


def write_pidfile(files: RunFiles, pid: int, meta: dict[str, Any]) -> Path:
    """Record ``pid`` (with its group and start time, which identify it later) and ``meta``."""
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = 0.0
    data = {
        "pid": pid,
        "pgid": os.getpgid(pid) if pid_alive(pid) else pid,
        "create_time": create_time,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
    }
    return atomic_write_json(files.pidfile, data)


def update_pidfile(files: RunFiles, **changes: Any) -> None:
    """Merge ``changes`` into the pidfile (e.g. ``ready_at`` once the engine answers)."""
    data = _read_json(files.pidfile)
    if data is not None:
        atomic_write_json(files.pidfile, {**data, **changes})


def running(files: RunFiles) -> Running | None:
    """The live process the pidfile names, or None (no pidfile, dead process, or a reused pid)."""
    data = _read_json(files.pidfile)
    if data is None:
        return None
    if not isinstance(data.get("pid"), int):
        return _spawned(files, data)
    pid, pgid = data["pid"], int(data.get("pgid", data["pid"]))
    if data.get("mode") == "systemd":
        return Running(files, pid, pgid, data)
    try:
        p = psutil.Process(pid)
        alive = p.status() != psutil.STATUS_ZOMBIE
        same = abs(p.create_time() - float(data.get("create_time", 0.0))) < 1.0
    except psutil.Error:
        alive = same = False
    if alive and same:
        return Running(files, pid, pgid, data)
    if _group_members(pgid, data.get("run_id")):
        # the leader (the launch script) is gone but the engine it started still runs in the group
        return Running(files, pid, pgid, data)
    return None


def _spawned(files: RunFiles, data: dict[str, Any]) -> Running | None:
    """The engine of a pidfile written before its fork and never completed (its supervisor died in
    between): found by the run id in its environment, whatever its pid."""
    run_id = data.get("run_id")
    if not run_id:
        return None
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or p.environ().get(RUN_ID_ENV) != run_id:
                continue
            pgid = os.getpgid(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
        return Running(files, p.info["pid"], pgid, data)
    return None


def forget(files: RunFiles) -> None:
    """Remove the pidfile (the log is kept for diagnosis)."""
    files.pidfile.unlink(missing_ok=True)


@dataclass(frozen=True)
class Stopped:
    """How a stop went: ``how`` is ``SIGTERM`` (exited in the grace period) or ``SIGKILL``."""

    how: str
    seconds: float


def stop(run: Running, grace_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> Stopped:
    """SIGTERM the process group, wait up to ``grace_s`` for every member to exit, then SIGKILL the rest.

    ``proc`` is the Popen when the caller started the process itself (it is reaped, so no zombie stays).
    """
    t0 = time.monotonic()
    how = "SIGTERM"
    run_id = run.meta.get("run_id")
    if run.pgid == os.getpgid(0) or not _group_members(run.pgid, run_id, reap=proc):
        # never signal our own group, nor a group that is not (or no longer) the one we started
        return Stopped(how, 0.0)
    _signal_group(run.pgid, signal.SIGTERM)
    while _group_members(run.pgid, run_id, reap=proc):
        if time.monotonic() - t0 >= grace_s:
            how = "SIGKILL"
            _signal_group(run.pgid, signal.SIGKILL)
            end = time.monotonic() + 10
            while _group_members(run.pgid, run_id, reap=proc) and time.monotonic() < end:
                time.sleep(0.05)
            break
        time.sleep(0.05)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    return Stopped(how, time.monotonic() - t0)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_members(pgid: int, run_id: Any, reap: subprocess.Popen[bytes] | None = None) -> list[int]:
    """Live (non-zombie) processes of group ``pgid`` that carry ``run_id`` in their environment.

    The run id is what makes a group ours: a pid (and so a group id) can be reused by an unrelated process
    after ours exited, but that process does not inherit our environment. No run id: no members.
    """
    if reap is not None:
        reap.poll()
    if not run_id:
        return []
    members = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(p.info["pid"]) != pgid:
                continue
            if p.environ().get(RUN_ID_ENV) == run_id:
                members.append(p.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _make_run_dir(files: RunFiles) -> None:
    files.run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(files.run_dir, 0o700)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, not yet reaped by its parent: gone for
    every purpose here). Another user's live process counts as alive."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd, a CI runner cancelling the job) unwinds like Ctrl-C for the body, so its clean-up
    (a rollback, stopping the demo's servers) still runs. Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:  # noqa: ANN401
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_json(path: Path) -> dict[str, Any] | None:
    """The pidfile's data, or None when there is none or it is not one (never a pid of 0 or 1 to signal)."""
    try:
        return schema.load_json(path, PIDFILE_SCHEMA)
    except InputError:
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
