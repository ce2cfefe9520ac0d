"""`up`, `down` and `status`: start the rendered launch script, wait until the engine is ready, stop it.

    >>> from deploy.serving.launch import up, down
    >>> result = up("plan.json", "rendered")            # doctest: +SKIP
    starting llama.cpp on node ci: rendered/launch-ci.sh (log .kimi-deploy/run/ci.log)
    ready in 3.1 s at http://127.0.0.1:8001 (pid 4242)
    >>> down()                                          # doctest: +SKIP
    ['ci: stopped pid 4242 (SIGTERM, 0.2 s)']

Rules, in order:

1. Weights must have passed ``kimi-deploy verify`` (the lockfile's stat-only stamp); otherwise refuse.
2. One server per node: an ``flock`` guards the start, and a live pidfile means "already running". A second
   ``up`` on a node whose server answers 200 says so and succeeds (exit 0), so ``up`` is idempotent like
   ``down``; a second ``up`` while the first is still starting, or beside a server that is not ready, fails
   (exit 6) and says which.
3. The port must be free before the engine starts (a server already there would otherwise answer our
   health probe); on a worker that listens (llama.cpp's ``rpc-server``), its own port.
4. Wait for ``/health`` 200 until the plan's ``time_to_ready_s`` (or ``deadline_s``), backoff capped at
   250 ms, reporting elapsed time and the last log line. If the process exits or the deadline passes, stop
   it, read the cause from its log (deploy.serving.diagnosis) and
   raise LaunchError (exit 6) after printing the last
   log lines.

With ``systemd=True`` the node's rendered unit is installed and started (``systemctl daemon-reload``,
``enable --now``) instead, and the same wait runs; the engine's log is then the unit's journal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from deploy import constants
from deploy.errors import LaunchError, PlanError
from deploy.monitoring import prometheus
from deploy.planning.contract import Plan, load_plan
from deploy.secrets import redact
from deploy.serving import calibration, diagnosis, readiness, supervise
from deploy.serving import target as launch_target
from deploy.serving.target import ServingTarget, port_holder, read_manifest, require_verified, target_for

__all__ = [
    "ServingTarget",
    "down",
    "port_holder",
    "read_manifest",
    "require_verified",
    "status",
    "status_meta",
    "target_for",
    "up",
]

#: Where `up --systemd` installs units.
SYSTEMD_UNIT_DIR = Path("/etc/systemd/system")
#: How long a worker node's process that listens on nothing of its own (vLLM/SGLang headless ranks) must stay
#: up to count as started; a worker that listens (rpc-server) is started when its port accepts.
WORKER_SETTLE_S = 5.0
#: Under the state folder: the data and record of a Prometheus started for the deployment (demo --monitoring).
PROMETHEUS_DIR = "prometheus"
#: Log lines shown with a failure.
FAILURE_LOG_LINES = 15


@dataclass
class UpResult:
    """What `up` did: ``already`` True when a ready server was found and nothing was started."""

    node: str
    url: str
    pid: int
    ready_s: float = 0.0
    already: bool = False
    log: str = ""
    #: predicted against measured, from the engine's start-up lines (deploy/serving/calibration.py)
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Reporter:
    """Progress lines: rewritten in place on a terminal, one line every few seconds otherwise."""

    stream: TextIO
    tty: bool
    _open_line: bool = field(default=False, init=False)

    @classmethod
    def for_stream(cls, stream: TextIO | None) -> _Reporter:
        stream = stream or sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        return cls(stream, tty)

    @property
    def every_s(self) -> float:
        return 0.5 if self.tty else 5.0

    def line(self, text: str) -> None:
        self.end_status()
        print(text, file=self.stream, flush=True)

    def status(self, text: str) -> None:
        if self.tty:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            print("\r\033[K" + text[:width], end="", file=self.stream, flush=True)
            self._open_line = True
        else:
            print(text, file=self.stream, flush=True)

    def end_status(self) -> None:
        if self._open_line:
            print(file=self.stream, flush=True)
            self._open_line = False


def up(
    plan_path: str | Path = "plan.json",
    rendered: str | Path = "rendered",
    *,
    node: str | None = None,
    systemd: bool = False,
    deadline_s: float | None = None,
    state_dir: str | Path | None = None,
    stream: TextIO | None = None,
    unit_dir: Path = SYSTEMD_UNIT_DIR,
) -> UpResult:
    """Start the node's engine and return once ``/health`` answers 200 (see the module docstring)."""
    plan = load_plan(plan_path)
    target = target_for(plan, rendered, node, deadline_s)
    # the env files are read as bash/systemd read them, or refused (exit 2) before anything starts
    launch_target.secret_values(target.env_files)
    require_verified(target.weights_dir)
    if target.draft_dir is not None:
        require_verified(target.draft_dir)
    files = supervise.RunFiles.for_node(state_dir or constants.STATE_DIR, target.node)
    out = _Reporter.for_stream(stream)
    with supervise.node_lock(files):
        existing = supervise.running(files)
        if existing is not None:
            return _already_running(existing, target, out)
        supervise.forget(files)
        host, port = (target.host, target.port) if target.head else (target.listen or ("", 0))
        holder = port_holder(host, port) if port else None
        if holder is not None:
            raise LaunchError(
                f"port {port} on {host} is already in use by {holder}; stop it or render with another port"
            )
        if systemd:
            return _up_systemd(plan, target, files, out, unit_dir)
        return _up_process(plan, target, files, out)


def _already_running(existing: supervise.Running, target: ServingTarget, out: _Reporter) -> UpResult:
    if not target.head:
        return _worker_already_running(existing, target, out)
    url = str(existing.meta.get("url") or target.url)
    state = readiness.probe(url, str(existing.meta.get("engine") or target.engine))
    if state.state == readiness.READY:
        out.line(f"{target.node}: already running (pid {existing.pid}) and ready at {url.rsplit('/', 1)[0]}")
        return UpResult(target.node, url, existing.pid, already=True, log=str(existing.files.log))
    raise LaunchError(
        f"node {target.node!r} already has a server (pid {existing.pid}) that is not ready "
        f"({state.describe(target.engine)}); run `kimi-deploy down` first"
    )


def _listen_of(meta: dict[str, Any], target: ServingTarget) -> tuple[str, int] | None:
    """The worker's listening endpoint as the running process was started with, else as rendered now."""
    recorded = str(meta.get("listen") or "")
    if recorded:
        host, _, port = recorded.rpartition(":")
        if port.isdigit():
            return host, int(port)
    return target.listen


def _worker_already_running(existing: supervise.Running, target: ServingTarget, out: _Reporter) -> UpResult:
    """A worker serves no HTTP (the head's URL may not even be reachable from here): alive, and for one that
    listens a socket listening on its port, is all there is to know."""
    listen = _listen_of(existing.meta, target)
    if listen is None:
        out.line(f"{target.node}: already running (pid {existing.pid}), worker")
        return UpResult(target.node, "", existing.pid, already=True, log=str(existing.files.log))
    state = readiness.probe_listen(*listen)
    where = f"{listen[0]}:{listen[1]}"
    if state.state == readiness.READY:
        out.line(f"{target.node}: already running (pid {existing.pid}), worker listening on {where}")
        return UpResult(target.node, "", existing.pid, already=True, log=str(existing.files.log))
    raise LaunchError(
        f"node {target.node!r} already has a worker (pid {existing.pid}) that does not listen on {where}; "
        f"run `kimi-deploy down` first"
    )


def _launch_env(target: ServingTarget) -> dict[str, str]:
    """The environment the script starts with: ours plus the rendered env file, as systemd's
    EnvironmentFile= gives the unit (a script that sources the file itself gets the same values)."""
    env = dict(os.environ)
    for env_file in target.env_files:
        env.update(launch_target.env_file_pairs(env_file))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _up_process(plan: Plan, target: ServingTarget, files: supervise.RunFiles, out: _Reporter) -> UpResult:
    argv = (
        [str(target.script.resolve())] if os.access(target.script, os.X_OK) else ["bash", str(target.script)]
    )
    out.line(f"starting {target.engine} on node {target.node}: {target.script} (log {files.log})")
    meta = {**_meta(target), "script": str(target.script), "mode": "process"}
    launched = supervise.start(argv, files, meta, env=_launch_env(target))
    proc, run, log_offset = launched.proc, launched.run, launched.log_offset
    secrets = launch_target.secret_values(target.env_files)
    try:
        result = _wait_started(
            target,
            proc.poll,
            out,
            _progress(out, target, files.log, log_offset, secrets),
            activity=lambda: _size(files.log),
        )
    except BaseException:
        out.end_status()
        supervise.stop(run, grace_s=5, proc=proc)
        supervise.forget(files)
        raise
    detected_at = time.time()
    out.end_status()
    if result.ready:
        out.line(f"{target.node}: {_started(target, result)} (pid {proc.pid})")
        calib = _calibrate(plan, target, lambda: _read_from(files.log, log_offset), result.elapsed_s, out)
        supervise.update_pidfile(
            files, ready_s=round(result.elapsed_s, 3), ready_at_unix=detected_at, calibration=calib
        )
        return UpResult(
            target.node, target.url, proc.pid, ready_s=result.elapsed_s, log=str(files.log), calibration=calib
        )
    supervise.stop(run, grace_s=10, proc=proc)
    supervise.forget(files)
    log_text = _read_from(files.log, log_offset)
    raise _failure(
        target,
        log_text,
        result.returncode,
        result.timed_out,
        result.elapsed_s,
        str(files.log),
        secrets,
        out,
        last=result.last if target.head else None,
    )


def _calibrate(
    plan: Plan, target: ServingTarget, log_text: Callable[[], str], ready_s: float, out: _Reporter
) -> dict[str, Any]:
    """The head's start-up measured against its plan and recorded (workers print no KV lines)."""
    if not target.head or not target.candidate:
        return {}
    summary = calibration.record_start(
        plan, plan.candidate(target.candidate), log_text(), ready_s, f"up node {target.node}"
    )
    out.line(f"{target.node}: {calibration.describe(summary)}")
    return summary


def _meta(target: ServingTarget) -> dict[str, Any]:
    """What the pidfile records to answer `status` and a second `up` later, however the node was started."""
    meta: dict[str, Any] = {
        "node": target.node,
        "engine": target.engine,
        "url": target.url,
        "serves_http": target.head,
        # `status --watch` reads the API key for /metrics from these (never recorded itself)
        "env_files": [str(p) for p in target.env_files],
        # the release folder the node runs (deploy.serving.release_dir): what `upgrade`/`rollback` start from
        "rendered": str(target.script.parent),
    }
    if target.listen is not None:
        meta["listen"] = f"{target.listen[0]}:{target.listen[1]}"
    return meta


def _wait_started(
    target: ServingTarget,
    exit_status: Callable[[], int | None],
    out: _Reporter,
    head_progress: Callable[[float, readiness.Probe], None],
    activity: Callable[[], int] | None = None,
) -> readiness.WaitResult:
    """The head: /health 200. A worker that listens (rpc-server): its port accepts. Any other worker
    (vLLM/SGLang headless ranks wait for the head and serve nothing): alive after WORKER_SETTLE_S."""
    if target.head:
        return readiness.wait_ready(
            target.url,
            target.engine,
            target.deadline_s,
            exit_status,
            on_progress=head_progress,
            progress_every_s=out.every_s,
            activity=activity,
        )
    if target.listen is not None:
        return readiness.wait_listening(
            *target.listen,
            target.deadline_s,
            exit_status,
            on_progress=lambda e, p: out.status(
                f"  {target.node}: {e:5.1f}s / {target.deadline_s:g}s  {p.describe('rpc')}"
            ),
            progress_every_s=out.every_s,
        )
    return _settle(exit_status, min(WORKER_SETTLE_S, target.deadline_s))


def _started(target: ServingTarget, result: readiness.WaitResult) -> str:
    if target.head:
        return f"ready in {result.elapsed_s:.1f} s at {target.base_url}"
    if target.listen is not None:
        host, port = target.listen
        return f"worker started, listening on {host}:{port} after {result.elapsed_s:.1f} s"
    return "worker started"


def _settle(exit_status: Callable[[], int | None], seconds: float) -> readiness.WaitResult:
    """A worker that listens on nothing counts as started when it is still running after ``seconds``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        rc = exit_status()
        if rc is not None:
            return readiness.WaitResult(
                False, time.monotonic() - t0, 0, readiness.Probe(readiness.REFUSED), rc
            )
        time.sleep(0.1)
    return readiness.WaitResult(True, time.monotonic() - t0, 0, readiness.Probe(readiness.READY))


def _progress(
    out: _Reporter, target: ServingTarget, log: Path, offset: int, secrets: list[str]
) -> Callable[[float, readiness.Probe], None]:
    def report(elapsed: float, probe: readiness.Probe) -> None:
        last = diagnosis.last_lines(_tail(log, offset), 1)
        tail = f" | {redact(last[0], secrets)}" if last else ""
        out.status(
            f"  {target.node}: {elapsed:5.1f}s / {target.deadline_s:g}s  "
            f"{probe.describe(target.engine)}{tail}"
        )

    return report


def _failure(
    target: ServingTarget,
    log_text: str,
    rc: int | None,
    timed_out: bool,
    elapsed: float,
    log_name: str,
    secrets: list[str],
    out: _Reporter,
    last: readiness.Probe | None = None,
) -> LaunchError:
    cause = diagnosis.diagnose(
        log_text, rc, timed_out=timed_out, rpc_servers=_unreachable(target.rpc_servers)
    )
    waiting = f" (last: {last.describe(target.engine)})" if last is not None else ""
    how = (
        f"did not become ready in {target.deadline_s:g} s{waiting}"
        if timed_out
        else f"exited with status {rc} after {elapsed:.1f} s"
    )
    shown = diagnosis.last_lines(log_text, FAILURE_LOG_LINES)
    out.line(
        f"{target.node}: {target.engine} {how}; "
        + (f"last log lines ({log_name}):" if shown else "its log is empty")
    )
    for line in shown:
        out.line(f"    {redact(line, secrets)}")
    if cause.evidence and cause.evidence not in shown:
        # the line that names the cause is often above the traceback that ends the log
        out.line(f"cause: {redact(cause.evidence, secrets)}")
    out.line(f"hint: {cause.hint}")
    return LaunchError(
        f"{target.engine} on node {target.node} {how}: {cause.summary} [{cause.kind}] (log {log_name})"
    )


def _unreachable(rpc_servers: tuple[str, ...]) -> list[str]:
    """The head's RPC workers that do not accept now (all of them when each does: the log must say more)."""
    down = []
    for server in rpc_servers:
        host, _, port = server.rpartition(":")
        if (
            port.isdigit()
            and readiness.rpc_reachable(host, int(port), timeout_s=2.0).state != readiness.READY
        ):
            down.append(server)
    return down or list(rpc_servers)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(path: Path, offset: int, size: int = 8192) -> str:
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, end - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


# --- systemd ----------------------------------------------------------------------------------------------


def systemd_up_commands(unit: Path, unit_dir: Path = SYSTEMD_UNIT_DIR) -> list[list[str]]:
    """The commands `up --systemd` runs: install the unit, reload, enable and start it.

    ``--no-block`` queues the start and returns: `up` then waits for /health itself, with its progress
    lines, its deadline and its diagnosis (the unit's own ready check would make ``systemctl`` block
    silently until TimeoutStartSec).

    >>> systemd_up_commands(Path("rendered/kimi-deploy-ci.service"), Path("/etc/systemd/system"))[1:]
    [['systemctl', 'daemon-reload'], ['systemctl', 'enable', '--now', '--no-block', 'kimi-deploy-ci.service']]
    """
    return [
        ["install", "-m", "0644", str(unit), str(unit_dir / unit.name)],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "--no-block", unit.name],
    ]


def systemd_down_commands(unit_name: str) -> list[list[str]]:
    """The commands `down` runs for a unit started by `up --systemd` (the unit file stays installed).

    >>> systemd_down_commands("kimi-deploy-ci.service")
    [['systemctl', 'disable', '--now', 'kimi-deploy-ci.service']]
    """
    return [["systemctl", "disable", "--now", unit_name]]


def systemd_available() -> bool:
    """True when systemd is PID 1 here (``/run/systemd/system`` exists) and ``systemctl`` is on PATH."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _run_all(commands: list[list[str]]) -> None:
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise LaunchError(
                f"`{' '.join(cmd)}` failed (status {done.returncode})" + (f": {detail[-1]}" if detail else "")
            )


def _unit_exit_status(unit_name: str) -> Callable[[], int | None]:
    def status() -> int | None:
        done = subprocess.run(["systemctl", "is-failed", "--quiet", unit_name], check=False)
        return 1 if done.returncode == 0 else None

    return status


def _journal(unit_name: str, lines: int = 200) -> str:
    done = subprocess.run(
        ["journalctl", "-u", unit_name, "-n", str(lines), "--no-pager", "-o", "cat"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


def _up_systemd(
    plan: Plan, target: ServingTarget, files: supervise.RunFiles, out: _Reporter, unit_dir: Path
) -> UpResult:
    if not target.unit.is_file():
        raise PlanError(
            f"{target.unit}: no rendered systemd unit for node {target.node!r} (run `kimi-deploy render`)"
        )
    if not systemd_available():
        raise LaunchError(
            "systemd is not running on this machine (no /run/systemd/system); "
            "run `kimi-deploy up` without --systemd"
        )
    name = target.unit.name
    out.line(f"installing {name} into {unit_dir} and starting it")
    _run_all(systemd_up_commands(target.unit, unit_dir))
    main_pid = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", name], capture_output=True, text=True, check=False
    ).stdout.strip()
    pid = int(main_pid) if main_pid.isdigit() else 0
    supervise.write_pidfile(files, pid, {**_meta(target), "mode": "systemd", "unit": name})
    secrets = launch_target.secret_values(target.env_files)
    result = _wait_started(
        target,
        _unit_exit_status(name),
        out,
        lambda e, p: out.status(
            f"  {target.node}: {e:5.1f}s / {target.deadline_s:g}s  {p.describe(target.engine)}"
        ),
    )
    out.end_status()
    if result.ready:
        out.line(f"{target.node}: {_started(target, result)} (unit {name})")
        calib = _calibrate(plan, target, lambda: _journal(name, lines=20000), result.elapsed_s, out)
        supervise.update_pidfile(files, ready_s=round(result.elapsed_s, 3), calibration=calib)
        return UpResult(
            target.node,
            target.url,
            pid,
            ready_s=result.elapsed_s,
            log=f"journalctl -u {name}",
            calibration=calib,
        )
    log_text = _journal(name)
    with contextlib.suppress(LaunchError):
        _run_all(systemd_down_commands(name))
    supervise.forget(files)
    raise _failure(
        target,
        log_text,
        result.returncode,
        result.timed_out,
        result.elapsed_s,
        f"journalctl -u {name}",
        secrets,
        out,
        last=result.last if target.head else None,
    )


# --- down / status --------------------------------------------------------------------------------------


def down(
    *,
    node: str | None = None,
    grace_s: float = 30.0,
    state_dir: str | Path | None = None,
    rendered: str | Path | None = None,
) -> list[str]:
    """Stop the engines `up` started (all nodes with a pidfile, or ``node``); idempotent.

    SIGTERM goes to the whole process group, SIGKILL after ``grace_s``. Units started by `up --systemd` are
    stopped and disabled. With ``rendered``, its nodes without a pidfile are listed as not running too.
    Returns one line per node, e.g. ``['ci: stopped pid 4242 (SIGTERM, 0.2 s)']`` or ``['not running']``.
    """
    if grace_s < 0:
        raise PlanError(f"--grace must be zero or more, got {grace_s}")
    state = Path(state_dir or constants.STATE_DIR)
    nodes = [node] if node else supervise.all_nodes(state)
    if rendered is not None and not node:
        nodes += [
            str(n["name"]) for n in read_manifest(rendered).get("nodes", []) if n.get("name") not in nodes
        ]
    lines = []
    for name in nodes:
        files = supervise.RunFiles.for_node(state, name)
        run = supervise.running(files)
        if run is None:
            supervise.forget(files)
            lines.append(f"{name}: not running")
            continue
        if run.meta.get("mode") == "systemd":
            unit = str(run.meta.get("unit") or f"kimi-deploy-{name}.service")
            _run_all(systemd_down_commands(unit))
            lines.append(f"{name}: stopped unit {unit}")
        else:
            stopped = supervise.stop(run, grace_s=grace_s)
            lines.append(f"{name}: stopped pid {run.pid} ({stopped.how}, {stopped.seconds:.1f} s)")
        supervise.forget(files)
    if node is None:
        # the Prometheus `demo --monitoring` left running beside the engine
        stopped = prometheus.stop_recorded(state / PROMETHEUS_DIR)
        if stopped:
            lines.append(stopped)
    return lines or ["not running"]


def _node_status(name: str, run: supervise.Running) -> NodeStatus:
    """A live node's readiness: the head's /health; a worker's listening port; else alive is ready."""
    meta = run.meta
    listen = str(meta.get("listen") or "")
    if listen:
        host, _, port = listen.rpartition(":")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            return NodeStatus(name, True, False, run.pid, "", f"pidfile names no port ({listen!r})", meta)
        p = readiness.probe_listen(host, int(port))
        detail = f"listening on {listen}" if p.state == readiness.READY else f"not listening on {listen}"
        return NodeStatus(name, True, p.state == readiness.READY, run.pid, "", detail, meta)
    if meta.get("serves_http") is False:
        return NodeStatus(
            name, True, True, run.pid, "", "worker running (listens on nothing of its own)", meta
        )
    url = str(meta.get("url", ""))
    engine = str(meta.get("engine", ""))
    p = readiness.probe(url, engine, timeout_s=2.0) if url else readiness.Probe(readiness.NO_ANSWER)
    return NodeStatus(name, True, p.state == readiness.READY, run.pid, url, p.describe(engine), meta)


@dataclass(frozen=True)
class NodeStatus:
    """One node as `status` sees it."""

    node: str
    running: bool
    ready: bool
    pid: int = 0
    url: str = ""
    detail: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def status_meta(state_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """What `up` recorded for every node with a live pidfile, by node name."""
    state = Path(state_dir or constants.STATE_DIR)
    out = {}
    for name in supervise.all_nodes(state):
        run = supervise.running(supervise.RunFiles.for_node(state, name))
        if run is not None:
            out[name] = run.meta
    return out


def status(state_dir: str | Path | None = None) -> list[NodeStatus]:
    """Every node with a pidfile: alive?, ready (``/health`` 200)?, pid and URL.

    >>> [s.ready for s in status()]  # doctest: +SKIP
    [True]
    """
    state = Path(state_dir or constants.STATE_DIR)
    out = []
    for name in supervise.all_nodes(state):
        run = supervise.running(supervise.RunFiles.for_node(state, name))
        if run is None:
            out.append(NodeStatus(name, False, False, detail="not running (stale pidfile)"))
            continue
        out.append(_node_status(name, run))
    return out
