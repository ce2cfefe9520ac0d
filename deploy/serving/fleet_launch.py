"""`up`, `down` and `status` of a fleet: replicas first, then the router in front of them; the router first on
the way down; a replica leaves the router (drained) before it stops.

    >>> from deploy.serving import fleet_launch
    >>> started = fleet_launch.up("plan.json", "rendered")     # doctest: +SKIP
    r0-vm: ready in 3.2 s at http://127.0.0.1:8002
    r1-vm: ready in 3.4 s at http://127.0.0.1:8003
    router: ready in 0.6 s at http://127.0.0.1:8001, 2 of 2 replicas healthy

A release without a router (one replica) goes straight to deploy.serving.launch, unchanged. The router's
run state is the pidfile ``<state>/run/router.json`` beside the nodes' own; its log ``router.log``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from deploy import constants
from deploy.errors import LaunchError, PlanError, RouterRequestError
from deploy.monitoring import scrape
from deploy.routers import registry as routers
from deploy.routers.client import RouterClient
from deploy.serving import launch, readiness, release_dir, supervise
from deploy.serving import target as launch_target
from deploy.serving.target import port_holder, read_manifest

#: The router's name among the nodes of the run state (``<state>/run/router.json``).
ROUTER = "router"
#: How long `up` waits for the router to answer and to see every replica healthy, beyond its health checks.
ROUTER_READY_S = 60.0
#: How long a replica leaving the router may take to finish its requests in flight before it is stopped.
DRAIN_DEADLINE_S = 120.0
#: Between two reads of a draining replica's engine metrics: zero twice this far apart is drained.
DRAIN_POLL_S = 0.2


@dataclass(frozen=True)
class RouterTarget:
    """What `up` starts for the router, from the rendered manifest's ``fleet.router``."""

    script: Path
    env_files: tuple[Path, ...]
    url: str
    port: int
    bind: str
    workers: tuple[str, ...]
    health_check_interval_s: float
    #: where the router's Prometheus metrics are (``host:port``)
    metrics: str
    key_env: str
    #: the router's registry name (``fleet.router.program``)
    program: str = "vllm-router"
    #: the replicas are prefill and decode servers (the router's prefill/decode mode), which the router takes
    #: from its command line only: none is taken out or put back while it runs
    split: bool = False


def fleet(rendered: str | Path) -> dict[str, Any] | None:
    """The manifest's ``fleet`` of ``rendered``'s current release (None: one endpoint, no router)."""
    return read_manifest(rendered).get("fleet") or None


def router_target(rendered: str | Path) -> RouterTarget:
    rendered = release_dir.resolve(rendered)
    spec = fleet(rendered)
    if spec is None:
        raise PlanError(f"{rendered}: the release has no router (the plan has one replica)")
    r = spec["router"]
    script = rendered / str(r["launch"])
    if not script.is_file():
        raise PlanError(f"{script}: no rendered router launch script (run `kimi-deploy render`)")
    return RouterTarget(
        script=script,
        env_files=(rendered / str(r["env_file"]),),
        url=str(r["url"]),
        port=int(r["port"]),
        bind=str(r["bind"]),
        workers=tuple(str(x["url"]) for x in spec["replicas"]),
        health_check_interval_s=float(r.get("health_check_interval_s") or 5),
        metrics=str(r.get("metrics") or ""),
        key_env=routers.get(str(r["program"])).api_key_env,
        program=str(r["program"]),
        split=any(x.get("role") for x in spec["replicas"]),
    )


def _refuse_in_split(target: RouterTarget, what: str) -> None:
    if target.split:
        raise LaunchError(
            f"{what}: a prefill/decode router takes its servers from its command line only; stop the router "
            "first (`kimi-deploy down --node router`), or the whole fleet (`kimi-deploy down`)"
        )


def client(target: RouterTarget) -> RouterClient:
    """A client of the running router, with its key when it has one."""
    metrics = f"http://{target.metrics}" if target.metrics else None
    return RouterClient(_reach(target.url), router_key(target), metrics, program=target.program)


def _reach(url: str) -> str:
    # a router bound to every interface is reached on loopback from its own machine
    return url.replace("://0.0.0.0:", "://127.0.0.1:")


def router_key(target: RouterTarget) -> str | None:
    """The key the router wants from clients, as its env file gives it (None on loopback)."""
    for env_file in target.env_files:
        value = launch_target.env_file_pairs(env_file).get(target.key_env)
        if value:
            return value
    return os.environ.get(target.key_env) or None


def up(
    plan_path: str | Path = "plan.json",
    rendered: str | Path = "rendered",
    *,
    node: str | None = None,
    systemd: bool = False,
    deadline_s: float | None = None,
    state_dir: str | Path | None = None,
    stream: TextIO | None = None,
) -> list[launch.UpResult]:
    """Start what ``rendered`` runs here: one node (``node``; ``router`` for the router), else every replica
    then the router, waiting for each to be ready and for the router to see every replica healthy."""
    spec = fleet(rendered)
    if spec is None or (node is not None and node != ROUTER):
        return [
            launch.up(
                plan_path,
                rendered,
                node=node,
                systemd=systemd,
                deadline_s=deadline_s,
                state_dir=state_dir,
                stream=stream,
            )
        ]
    if node == ROUTER:
        return [up_router(rendered, state_dir=state_dir, stream=stream)]
    multi = [r["id"] for r in spec["replicas"] if len(r["nodes"]) > 1]
    if multi:
        raise LaunchError(
            f"replica(s) {', '.join(multi)} span several nodes: start them node by node (`up --node NAME` on "
            "each, then `up --node router`), or with the Ansible playbook"
        )
    results = [
        launch.up(
            plan_path,
            rendered,
            node=str(r["head"]),
            systemd=systemd,
            deadline_s=deadline_s,
            state_dir=state_dir,
            stream=stream,
        )
        for r in spec["replicas"]
    ]
    return [*results, up_router(rendered, state_dir=state_dir, stream=stream)]


def up_router(
    rendered: str | Path, *, state_dir: str | Path | None = None, stream: TextIO | None = None
) -> launch.UpResult:
    """Start the router and return once it answers and reports every replica healthy."""
    target = router_target(rendered)
    launch_target.secret_values(target.env_files)
    files = supervise.RunFiles.for_node(state_dir or constants.STATE_DIR, ROUTER)
    say = _say(stream)
    with supervise.node_lock(files):
        existing = supervise.running(files)
        if existing is not None:
            if client(target).ready():
                lost = _missing(target) + _stuck(target)
                if lost:
                    _refuse_in_split(target, f"the router does not route to {', '.join(lost)}")
                for url in lost:
                    # a replica stopped with `down --node` left the router, one that died may still have
                    # an open circuit there: started again, it goes back in afresh
                    if url not in _missing(target):
                        client(target).remove_worker(url)
                    client(target).add_worker(url)
                    _wait(lambda u=url: routable(target).get(u, False), lambda: None, ROUTER_READY_S)
                    say(f"{ROUTER}: {url} back in the router")
                say(f"{ROUTER}: already running (pid {existing.pid}) at {target.url}")
                return launch.UpResult(ROUTER, target.url, existing.pid, already=True, log=str(files.log))
            raise LaunchError(f"the router (pid {existing.pid}) is not ready; run `kimi-deploy down` first")
        supervise.forget(files)
        holder = port_holder(target.bind, target.port)
        if holder is not None:
            raise LaunchError(f"port {target.port} on {target.bind} is already in use by {holder}")
        env = dict(os.environ)
        for env_file in target.env_files:
            env.update(launch_target.env_file_pairs(env_file))
        say(f"starting the router: {target.script} (log {files.log})")
        meta = {
            "url": f"{_reach(target.url)}/health",
            "program": ROUTER,
            "serves_http": True,
            "router": True,
            "rendered": str(release_dir.resolve(rendered)),
            "workers": list(target.workers),
            "env_files": [str(p) for p in target.env_files],
            "script": str(target.script),
            "mode": "process",
        }
        launched = supervise.start(["bash", str(target.script)], files, meta, env=env)
        started = time.monotonic()
        deadline = ROUTER_READY_S + 2 * target.health_check_interval_s
        seen = _wait(lambda: _all_healthy(target), launched.proc.poll, deadline)
        if seen is not True:
            supervise.stop(launched.run, grace_s=5, proc=launched.proc)
            supervise.forget(files)
            why = "exited" if seen is None else f"did not see every replica healthy within {deadline:g} s"
            tail = launch._tail(files.log, launched.log_offset)
            raise LaunchError(f"the router {why}; its log ends:\n{tail}")
        elapsed = time.monotonic() - started
        say(
            f"{ROUTER}: ready in {elapsed:.1f} s at {target.url}, "
            f"{len(target.workers)} of {len(target.workers)} replicas healthy (pid {launched.proc.pid})"
        )
        supervise.update_pidfile(files, ready_s=round(elapsed, 3))
        return launch.UpResult(ROUTER, target.url, launched.proc.pid, ready_s=elapsed, log=str(files.log))


def worker_health(target: RouterTarget) -> dict[str, bool]:
    """Each replica URL the router routes to: healthy as the router sees it."""
    return {w.url: w.healthy for w in client(target).workers()}


def routable(target: RouterTarget) -> dict[str, bool]:
    """Each replica URL the router lists: True when it would send it a request now (healthy, and its
    circuit breaker not open: a replica back from the dead stays unused until its circuit closes)."""
    c = client(target)
    health = {w.url: w.healthy for w in c.workers()}
    name = routers.get(target.program).metrics.get("cb_state")
    try:
        circuits = c.metrics().get(name, {}) if name and target.metrics else {}
    except RouterRequestError:
        circuits = {}
    return {url: ok and circuits.get(url, 0) == 0 for url, ok in health.items()}


def _stuck(target: RouterTarget) -> list[str]:
    """Replicas the router lists but would not route to, whose engine answers: put back in afresh."""
    state = routable(target)
    return [w for w in target.workers if w in state and not state[w] and _answers(w)]


def _answers(url: str) -> bool:
    return readiness.probe(f"{url}/health", "").state == readiness.READY


def wait_routable(rendered: str | Path, others_than: str, seconds: float = ROUTER_READY_S) -> None:
    """Wait until every replica but ``others_than`` is routable: taking one out must leave the rest able to
    serve. LaunchError when they are not within ``seconds``."""
    target = router_target(rendered)
    leaving = _replica_url(rendered, others_than)
    rest = [w for w in target.workers if w != leaving]
    if rest and not _wait(lambda: all(routable(target).get(w) for w in rest), lambda: None, seconds):
        raise LaunchError(
            f"not taking {others_than} out of the router: the other replicas are not all routable "
            f"(healthy with a closed circuit) after {seconds:g} s"
        )


def _missing(target: RouterTarget) -> list[str]:
    """The rendered replicas the running router does not route to."""
    known = {w.url for w in client(target).workers()}
    return [w for w in target.workers if w not in known]


def _all_healthy(target: RouterTarget) -> bool:
    health = worker_health(target)
    return all(health.get(w) for w in target.workers)


def _wait(
    done: Callable[[], bool], exit_status: Callable[[], int | None], seconds: float, pause_cap: float = 0.25
) -> bool | None:
    """True once ``done()``; None if the process exits first; False at the deadline. Polls the state itself,
    backing off to ``pause_cap``."""
    end, pause = time.monotonic() + seconds, 0.02
    while time.monotonic() < end:
        if exit_status() is not None:
            return None
        try:
            if done():
                return True
        except RouterRequestError:
            pass
        time.sleep(pause)
        pause = min(pause * 2, pause_cap)
    return False


def drain(
    rendered: str | Path, replica: str, *, deadline_s: float = DRAIN_DEADLINE_S, stream: TextIO | None = None
) -> float:
    """Take ``replica`` out of the router and wait until its requests in flight reach 0 (or the deadline);
    returns the seconds it took. The replica keeps serving what it has.

    In flight is what the replica's engine itself reports running or waiting on its ``/metrics`` (the
    routers count differently, and forget a worker once it leaves them), zero twice in a row, so that a
    request routed just before the worker left has reached the engine; an engine that serves no metrics
    is drained by the router's own count."""
    target = router_target(rendered)
    _refuse_in_split(target, f"not taking {replica} out of the running router")
    url = _replica_url(rendered, replica)
    engine = str(read_manifest(rendered).get("engine") or "")
    started = time.monotonic()
    if url not in {w.url for w in client(target).workers()}:
        # already out (a roll putting a replica back, a second `down --node`): nothing routes to it
        _say(stream)(f"{replica}: not in the router")
        return 0.0
    if _engine_busy(url, engine, router_key(target)) is None:
        drained = client(target).drain(url, deadline_s)
    else:
        client(target).remove_worker(url)
        quiet = [0]

        def idle() -> bool:
            busy = _engine_busy(url, engine, router_key(target))
            quiet[0] = quiet[0] + 1 if busy == 0 else 0
            return quiet[0] >= 2

        drained = _wait(idle, lambda: None, deadline_s, pause_cap=DRAIN_POLL_S) is True
    elapsed = time.monotonic() - started
    how = f"drained in {elapsed:.1f} s" if drained else f"still busy after the {deadline_s:g} s deadline"
    _say(stream)(f"{replica}: out of the router, {how}")
    return elapsed


def _engine_busy(url: str, engine: str, key: str | None) -> float | None:
    """Requests running plus waiting on the engine at ``url`` (None: it serves no metrics to read)."""
    try:
        summary = scrape.summarize(engine, scrape.parse_metrics(scrape.fetch(f"{url}/metrics", key)))
    except scrape.ScrapeError:
        return None
    if summary.running is None:
        return None
    return float(summary.running or 0) + float(summary.waiting or 0)


def rejoin(rendered: str | Path, replica: str, *, stream: TextIO | None = None) -> None:
    """Put ``replica`` back behind the router and wait until the router sees it healthy."""
    target = router_target(rendered)
    _refuse_in_split(target, f"not putting {replica} back in the running router")
    url = _replica_url(rendered, replica)
    client(target).add_worker(url)
    seen = _wait(lambda: bool(routable(target).get(url)), lambda: None, ROUTER_READY_S)
    if not seen:
        raise LaunchError(f"the router does not see {replica} ({url}) healthy after {ROUTER_READY_S:g} s")
    _say(stream)(f"{replica}: back in the router, healthy")


def _replica_url(rendered: str | Path, replica: str) -> str:
    spec = fleet(rendered) or {"replicas": []}
    for r in spec["replicas"]:
        if replica in (r["id"], r["head"]):
            return str(r["url"])
    known = ", ".join(str(r["id"]) for r in spec["replicas"]) or "none"
    raise PlanError(f"the fleet has no replica {replica!r} (replicas: {known})")


def replica_of_node(rendered: str | Path, node: str) -> str | None:
    """The replica whose node is ``node`` (None outside a fleet)."""
    spec = fleet(rendered) or {"replicas": []}
    return next((str(r["id"]) for r in spec["replicas"] if node in r["nodes"]), None)


def down(
    *,
    node: str | None = None,
    grace_s: float = 30.0,
    state_dir: str | Path | None = None,
    rendered: str | Path | None = None,
    stream: TextIO | None = None,
) -> list[str]:
    """Stop the router first, then the replicas (``node``: that one only; a replica's node leaves the router,
    drained, before it stops)."""
    state = Path(state_dir or constants.STATE_DIR)
    router_run = supervise.running(supervise.RunFiles.for_node(state, ROUTER))
    if node is not None and node != ROUTER and router_run is not None:
        # the release the router runs names the replicas, whatever --rendered says
        running = str(router_run.meta.get("rendered") or rendered or "")
        replica = replica_of_node(running, node) if running else None
        if replica is not None:
            drain(running, replica, stream=stream)
    lines = []
    if node == ROUTER or (node is None and ROUTER in supervise.all_nodes(state)):
        lines += launch.down(node=ROUTER, grace_s=grace_s, state_dir=state)
        if node == ROUTER:
            return lines
    rest = launch.down(node=node, grace_s=grace_s, state_dir=state, rendered=rendered)
    return (
        lines + [line for line in rest if not line.startswith(f"{ROUTER}:")] if node is None else lines + rest
    )


def _say(stream: TextIO | None) -> Callable[[str], None]:
    import sys

    out = stream if stream is not None else sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    return say


__all__ = [
    "DRAIN_DEADLINE_S",
    "ROUTER",
    "RouterTarget",
    "down",
    "drain",
    "fleet",
    "rejoin",
    "router_target",
    "up",
    "up_router",
]
