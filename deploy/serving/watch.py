"""`kimi-deploy status --watch` / `--json`: each node's readiness plus what its engine's ``/metrics`` says.

    >>> from deploy.serving.watch import snapshot
    >>> views = snapshot()                                       # doctest: +SKIP
    >>> views[0].node, views[0].ready, views[0].metrics["running"]      # doctest: +SKIP
    ('ci', True, 0.0)

Per node: ready, requests running and waiting, KV-cache usage (llama.cpp: busy slots over ``total_slots``
from ``/props``), generated tokens and, from the second snapshot on, generated tokens/s. The API key for
``/metrics`` (where the server wants one) comes from the environment or the env files the engine was started
with; it is sent as a bearer header and never shown.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from deploy import console
from deploy.deadline import http_get
from deploy.engines import registry
from deploy.errors import KimiDeployError
from deploy.monitoring import scrape
from deploy.serving import fleet_launch, launch
from deploy.serving import target as launch_target


@dataclass
class NodeView:
    """One node in the live view."""

    node: str
    running: bool
    ready: bool
    pid: int
    url: str
    detail: str
    engine: str = ""
    metrics: dict[str, float | None] = field(default_factory=dict)
    metrics_error: str = ""
    summary: scrape.MetricsSummary | None = None
    #: predicted against measured at the node's last `up` (deploy/serving/calibration.py), or None
    calibration: dict[str, Any] | None = None
    #: a fleet: "router" for the router, the replica's URL for a replica's head (as the router names it)
    program: str = ""
    #: a fleet replica's head: healthy as the router sees it (None outside a fleet or the router unreachable)
    healthy: bool | None = None
    #: a fleet replica's head: its replica id (``r0``)
    replica: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "running": self.running,
            "ready": self.ready,
            "pid": self.pid,
            "url": self.url,
            "detail": self.detail,
            "engine": self.engine,
            "metrics": self.metrics,
            "metrics_error": self.metrics_error or None,
            "calibration": self.calibration,
            "program": self.program or self.engine,
            "replica": self.replica,
            "healthy_in_router": self.healthy,
        }


def _api_key(meta: dict[str, Any], key_env: str) -> str | None:
    if os.environ.get(key_env):
        return os.environ[key_env]
    files = tuple(Path(p) for p in meta.get("env_files") or [] if isinstance(p, str))
    for env_file in files:
        value = launch_target.env_file_pairs(env_file).get(key_env)
        if value:
            return value
    return None


def _slots(base: str, key: str | None, cache: dict[str, int]) -> int:
    """llama-server's ``total_slots`` from /props (cached per URL); 1 when it does not say."""
    if base not in cache:
        cache[base] = 1
        with contextlib.suppress(requests.RequestException, ValueError, TypeError):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = http_get(f"{base}/props", headers=headers, timeout_s=3)
            if r.status_code == 200:
                cache[base] = max(1, int(r.json().get("total_slots") or 1))
    return cache[base]


def snapshot(
    state_dir: str | Path | None = None,
    previous: dict[str, NodeView] | None = None,
    key_env: str = "KIMI_API_KEY",
    slot_cache: dict[str, int] | None = None,
) -> list[NodeView]:
    """Every node `up` started here, with its metrics; ``previous`` (the last snapshot) gives tokens/s."""
    previous = previous or {}
    slot_cache = {} if slot_cache is None else slot_cache
    views = []
    for s in launch.status(state_dir):
        engine = str(s.meta.get("engine") or "")
        v = NodeView(s.node, s.running, s.ready, s.pid, s.url, s.detail, engine)
        v.calibration = s.meta.get("calibration") or None
        v.program = str(s.meta.get("program") or engine)
        views.append(v)
        if not (s.running and s.url and engine):
            continue
        base = s.url.rsplit("/", 1)[0]
        key = _api_key(s.meta, key_env)
        try:
            text = scrape.fetch(f"{base}/metrics", key)
        except scrape.ScrapeError as exc:
            v.metrics_error = str(exc)
            continue
        eng = registry.find(engine)
        slots = _slots(base, key, slot_cache) if eng is not None and eng.metrics.slot_based else 1
        v.summary = scrape.summarize(engine, scrape.parse_metrics(text), slots=slots)
        before = previous.get(s.node)
        v.metrics = {
            "running": v.summary.running,
            "waiting": v.summary.waiting,
            "kv_usage": v.summary.kv_usage,
            "generated_tokens": v.summary.generated_tokens,
            "tokens_per_s": scrape.tokens_per_s(before.summary if before else None, v.summary),
        }
    _router_view(views, launch.status_meta(state_dir))
    return views


def _router_view(views: list[NodeView], metas: dict[str, dict[str, Any]]) -> None:
    """A fleet: the router's program, and each replica head's id and health as the router sees it."""
    router = next((m for m in metas.values() if m.get("router")), None)
    if router is None:
        return
    try:
        target = fleet_launch.router_target(str(router.get("rendered")))
        spec = fleet_launch.fleet(str(router.get("rendered"))) or {"router": {}, "replicas": []}
    except KimiDeployError:
        return
    heads = {str(r["head"]): str(r["id"]) for r in spec["replicas"]}
    for v in views:
        if metas.get(v.node, {}).get("router"):
            v.program = str(spec["router"].get("program") or v.program)
        v.replica = heads.get(v.node)
    try:
        health = fleet_launch.worker_health(target)
    except KimiDeployError:
        return
    for v in views:
        worker = v.url.rsplit("/", 1)[0]
        if worker in health:
            v.healthy = health[worker]


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def row(v: NodeView) -> list[str]:
    """The table cells for one node: node, state, running, waiting, KV, tokens/s, generated, detail."""
    state = "ready" if v.ready else ("running, not ready" if v.running else "not running")
    m = v.metrics
    return [
        v.node,
        state,
        _num(m.get("running")),
        _num(m.get("waiting")),
        _num(m.get("kv_usage"), "{:.0%}"),
        _num(m.get("tokens_per_s"), "{:.1f}"),
        _num(m.get("generated_tokens")),
        v.metrics_error or v.detail,
    ]


COLUMNS = ["node", "state", "running", "waiting", "KV cache", "gen tok/s", "generated", "detail"]


def plain_line(v: NodeView) -> str:
    """One line per node for a pipe or a log (no terminal): the state, pid and URL, then the metrics.

    >>> plain_line(NodeView("ci", True, True, 42, "http://127.0.0.1:8001/health", "200", "llama.cpp",
    ...                     {"running": 1.0, "waiting": 0.0, "kv_usage": 0.5}))
    'ci: ready pid 42 http://127.0.0.1:8001 (200) running=1 waiting=0 kv=50% gen_tok_s=- generated=-'
    """
    state = "ready" if v.ready else ("running, not ready" if v.running else "not running")
    pid = f" pid {v.pid}" if v.running else ""
    url = f" {v.url.rsplit('/', 1)[0]}" if v.running and v.url else ""
    line = f"{v.node}: {state}{pid}{url} ({v.detail})"
    if v.healthy is not None:
        line += f" {v.replica}: {'healthy' if v.healthy else 'UNHEALTHY'} in the router"
    if v.metrics_error:
        return f"{line} metrics: {v.metrics_error}"
    if not v.metrics:
        return line
    cells = dict(zip(COLUMNS, row(v), strict=True))
    return (
        f"{line} running={cells['running']} waiting={cells['waiting']} kv={cells['KV cache']} "
        f"gen_tok_s={cells['gen tok/s']} generated={cells['generated']}"
    )


def table(views: list[NodeView]) -> Any:
    """A rich table of the nodes (deploy.console's style; the state column coloured)."""
    rows = [row(v) for v in views] or [["-", "not running", *["-"] * (len(COLUMNS) - 2)]]
    return console.table(
        COLUMNS,
        rows,
        title="kimi-deploy status",
        right=("running", "waiting", "KV cache", "gen tok/s", "generated"),
        styled_column="state",
    )


def run(
    *,
    as_json: bool = False,
    watch: bool = False,
    interval_s: float = 2.0,
    count: int | None = None,
    key_env: str = "KIMI_API_KEY",
    state_dir: str | Path | None = None,
) -> list[NodeView]:
    """Print the nodes once (or every ``interval_s`` with ``watch``, ``count`` times at most, until Ctrl-C):
    a live rich table on a terminal, one plain line per node otherwise, JSON with ``as_json``. Returns the
    last snapshot."""
    tty = console.is_terminal() and not as_json
    previous: dict[str, NodeView] = {}
    slots: dict[str, int] = {}
    views: list[NodeView] = []
    n = 0
    live = None
    if watch and tty:
        from rich.live import Live

        live = Live(table([]), console=console.make_console(), auto_refresh=False, transient=False)
        live.start()
    try:
        while True:
            views = snapshot(state_dir, previous, key_env, slots)
            previous = {v.node: v for v in views}
            n += 1
            if live is not None:
                live.update(table(views), refresh=True)
            elif as_json:
                payload = [v.as_json() for v in views]
                print(json.dumps(payload) if watch else json.dumps(payload, indent=2), flush=True)
            else:
                console.show("\n".join(plain_line(v) for v in views) or "not running", table(views))
            if not watch or (count is not None and n >= count):
                return views
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return views
    finally:
        if live is not None:
            live.stop()


__all__ = ["COLUMNS", "NodeView", "plain_line", "row", "run", "snapshot", "table"]
