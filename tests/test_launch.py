"""`kimi-deploy up` / `down` / `status` with real processes on loopback.

The engine is the real llama-server (the CPU build `make setup` caches) on the demo GGUF, whose weights are
locked and verified by the real deploy.weights.lockfile. The plan is a plan.json written through
deploy.planning.contract, and the launch scripts are written here: they stand in for `kimi-deploy render`'s
output, so each test controls
exactly what the engine is told. Scripts that print an engine's refusal and exit, or kill themselves, are
fault injection (labelled as such): they produce failures a real engine here cannot (a vLLM KV-cache refusal
needs a GPU-sized model; the OOM killer needs memory pressure).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
from helpers.plans import cpu_candidate

from deploy import constants, pins
from deploy.catalog import load_model
from deploy.checking import suite as check
from deploy.planning import architecture
from deploy.planning.contract import Plan, Weights, load_plan, save_plan
from deploy.serving import diagnosis, launch, readiness
from deploy.weights import lockfile

REPO = Path(__file__).resolve().parent.parent
NODE = "ci"


# --- fixtures -------------------------------------------------------------------------------------------


def llama_server_binary() -> Path:
    """The cached CPU llama-server (`kimi-deploy engine install llama.cpp` / `make setup` builds it)."""
    version = pins.LLAMA_CPP_PYTHON_VERSION
    candidates = [
        constants.CACHE_DIR / "engines" / "llama.cpp" / f"{version}-cpu-rpc" / "bin" / "llama-server",
        constants.CACHE_DIR
        / "src"
        / f"llama_cpp_python-{version}"
        / "vendor"
        / "llama.cpp"
        / "build"
        / "bin"
        / "llama-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(f"no llama-server under {constants.CACHE_DIR}: run `make setup` (builds it once, ~15 min)")


@pytest.fixture(scope="module")
def server_bin() -> Path:
    return llama_server_binary()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A verified weights folder: the demo GGUF, its weights.lock (real sha256) and verify's stamp."""
    model = load_model("demo")
    gguf = architecture.demo_gguf_path(model)
    d = tmp_path_factory.mktemp("weights") / "gemma-3-270m-GGUF"
    d.mkdir()
    target = d / gguf.name
    try:
        os.link(gguf, target)
    except OSError:
        target.symlink_to(gguf)
    lock = lockfile.Lock(
        repo=model.variants[0].repo,
        commit="0" * 40,
        files=[lockfile.LockedFile(gguf.name, gguf.stat().st_size, sha256=lockfile.sha256_file(gguf))],
    )
    lockfile.write_lock(d, lock)
    assert lockfile.verify(d).ok
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_plan(
    tmp: Path,
    weights_dir: Path,
    port: int,
    time_to_ready_s: int = 60,
    engine: str = "llama.cpp",
    max_model_len: int = 2048,
) -> Path:
    weights = Weights(
        variant="Q4_K_M",
        repo="kimi-deploy-demo/gemma-3-270m-GGUF",
        revision="main",
        allow_patterns=["*.gguf"],
        bytes=0,
        format="gguf",
        local_dir=str(weights_dir),
    )
    cand = cpu_candidate(
        weights,
        engine=engine,
        max_model_len=max_model_len,
        engine_args={"host": "127.0.0.1", "port": port, "threads": 1},
        time_to_ready_s=time_to_ready_s,
        # the deadline is the plan's own field (a real plan derives it with a factor of safety)
        ready_deadline_s=time_to_ready_s,
    )
    plan = Plan(
        model={"name": "demo", "served_model_name": "demo"},
        hardware={"name": "test", "nodes": [{"name": NODE}]},
        candidates=[cand],
        chosen=cand.id,
    )
    return save_plan(plan, tmp / "plan.json")


def write_script(rendered: Path, body: str, node: str = NODE) -> Path:
    rendered.mkdir(parents=True, exist_ok=True)
    script = rendered / f"launch-{node}.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def llama_script(rendered: Path, server_bin: Path, model: Path, port: int, extra: str = "") -> Path:
    return write_script(
        rendered,
        f"exec {server_bin} -m {model} --host 127.0.0.1 --port {port} -c 512 -np 1 -t 1 --alias demo {extra}",
    )


def kd(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(tmp / "state"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def up_args(tmp: Path, *extra: str) -> list[str]:
    return ["up", "--plan", str(tmp / "plan.json"), "--rendered", str(tmp / "rendered"), *extra]


def group_alive(pgid: int) -> bool:
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.info["pid"]) == pgid:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


@pytest.fixture()
def cleanup(tmp_path: Path) -> Iterator[None]:
    """Whatever a test started under tmp_path/state is stopped afterwards, pass or fail."""
    yield
    launch.down(state_dir=tmp_path / "state", grace_s=2)


# --- the real engine: start, status, idempotence, down ----------------------------------------------------


@pytest.mark.slow
def test_up_status_down_real_llama_server(
    tmp_path: Path, weights: Path, server_bin: Path, cleanup: None
) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    gguf = next(weights.glob("*.gguf"))
    llama_script(tmp_path / "rendered", server_bin, gguf, port)

    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "ready in" in r.stderr and f"http://127.0.0.1:{port}" in r.stderr
    # `up` returned: the engine must answer 200 now, without waiting
    assert readiness.probe(f"http://127.0.0.1:{port}/health", "llama.cpp").state == readiness.READY

    pidfile = json.loads((tmp_path / "state" / "run" / f"{NODE}.json").read_text())
    pid = pidfile["pid"]
    assert psutil.Process(pid).is_running()

    st = kd(tmp_path, "status")
    assert st.returncode == 0 and f"{NODE}: ready pid {pid}" in st.stdout

    # a second up finds the ready server: exit 0, nothing new started
    again = kd(tmp_path, *up_args(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert json.loads((tmp_path / "state" / "run" / f"{NODE}.json").read_text())["pid"] == pid

    d = kd(tmp_path, "down")
    assert d.returncode == 0 and f"stopped pid {pid} (SIGTERM" in d.stdout
    assert not group_alive(pid)
    assert readiness.probe(f"http://127.0.0.1:{port}/health", "llama.cpp").state == readiness.REFUSED

    d2 = kd(tmp_path, "down")
    assert d2.returncode == 0 and "not running" in d2.stdout
    st2 = kd(tmp_path, "status")
    assert st2.returncode == 1


def test_second_up_while_first_is_starting_is_refused(tmp_path: Path, weights: Path, cleanup: None) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    # a server that never opens its port: the first `up` keeps waiting (and holds the lock) until its deadline
    write_script(tmp_path / "rendered", "exec sleep 60")
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(tmp_path / "state")}
    first = subprocess.Popen(
        [sys.executable, "-m", "deploy", *up_args(tmp_path, "--deadline", "8")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pidfile = tmp_path / "state" / "run" / f"{NODE}.json"
        end = time.monotonic() + 10
        while not pidfile.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert pidfile.exists()
        second = kd(tmp_path, *up_args(tmp_path, "--deadline", "8"))
        assert second.returncode == 6
        assert "another `kimi-deploy up`" in second.stderr
        assert second.stderr.count("error:") == 1 and "Traceback" not in second.stderr
    finally:
        first.terminate()
        first.wait(timeout=20)


def test_up_refuses_unverified_weights(tmp_path: Path, weights: Path) -> None:
    port = free_port()
    raw = tmp_path / "unverified"
    raw.mkdir()
    gguf = next(weights.glob("*.gguf"))
    os.symlink(gguf, raw / gguf.name)
    write_plan(tmp_path, raw, port)
    write_script(tmp_path / "rendered", "exec sleep 60")

    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 5
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(raw) in line and "kimi-deploy" in line
    assert not (tmp_path / "state" / "run" / f"{NODE}.json").exists()

    # verified once, then changed on disk (the stamp records size and mtime): refused again
    lockfile.write_lock(raw, lockfile.read_lock(weights))
    assert lockfile.verify(raw).ok
    assert lockfile.is_verified(raw)
    extra = raw / "notes.txt"
    extra.write_text("not locked, ignored")
    assert lockfile.is_verified(raw)
    (raw / gguf.name).unlink()
    r2 = kd(tmp_path, *up_args(tmp_path))
    assert r2.returncode == 5 and gguf.name in r2.stderr and "verify" in r2.stderr


def test_up_refuses_an_unverified_speculative_draft_model(tmp_path: Path, weights: Path) -> None:
    """A plan with a draft model (`plan --speculative`): verified weights are not enough, the draft's folder
    must pass `verify` too, before anything starts."""
    port = free_port()
    plan_path = write_plan(tmp_path, weights, port)
    data = json.loads(plan_path.read_text())
    draft = tmp_path / "weights" / "org" / "draft"
    draft.mkdir(parents=True)
    data["candidates"][0]["engine_args"]["speculative"] = {
        "method": "eagle3",
        "draft_repo": "org/draft",
        "draft_model_path": str(draft),
        "num_steps": 3,
        "eagle_topk": 1,
        "num_draft_tokens": 4,
    }
    plan_path.write_text(json.dumps(data))
    write_script(tmp_path / "rendered", "exec sleep 60")
    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 5, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: refusing to start on unverified weights") and str(draft) in line
    assert not (tmp_path / "state" / "run" / f"{NODE}.json").exists()


# --- fault tests: each ends with the right cause and exit 6, and leaves nothing running ---------------


def test_bad_model_path_real_engine(tmp_path: Path, weights: Path, server_bin: Path) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    missing = tmp_path / "no-such-model.gguf"
    llama_script(tmp_path / "rendered", server_bin, missing, port)

    t0 = time.monotonic()
    r = kd(tmp_path, *up_args(tmp_path))
    took = time.monotonic() - t0
    assert r.returncode == 6
    assert "[missing_weights]" in r.stderr and "exited with status" in r.stderr
    assert str(missing) in r.stderr  # the last log lines name the file
    # it failed on the exit, not on the plan's 60 s deadline
    assert took < 30
    assert not (tmp_path / "state" / "run" / f"{NODE}.json").exists()


def test_port_already_taken_before_start(tmp_path: Path, weights: Path) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    write_script(tmp_path / "rendered", "exec sleep 60")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6
    assert f"port {port}" in r.stderr and "already in use" in r.stderr
    assert f"pid {os.getpid()}" in r.stderr  # names who holds it
    # refused before starting anything
    assert not (tmp_path / "state" / "run" / f"{NODE}.log").exists()


def test_port_taken_under_the_engine_real_engine(tmp_path: Path, weights: Path, server_bin: Path) -> None:
    # Fault injection: the script binds a port other than the plan's (as when another server grabs the port
    # between the check and the engine's bind), so the real llama-server hits the taken port and exits.
    port, taken = free_port(), free_port()
    write_plan(tmp_path, weights, port)
    llama_script(tmp_path / "rendered", server_bin, next(weights.glob("*.gguf")), taken)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6
    assert "[port_in_use]" in r.stderr and "couldn't bind" in r.stderr


def test_unknown_flag_real_engine(tmp_path: Path, weights: Path, server_bin: Path) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    llama_script(
        tmp_path / "rendered", server_bin, next(weights.glob("*.gguf")), port, extra="--no-such-flag"
    )
    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6 and "[unknown_flag]" in r.stderr and "--no-such-flag" in r.stderr


def stay_503_script(rendered: Path, port: int) -> Path:
    """The fault-injecting server (deploy.fakes.faultserver), stay-503: 503 "Loading model" forever."""
    return write_script(
        rendered, f"exec {sys.executable} -m deploy.fakes.faultserver --mode stay-503 --port {port}"
    )


def test_server_stays_503_past_deadline(tmp_path: Path, weights: Path) -> None:
    port = free_port()
    deadline = 6.0
    write_plan(tmp_path, weights, port, time_to_ready_s=int(deadline))
    stay_503_script(tmp_path / "rendered", port)

    t0 = time.monotonic()
    r = kd(tmp_path, *up_args(tmp_path))
    took = time.monotonic() - t0
    assert r.returncode == 6
    assert "[deadline]" in r.stderr and "503 Loading model" in r.stderr
    # progress while waiting: plain lines (stderr is not a TTY) with elapsed time, state and the last log line
    progress = [ln for ln in r.stderr.splitlines() if f"s / {deadline:g}s" in ln]
    assert progress and "503 Loading model" in progress[0] and "GET /health" in progress[0]
    assert deadline <= took < deadline + 15
    # the server was stopped
    assert readiness.probe(f"http://127.0.0.1:{port}/health", "llama.cpp").state == readiness.REFUSED


def test_deadline_flag_overrides_plan(tmp_path: Path, weights: Path) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port, time_to_ready_s=600)
    write_script(tmp_path / "rendered", "exec sleep 60")
    t0 = time.monotonic()
    r = kd(tmp_path, *up_args(tmp_path, "--deadline", "1.5"))
    assert r.returncode == 6 and "did not become ready in 1.5 s" in r.stderr
    assert time.monotonic() - t0 < 15


def test_vllm_kv_cache_refusal(tmp_path: Path, weights: Path) -> None:
    # Fault injection: a stand-in engine prints vLLM's KV-cache refusal for the plan's max_model_len, exits 1.
    port = free_port()
    max_len = 262_144
    kv_tokens = max_len // 4
    write_plan(tmp_path, weights, port, engine="vllm", max_model_len=max_len)
    write_script(
        tmp_path / "rendered",
        (
            "echo 'INFO loading weights' \n"
            f"echo \"ValueError: The model's max seq len ({max_len}) is larger than the maximum number of "
            f"tokens that can be stored in KV cache ({kv_tokens}). Try increasing gpu_memory_utilization or "
            'decreasing max_model_len when initializing the engine." >&2\nexit 1'
        ),
    )
    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6 and "[kv_cache_too_small]" in r.stderr and "exited with status 1" in r.stderr


def test_engine_killed_reads_as_host_oom(tmp_path: Path, weights: Path) -> None:
    # Fault injection: the engine dies by SIGKILL, as under the kernel's OOM killer.
    port = free_port()
    write_plan(tmp_path, weights, port)
    write_script(tmp_path / "rendered", "echo 'loading'\nkill -9 $$")
    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6 and "[host_oom]" in r.stderr and f"status -{int(signal.SIGKILL)}" in r.stderr


def test_missing_engine_binary(tmp_path: Path, weights: Path) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    write_script(tmp_path / "rendered", f"{tmp_path}/engines/bin/llama-server --port {port}")
    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6 and "[engine_missing]" in r.stderr


def test_secrets_never_shown(tmp_path: Path, weights: Path) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    secret = "sk-" + os.urandom(12).hex()
    env = tmp_path / "rendered" / "kimi-deploy.env"
    env.parent.mkdir(parents=True)
    env.write_text(f"KIMI_API_KEY={secret}\n")
    env.chmod(0o600)
    # the engine gets the env file's values (as from systemd's EnvironmentFile=), echoes its argv with the
    # key, then fails (as vLLM logs its non-default args)
    write_script(
        tmp_path / "rendered",
        "echo \"args: --api-key ${KIMI_API_KEY:-unset}\"\necho 'unrecognized arguments: --bogus' >&2\nexit 2",
    )
    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6 and "[unknown_flag]" in r.stderr
    assert "--api-key ***" in r.stderr
    assert secret not in r.stderr + r.stdout
    # the engine's own log keeps what the engine printed: it is readable by its owner only
    log = tmp_path / "state" / "run" / f"{NODE}.log"
    assert secret in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600 and log.parent.stat().st_mode & 0o777 == 0o700


# --- down -----------------------------------------------------------------------------------------------


def test_down_kills_after_grace_when_term_is_ignored(tmp_path: Path) -> None:
    from deploy.serving import supervise

    files = supervise.RunFiles.for_node(tmp_path / "state", NODE)
    # a process group whose leader ignores SIGTERM and has a child that ignores it too
    script = write_script(tmp_path / "r", "trap '' TERM\n(trap '' TERM; sleep 300) &\nsleep 300")
    started = supervise.start([str(script)], files, {"engine": "llama.cpp", "url": ""})
    time.sleep(0.3)
    grace = 1.0
    t0 = time.monotonic()
    r = kd(tmp_path, "down", "--grace", str(grace))
    took = time.monotonic() - t0
    started.proc.wait(timeout=10)
    assert r.returncode == 0 and "SIGKILL" in r.stdout
    assert took >= grace
    assert not group_alive(started.proc.pid)
    again = kd(tmp_path, "down")
    assert again.returncode == 0 and again.stdout.strip() == "not running"


def test_supervisor_killed_between_fork_and_pidfile_leaves_nothing_down_cannot_stop(tmp_path: Path) -> None:
    """A supervisor SIGKILLed right after it forked the engine, before the pidfile named the pid (what
    `kill -9` of an `upgrade` at step start-new can hit): `down` still finds the engine by its run id and
    stops it.

    Fault injection (the one mock here): the child's ``write_pidfile`` kills its own process, because no real
    part stops a process at exactly that instruction."""
    state = tmp_path / "state"
    script = write_script(tmp_path / "r", "sleep 300")
    child = (
        "import os, signal, sys\n"
        "from deploy.serving import supervise\n"
        "supervise.write_pidfile = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"supervise.start([{str(script)!r}], supervise.RunFiles.for_node({str(state)!r}, {NODE!r}),"
        " {'engine': 'llama.cpp', 'url': ''})\n"
    )
    killed = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    engine = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and str(script) in " ".join(p.info["cmdline"])
    ]
    assert engine, "the fault did not leave an orphaned engine to find"
    status = kd(tmp_path, "status")
    assert f"running, not ready pid {engine[0].pid}" in status.stdout, status.stdout + status.stderr
    d = kd(tmp_path, "down", "--grace", "5")
    assert d.returncode == 0 and f"stopped pid {engine[0].pid}" in d.stdout, d.stdout + d.stderr
    psutil.wait_procs(engine, timeout=10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in engine)
    assert kd(tmp_path, "down").stdout.strip() == "not running"


def test_stale_pidfile_is_not_a_server(tmp_path: Path, weights: Path, cleanup: None) -> None:
    port = free_port()
    write_plan(tmp_path, weights, port)
    run = tmp_path / "state" / "run"
    run.mkdir(parents=True)
    # a pidfile naming a live process that is not ours (this test's own pid, with another start time)
    (run / f"{NODE}.json").write_text(
        json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "create_time": 1.0})
    )
    assert kd(tmp_path, "status").returncode == 1
    d = kd(tmp_path, "down")
    assert d.returncode == 0 and "not running" in d.stdout
    assert psutil.pid_exists(os.getpid())


# --- systemd: command construction only (systemd is not PID 1 on this machine) ------------------------------


def test_systemd_commands(tmp_path: Path) -> None:
    unit = tmp_path / "rendered" / f"kimi-deploy-{NODE}.service"
    cmds = launch.systemd_up_commands(unit, Path("/etc/systemd/system"))
    assert cmds[0] == ["install", "-m", "0644", str(unit), f"/etc/systemd/system/{unit.name}"]
    assert cmds[1] == ["systemctl", "daemon-reload"]
    assert cmds[2] == ["systemctl", "enable", "--now", "--no-block", unit.name]
    assert launch.systemd_down_commands(unit.name) == [["systemctl", "disable", "--now", unit.name]]


def test_up_systemd_without_systemd_is_a_clear_error(tmp_path: Path, weights: Path) -> None:
    if launch.systemd_available():
        pytest.skip("systemd runs here: the command construction is what this test is about")
    port = free_port()
    write_plan(tmp_path, weights, port)
    write_script(tmp_path / "rendered", "exec sleep 60")
    (tmp_path / "rendered" / f"kimi-deploy-{NODE}.service").write_text("[Service]\nExecStart=/bin/true\n")
    r = kd(tmp_path, *up_args(tmp_path, "--systemd"))
    assert r.returncode == 6 and "systemd is not running" in r.stderr


# --- readiness semantics and diagnosis, on real HTTP answers and engine messages ----------------------


@pytest.mark.parametrize(
    ("engine", "status", "expected"),
    [
        ("llama.cpp", 503, readiness.LOADING),
        ("sglang", 503, readiness.LOADING),
        ("vllm", 503, readiness.UNHEALTHY),
        ("vllm", 200, readiness.READY),
        ("llama.cpp", 500, readiness.UNHEALTHY),
    ],
)
def test_probe_semantics(engine: str, status: int, expected: str) -> None:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = readiness.health_url(engine, "0.0.0.0", srv.server_address[1])
        assert url.startswith("http://127.0.0.1:")
        assert readiness.probe(url, engine).state == expected
    finally:
        srv.shutdown()
        srv.server_close()
    assert readiness.probe(url, engine).state == readiness.REFUSED


def test_backoff_is_capped_at_250ms(tmp_path: Path) -> None:
    polls: list[float] = []

    def exit_status() -> int | None:
        polls.append(time.monotonic())
        return None

    port = free_port()
    deadline = 3.0
    r = readiness.wait_ready(f"http://127.0.0.1:{port}/health", "vllm", deadline, exit_status)
    assert r.timed_out and not r.ready
    gaps = [b - a for a, b in zip(polls, polls[1:], strict=False)]
    assert max(gaps) <= readiness.MAX_INTERVAL_S + 0.1
    # backoff grows from FIRST_INTERVAL_S by BACKOFF up to the cap: at least deadline / cap probes
    assert r.polls >= int(deadline / readiness.MAX_INTERVAL_S)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        # vLLM v1 (vllm/v1/core/kv_cache_utils.py)
        (
            "ValueError: To serve at least one request with the models's max seq len (262144), (34.3 GiB KV "
            "cache is needed, which is larger than the available KV cache memory (8.1 GiB).",
            "kv_cache_too_small",
        ),
        (
            "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
            "kv_cache_too_small",
        ),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", "cuda_oom"),
        ("OSError: [Errno 98] Address already in use", "port_in_use"),
        ("api_server.py: error: unrecognized arguments: --tp 8", "unknown_flag"),
        ("launch_server.py: error: argument --tool-call-parser: invalid choice: 'kimi'", "unknown_flag"),
        ("OSError: /models/x does not appear to have a file named config.json.", "missing_weights"),
        ("/opt/launch.sh: line 3: vllm: command not found", "engine_missing"),
        # llama.cpp's RPC backend (ggml/src/ggml-rpc/ggml-rpc.cpp) aborts, and gdb's backtrace follows with
        # "No such file or directory" lines that must not read as missing weights
        (
            "ggml-rpc.cpp:547: Failed to connect to 10.213.0.2:50052\n"
            "58\t../sysdeps/nptl/libc_start_call_main.h: No such file or directory.",
            "rpc_unreachable",
        ),
        (
            "ggml-rpc.cpp:566: Remote RPC server crashed or returned malformed response\n"
            "360\t../csu/libc-start.c: No such file or directory.",
            "rpc_worker_lost",
        ),
    ],
)
def test_diagnosis_of_engine_messages(line: str, kind: str) -> None:
    assert diagnosis.diagnose(f"INFO starting\n{line}\nINFO shutting down\n", 1).kind == kind


def test_rpc_diagnosis_names_the_worker() -> None:
    d = diagnosis.diagnose("ggml-rpc.cpp:547: Failed to connect to 10.213.0.2:50052\n", -6)
    assert "rpc-server 10.213.0.2:50052" in d.summary
    # the crash message names no address: the caller names the workers it found unreachable
    lost = "ggml-rpc.cpp:566: Remote RPC server crashed or returned malformed response\n"
    assert diagnosis.diagnose(lost, -6, rpc_servers=["10.213.0.3:50052"]).summary.endswith(
        "rpc-server 10.213.0.3:50052"
    )


def test_diagnosis_without_a_known_message() -> None:
    assert diagnosis.diagnose("INFO starting\n", None, timed_out=True).kind == "deadline"
    assert diagnosis.diagnose("INFO starting\n", 3).kind == "exited"
    assert diagnosis.diagnose("", -int(signal.SIGKILL)).kind == "host_oom"


# --- workers and terminals --------------------------------------------------------------------------------


def test_worker_node_has_no_http_and_counts_as_started_when_it_stays_up(
    tmp_path: Path, weights: Path, cleanup: None
) -> None:
    port = free_port()
    plan = write_plan(tmp_path, weights, port)
    data = json.loads(plan.read_text())
    data["hardware"]["nodes"].append({"name": "w1"})
    data["candidates"][0]["nodes"] = 2
    plan.write_text(json.dumps(data))
    write_script(tmp_path / "rendered", "exec sleep 60", node="w1")
    t0 = time.monotonic()
    r = kd(tmp_path, *up_args(tmp_path, "--node", "w1"))
    assert r.returncode == 0 and "w1: worker started" in r.stderr
    assert time.monotonic() - t0 >= launch.WORKER_SETTLE_S
    # a second up on the worker (an Ansible re-run) finds it alive: exit 0, nothing new started
    again = kd(tmp_path, *up_args(tmp_path, "--node", "w1"))
    assert again.returncode == 0 and "already running" in again.stderr
    # a worker that dies at start is a failure with its diagnosis
    write_script(tmp_path / "rendered", "echo 'unrecognized arguments: --bad' >&2; exit 2", node="w1")
    kd(tmp_path, "down")
    r2 = kd(tmp_path, *up_args(tmp_path, "--node", "w1"))
    assert r2.returncode == 6 and "[unknown_flag]" in r2.stderr
    bad = kd(tmp_path, *up_args(tmp_path, "--node", "nope"))
    assert bad.returncode == 2 and "no node 'nope'" in bad.stderr


def test_progress_on_a_terminal_rewrites_one_line(tmp_path: Path, weights: Path) -> None:
    import pty

    port = free_port()
    write_plan(tmp_path, weights, port)
    stay_503_script(tmp_path / "rendered", port)
    leader, follower = pty.openpty()
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy", *up_args(tmp_path, "--deadline", "3")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=30) == 6
    text = b"".join(chunks).decode("utf-8", "replace")
    # several in-place updates (every 0.5 s on a terminal), then the failure on its own lines
    assert text.count("\r\x1b[K") >= 3 and "503 Loading model" in text and "[deadline]" in text


def test_rendered_manifest_decides_port_and_weights(tmp_path: Path, weights: Path) -> None:
    """`render --port/--weights-dir` can differ from the plan: `up` follows the manifest render wrote."""
    plan_port, served_port = free_port(), free_port()
    unverified = tmp_path / "elsewhere"
    unverified.mkdir()
    write_plan(tmp_path, unverified, plan_port)
    stay_503_script(tmp_path / "rendered", served_port)
    gguf = next(weights.glob("*.gguf"))
    manifest = {
        "schema": 1,
        "candidate": "llama.cpp/test",
        "engine": "llama.cpp",
        "bind": "127.0.0.1",
        "port": served_port,
        "model_path": str(gguf),
        "env_file": "kimi-deploy.env",
        "nodes": [
            {
                "name": NODE,
                "rank": 0,
                "role": "head",
                "serves_http": True,
                "launch": f"launch-{NODE}.sh",
                "service": f"kimi-deploy-{NODE}.service",
                "env_files": ["kimi-deploy.env"],
            }
        ],
    }
    (tmp_path / "rendered" / "manifest.json").write_text(json.dumps(manifest))
    r = kd(tmp_path, *up_args(tmp_path, "--deadline", "2"))
    # it got past the verified-weights check (the GGUF's folder, not the plan's) and waited on the served port
    assert r.returncode == 6 and "[deadline]" in r.stderr and "503 Loading model" in r.stderr
    assert f"127.0.0.1:{plan_port}" not in r.stderr
    down = kd(tmp_path, "down", "--rendered", str(tmp_path / "rendered"))
    assert down.returncode == 0 and down.stdout.strip() == f"{NODE}: not running"


def test_diagnosis_of_a_recorded_vllm_kv_refusal() -> None:
    """A real vLLM CPU log (tests/fixtures/vllm_cpu/kv_refusal.log): the cause sits above the traceback."""
    from deploy.engines.vllm_cpu import parse_kv_refusal

    log = (REPO / "tests" / "fixtures" / "vllm_cpu" / "kv_refusal.log").read_text()
    refusal = parse_kv_refusal(log)
    assert refusal is not None and refusal.fits
    d = diagnosis.diagnose(log, 1)
    assert d.kind == "kv_cache_too_small"
    assert (
        f"max_model_len {refusal.max_model_len}" in d.summary and f"at most {refusal.fits} fits" in d.summary
    )
    assert f"--context {refusal.fits}" in d.hint
    # the last lines of such a log are the traceback, so the matched line is reported on its own
    assert d.evidence not in diagnosis.last_lines(log, 15) and "KV cache is needed" in d.evidence


# --- llama.cpp RPC workers: ready when rpc-server's port accepts --------------------------------------------


def rpc_server_command(port: int) -> str:
    """The real rpc-server beside the cached llama-server on 127.0.0.1:``port``; without that build, a
    stand-in TCP listener (labelled: it only accepts and closes, as rpc-server does for a bare connection)."""
    rpc = constants.CACHE_DIR / "engines" / "llama.cpp" / f"{pins.LLAMA_CPP_PYTHON_VERSION}-cpu-rpc" / "bin"
    if (rpc / "rpc-server").is_file():
        return f"exec {rpc / 'rpc-server'} -H 127.0.0.1 -p {port} -t 1"
    stand_in = (
        f"import socket; s = socket.create_server(('127.0.0.1', {port})); print('stand-in', flush=True)\n"
        "while True: s.accept()[0].close()"
    )
    return f"exec {sys.executable} -c {shlex.quote(stand_in)}"


def rpc_layout(tmp: Path, weights: Path, http_port: int, rpc_port: int, worker_script: str) -> None:
    """A two-node llama.cpp RPC plan (head `ci`, worker `w1` on loopback) and its manifest, as render writes
    them: the worker's argv carries rpc-server's -H/-p, the head's --rpc names the worker."""
    plan = write_plan(tmp, weights, http_port)
    data = json.loads(plan.read_text())
    data["hardware"]["nodes"] = [{"name": n, "address": "127.0.0.1"} for n in (NODE, "w1")]
    data["candidates"][0]["nodes"] = 2
    data["candidates"][0]["placement"] = "rpc"
    data["candidates"][0]["engine_args"]["rpc_servers"] = [f"127.0.0.1:{rpc_port}"]
    plan.write_text(json.dumps(data))
    write_script(tmp / "rendered", worker_script, node="w1")
    gguf = next(weights.glob("*.gguf"))
    manifest = {
        "schema": 1,
        "candidate": "llama.cpp/test",
        "engine": "llama.cpp",
        "bind": "127.0.0.1",
        "port": http_port,
        "model_path": str(gguf),
        "env_file": "kimi-deploy.env",
        "nodes": [
            {
                "name": NODE,
                "rank": 0,
                "role": "head",
                "serves_http": True,
                "program": "llama.cpp",
                "argv": ["llama-server", "--rpc", f"127.0.0.1:{rpc_port}", "--port", str(http_port)],
                "launch": f"launch-{NODE}.sh",
            },
            {
                "name": "w1",
                "rank": 1,
                "role": "worker",
                "serves_http": False,
                "program": "rpc",
                "argv": ["rpc-server", "-H", "127.0.0.1", "-p", str(rpc_port), "-t", "1"],
                "launch": "launch-w1.sh",
            },
        ],
    }
    (tmp / "rendered" / "manifest.json").write_text(json.dumps(manifest))


def accepts(port: int) -> bool:
    return readiness.probe_tcp("127.0.0.1", port, timeout_s=1.0).state == readiness.READY


def test_rpc_worker_is_ready_when_its_port_accepts(tmp_path: Path, weights: Path, cleanup: None) -> None:
    http_port, rpc_port = free_port(), free_port()
    delay_s = 1.5
    # the worker opens its port only after delay_s: `up` must wait for the port, not for "still alive"
    rpc_layout(tmp_path, weights, http_port, rpc_port, f"sleep {delay_s}\n{rpc_server_command(rpc_port)}")
    t0 = time.monotonic()
    r = kd(tmp_path, *up_args(tmp_path, "--node", "w1"))
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert f"w1: worker started, listening on 127.0.0.1:{rpc_port}" in r.stderr
    assert accepts(rpc_port) and delay_s <= took < delay_s + launch.WORKER_SETTLE_S
    # status: the worker is ready by its port (the head's URL is not asked: nothing serves it)
    st = kd(tmp_path, "status", "--json")
    (w1,) = [s for s in json.loads(st.stdout) if s["node"] == "w1"]
    assert w1["ready"] and w1["detail"] == f"listening on 127.0.0.1:{rpc_port}", st.stdout
    # an Ansible re-run: alive and listening is "already running", exit 0, nothing new started
    pid = json.loads((tmp_path / "state" / "run" / "w1.json").read_text())["pid"]
    again = kd(tmp_path, *up_args(tmp_path, "--node", "w1"))
    assert again.returncode == 0 and "already running" in again.stderr, again.stderr
    assert json.loads((tmp_path / "state" / "run" / "w1.json").read_text())["pid"] == pid
    assert kd(tmp_path, "down", "--node", "w1").returncode == 0
    assert not accepts(rpc_port)


def test_rpc_worker_that_never_listens_fails_at_the_deadline(tmp_path: Path, weights: Path) -> None:
    http_port, rpc_port = free_port(), free_port()
    rpc_layout(tmp_path, weights, http_port, rpc_port, "exec sleep 60")
    r = kd(tmp_path, *up_args(tmp_path, "--node", "w1", "--deadline", "1.5"))
    assert r.returncode == 6 and "[deadline]" in r.stderr, r.stderr
    assert kd(tmp_path, "status").stdout.strip() == "not running"


def test_rpc_worker_port_taken_is_refused_before_start(tmp_path: Path, weights: Path) -> None:
    http_port, rpc_port = free_port(), free_port()
    rpc_layout(tmp_path, weights, http_port, rpc_port, rpc_server_command(rpc_port))
    with socket.create_server(("127.0.0.1", rpc_port)):
        r = kd(tmp_path, *up_args(tmp_path, "--node", "w1"))
    assert r.returncode == 6 and f"port {rpc_port} on 127.0.0.1 is already in use" in r.stderr, r.stderr


@pytest.mark.slow
def test_rpc_head_names_the_worker_it_cannot_reach_or_lost(
    tmp_path: Path, weights: Path, server_bin: Path, cleanup: None
) -> None:
    """Real llama-server --rpc: started before its worker, then losing it."""
    http_port, rpc_port = free_port(), free_port()
    rpc_layout(tmp_path, weights, http_port, rpc_port, rpc_server_command(rpc_port))
    gguf = next(weights.glob("*.gguf"))
    head = write_script(
        tmp_path / "rendered",
        f"exec {server_bin} -m {gguf} --rpc 127.0.0.1:{rpc_port} --host 127.0.0.1 --port {http_port} "
        "-c 512 -np 1 -t 1 --alias demo",
    )
    assert head.name == f"launch-{NODE}.sh"
    r = kd(tmp_path, *up_args(tmp_path))
    assert r.returncode == 6 and "[rpc_unreachable]" in r.stderr, r.stderr[-2000:]
    assert f"rpc-server 127.0.0.1:{rpc_port}" in r.stderr
    # in order: the worker, then the head; then the worker goes away under a serving head
    assert kd(tmp_path, *up_args(tmp_path, "--node", "w1")).returncode == 0
    up_head = kd(tmp_path, *up_args(tmp_path))
    assert up_head.returncode == 0, up_head.stderr[-2000:]
    # rpc-server serves one client at a time (listen backlog 1): while the head holds its session, re-runs
    # of `up` on the worker and of the head's rpc_workers check must not queue connections it never accepts
    target = check.target_from_rendered(load_plan(tmp_path / "plan.json"), tmp_path / "rendered")
    assert target.rpc_servers == [f"127.0.0.1:{rpc_port}"]
    for _ in range(4):
        again = kd(tmp_path, *up_args(tmp_path, "--node", "w1"))
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr
        assert check.check_rpc_workers(target).status == check.PASS
    assert kd(tmp_path, "down", "--node", "w1").returncode == 0
    lost = check.check_rpc_workers(target)
    assert (
        lost.status == check.FAIL
        and lost.reason == f"rpc-server 127.0.0.1:{rpc_port} unreachable (connection refused)"
    )
    import requests

    with pytest.raises(requests.RequestException):
        requests.post(
            f"http://127.0.0.1:{http_port}/completion", json={"prompt": "Hi", "n_predict": 2}, timeout=30
        )
    head_run = json.loads((tmp_path / "state" / "run" / f"{NODE}.json").read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(head_run["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    log = (tmp_path / "state" / "run" / f"{NODE}.log").read_bytes()[head_run["log_offset"] :].decode()
    d = diagnosis.diagnose(log, -int(signal.SIGABRT), rpc_servers=[f"127.0.0.1:{rpc_port}"])
    assert d.kind == "rpc_worker_lost" and f"rpc-server 127.0.0.1:{rpc_port}" in d.summary, log[-2000:]
