"""`kimi-deploy bench`: a concurrency sweep through AIPerf against a target, into one report.

    >>> opts = BenchOptions(concurrency=[1, 2], requests=4, isl=[64], osl=[16])
    >>> report = run_bench(target_from_plan(load_plan("plan.json")), opts)   # doctest: +SKIP
    >>> report["capacity"]["concurrency"], report["points"][0]["ttft_ms"]["p50"]  # doctest: +SKIP
    (2, 180.3)

For each (input length, output length) shape and each concurrency, AIPerf runs once with the engine's
``/metrics`` polled beside it; its export becomes a point. A point AIPerf could not finish (the server
refused every request, a timeout) is still a point: it counts the requests as errors, so the report and the
capacity say what happened instead of stopping with a traceback.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import pins
from deploy.benchmark.aiperf import (
    PointSpec,
    aiperf_argv,
    aiperf_env,
    run_point,
    write_key_config,
)
from deploy.benchmark.export import read_export
from deploy.benchmark.install import require_aiperf
from deploy.benchmark.scrape import scraper_for
from deploy.benchmark.slo import capacity
from deploy.benchmark.tokenizer import LocalTokenizer, hub_cache_for
from deploy.checking.calls import chat_request, headers, mode_body
from deploy.checking.target import CheckTarget
from deploy.engines import registry
from deploy.errors import ExportError, InputError
from deploy.planning.contract import Plan
from deploy.serving import replicas

Progress = Callable[[str], None]
REPORT_SCHEMA = 1
WORKLOADS = ("chat", "tool-calls")
MODES = ("instant", "thinking")


@dataclass
class BenchOptions:
    """The sweep: shapes (``isl[i]``/``osl[i]``), concurrencies, and per point a count or a duration."""

    concurrency: list[int]
    isl: list[int] = field(default_factory=lambda: [64])
    osl: list[int] = field(default_factory=lambda: [16])
    requests: int | None = None
    duration_s: float | None = None
    mode: str = "instant"
    workload: str = "chat"
    slo: dict[str, float] = field(default_factory=dict)
    request_timeout_s: float = 120.0
    point_timeout_s: float | None = None
    keep_artifacts: Path | None = None
    #: (replica id, base URL) of each replica when the target is a fleet's router: engine metrics come
    #: from them, since a router serves none of the engine's
    replicas: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise InputError("--concurrency: expected positive integers, e.g. 1,2,4")
        self.concurrency = sorted(set(self.concurrency))
        if len(self.isl) != len(self.osl):
            if len(self.isl) == 1:
                self.isl = self.isl * len(self.osl)
            elif len(self.osl) == 1:
                self.osl = self.osl * len(self.isl)
            else:
                raise InputError("--isl and --osl: give one value or the same number of values")
        if any(n < 1 for n in self.isl + self.osl):
            raise InputError("--isl/--osl must be at least 1 token")
        if self.requests is not None and self.duration_s is not None:
            raise InputError("--requests and --duration are exclusive: pick one per point")
        if self.requests is not None and self.requests < 1:
            raise InputError("--requests must be at least 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InputError("--duration must be positive")
        if self.mode not in MODES:
            raise InputError(f"--mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.workload not in WORKLOADS:
            raise InputError(f"--workload {self.workload!r}: expected one of {', '.join(WORKLOADS)}")

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return list(zip(self.isl, self.osl, strict=True))

    def point_budget_s(self, concurrency: int, osl: int) -> float:
        """How long one AIPerf run may take before it is ended (start-up, the point, the grace period)."""
        if self.point_timeout_s:
            return self.point_timeout_s
        if self.duration_s is not None:
            return 120 + self.duration_s + self.request_timeout_s
        n = self.requests or max(4, 2 * concurrency)
        waves = -(-n // concurrency)
        return 120 + waves * self.request_timeout_s


def accepts_ignore_eos(flavor: str) -> bool:
    """Every engine this toolkit deploys takes ``ignore_eos`` (each output exactly --osl tokens long);
    a hosted provider may not."""
    return registry.find(flavor) is not None


def fresh_connections(flavor: str) -> bool:
    """Whether AIPerf opens a connection per request to this flavor's server: one that closes its
    connection right after each stream, where a pooled request can meet the closing socket and be lost."""
    engine = registry.find(flavor)
    return engine is not None and engine.closes_after_stream


#: the one stop string a fixed-length request names where the server would otherwise stop at the model's own
#: (``Engine.server_stop_strings``): no detokenized text holds NUL characters, so the answer runs to --osl
NO_STOP = "\u0000kimi-deploy bench: fixed length\u0000"


def _extra_body(target: CheckTarget, opts: BenchOptions) -> dict[str, Any]:
    body = dict(mode_body(target.flavor, opts.mode == "thinking"))
    sampling = target.sampling.get(opts.mode) or {}
    if "temperature" in sampling:
        body["temperature"] = float(sampling["temperature"])
    if accepts_ignore_eos(target.flavor):
        body["ignore_eos"] = True
        engine = registry.find(target.flavor)
        # ignore_eos does not lift stop strings: a base model's turn marker ended every demo answer after a
        # few tokens (all requests of `bench --plan` failed as empty or cut short)
        if target.stop and engine is not None and engine.server_stop_strings:
            body["stop"] = [NO_STOP]
    return body


def tool_call_payloads(target: CheckTarget, path: Path, osl: int, count: int = 16) -> Path:
    """The tool-call workload as AIPerf raw payloads: ``check``'s tool request (its tool definition and,
    for a base model, its few-shot history), streamed, one per line with a different city each."""
    cities = ("Berlin", "Madrid", "Oslo", "Lima", "Cairo", "Seoul", "Quito", "Dakar")
    lines = []
    for i in range(count):
        req = chat_request(target, "tool")
        body = {k: v for k, v in req.items() if k != "extra_body"}
        body.update(req.get("extra_body") or {})
        body["messages"][-1]["content"] = f"What is the weather in {cities[i % len(cities)]}?"
        body.update({"max_tokens": osl, "stream": True, "stream_options": {"include_usage": True}})
        lines.append(json.dumps(body))
    path.write_text("\n".join(lines) + "\n")
    return path


def _failed_point(concurrency: int, spec: PointSpec, reason: str) -> dict[str, Any]:
    empty = {k: None for k in ("avg", "p50", "p90", "p95", "p99")}
    asked = spec.requests or max(4, 2 * concurrency)
    return {
        "concurrency": concurrency,
        "requests": 0,
        "errors": asked if spec.duration_s is None else 1,
        "ttft_ms": dict(empty),
        "itl_ms": dict(empty),
        "e2e_ms": dict(empty),
        "output_tokens_per_s": None,
        "output_tokens_per_s_per_user": dict(empty),
        "requests_per_s": None,
        "duration_s": None,
        "error_summary": [{"count": asked, "error": reason[:300]}],
        "complete": False,
    }


def measured_decode_c1(points: list[dict[str, Any]]) -> float | None:
    """One stream's steady decode rate: 1000 / median ITL at concurrency 1 (None without such a point)."""
    for p in points:
        itl = (p.get("itl_ms") or {}).get("p50")
        if p["concurrency"] == 1 and itl:
            return round(1000.0 / itl, 2)
    return None


def compare_expected(expected: dict[str, Any] | None, points: list[dict[str, Any]]) -> dict[str, Any]:
    """The plan's ``performance`` against what was measured (ratio measured/expected)."""
    measured = measured_decode_c1(points)
    if not expected or not expected.get("decode_tokens_per_s_c1"):
        return {
            "decode_tokens_per_s_c1": None,
            "measured_decode_tokens_per_s_c1": measured,
            "ratio": None,
            "source": "no plan expectation (bench --url, or a plan without `performance`)",
        }
    want = float(expected["decode_tokens_per_s_c1"])
    return {
        **expected,
        "decode_tokens_per_s_c1": want,
        "measured_decode_tokens_per_s_c1": measured,
        "ratio": round(measured / want, 3) if measured else None,
    }


def replica_endpoints(plan: Plan) -> list[tuple[str, str]]:
    """(replica id, base URL) of each replica behind the plan's router; [] for one endpoint.

    ``replica_endpoints(load_plan("plan.json"))`` -> [("0", "http://10.0.0.5:8002"), ("1", ...)]"""
    fleet = replicas.fleet_of(plan)
    if fleet is None:
        return []
    return [(str(r["id"]), str(r["url"]).rstrip("/")) for r in fleet["replicas"] if r.get("url")]


def run_bench(
    target: CheckTarget,
    opts: BenchOptions,
    tokenizer: LocalTokenizer,
    expected: dict[str, Any] | None = None,
    progress: Progress | None = print,
) -> dict[str, Any]:
    """Sweep ``opts`` against ``target`` with AIPerf; the report as a dict (see the module doc)."""
    python = require_aiperf()
    say = progress or (lambda _m: None)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="kimi-bench-"))
    points: list[dict[str, Any]] = []
    per_point_metrics: list[dict[str, Any]] = []
    try:
        tok_name, hub = hub_cache_for(tokenizer, work / "hub", target.model)
        env = aiperf_env(hub, target.api_key)
        payloads = None
        # with ignore_eos every answer is exactly --osl tokens: one that ends short was cut off
        fixed_length = opts.workload == "chat" and accepts_ignore_eos(target.flavor)
        for isl, osl in opts.shapes:
            if opts.workload == "tool-calls":
                payloads = tool_call_payloads(target, work / f"tool-calls-{osl}.jsonl", osl)
            for c in opts.concurrency:
                spec = PointSpec(
                    concurrency=c,
                    requests=opts.requests,
                    duration_s=opts.duration_s,
                    isl=isl,
                    osl=osl,
                    extra_body=_extra_body(target, opts),
                    payloads=payloads,
                    request_timeout_s=opts.request_timeout_s,
                    # a new prompt set per point, so one point's prompts are not in the cache of the next
                    seed=1000 * len(points) + c,
                )
                artifacts = work / f"isl{isl}-osl{osl}-c{c}"
                config = write_key_config(work, spec) if target.api_key else None
                argv = aiperf_argv(
                    python, target.base_url, target.model, tok_name, spec, artifacts,
                    tokenizer.trust_remote_code, config,
                    fresh_connections=fresh_connections(target.flavor),
                )  # fmt: skip
                say(f"bench: concurrency {c}, {opts.workload} ISL {isl} / OSL {osl} ...")
                t0 = time.monotonic()
                scraper = scraper_for(target.base_url, headers(target), target.flavor, opts.replicas)
                with scraper:
                    export, rc, tail = run_point(argv, env, artifacts, opts.point_budget_s(c, osl))
                try:
                    point = read_export(export, c)
                except ExportError as exc:
                    if export.is_file():
                        raise  # an export we cannot read is not a server fault: stop with one line
                    reason = f"AIPerf exited {rc} without an export" + (" (timed out)" if rc == 124 else "")
                    last = [ln for ln in tail.splitlines() if ln.strip()][-1:] or [str(exc)]
                    point = _failed_point(c, spec, f"{reason}: {last[0].strip()}")
                point.update(
                    {"isl": isl, "osl": osl, "aiperf_exit": rc, "wall_s": round(time.monotonic() - t0, 1)}
                )
                _count_short_outputs(point, fixed_length=fixed_length)
                metrics = scraper.summary()
                point["engine_metrics"] = metrics
                per_point_metrics.append({"concurrency": c, "isl": isl, "osl": osl, **metrics})
                points.append(point)
                say(_progress_line(point))
        if opts.keep_artifacts is not None:
            opts.keep_artifacts.mkdir(parents=True, exist_ok=True)
            for d in work.glob("isl*-osl*-c*"):
                shutil.copytree(d, opts.keep_artifacts / d.name, dirs_exist_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return build_report(target, opts, tokenizer, points, per_point_metrics, expected, started)


def _count_short_outputs(point: dict[str, Any], fixed_length: bool) -> None:
    """Count answers that ended short of a fixed output length as failed: AIPerf accepts a stream that is
    closed early without ``[DONE]`` as complete, but with ``ignore_eos`` only a cut-off stream is short."""
    short = int(point.get("short_outputs") or 0)
    if not fixed_length or not short:
        return
    moved = min(short, int(point.get("requests") or 0))
    point["requests"] = int(point.get("requests") or 0) - moved
    point["errors"] = int(point.get("errors") or 0) + moved
    point.setdefault("error_summary", []).insert(
        0, {"count": moved, "error": "the response ended short of the requested output (stream cut off)"}
    )


def _progress_line(p: dict[str, Any]) -> str:
    ttft, itl = (p.get("ttft_ms") or {}).get("p50"), (p.get("itl_ms") or {}).get("p50")
    if not p.get("requests"):
        return f"  c={p['concurrency']}: no request succeeded ({p['errors']} errors)"
    return (
        f"  c={p['concurrency']}: {p['requests']} ok, {p['errors']} errors, TTFT p50 {ttft:.0f} ms, "
        f"ITL p50 {itl:.1f} ms, {p.get('output_tokens_per_s') or 0:.1f} output tok/s"
    )


def _overall_metrics(per_point: list[dict[str, Any]]) -> dict[str, Any]:
    avail = [m for m in per_point if m.get("available")]
    if not avail:
        reason = per_point[0].get("reason") if per_point else "no point ran"
        return {"available": False, "reason": reason, "per_point": per_point}

    def peak(key: str) -> float | None:
        vals = [m[key] for m in avail if m.get(key) is not None]
        return max(vals) if vals else None

    preempt = [m["preemptions"] for m in avail if m.get("preemptions") is not None]
    return {
        "available": True,
        "peak_kv_cache_usage": peak("peak_kv_cache_usage"),
        "peak_queue": peak("peak_queue"),
        "peak_running": peak("peak_running"),
        "preemptions": sum(preempt) if preempt else None,
        "sources": avail[0].get("sources"),
        "per_point": per_point,
    }


def build_report(
    target: CheckTarget,
    opts: BenchOptions,
    tokenizer: LocalTokenizer,
    points: list[dict[str, Any]],
    per_point_metrics: list[dict[str, Any]],
    expected: dict[str, Any] | None,
    started: float,
) -> dict[str, Any]:
    """The report: points, engine metrics, capacity at the SLO (per shape), expected against measured."""
    by_shape = []
    for isl, osl in opts.shapes:
        shape_points = [p for p in points if p.get("isl") == isl and p.get("osl") == osl]
        by_shape.append({"isl": isl, "osl": osl, **capacity(shape_points, opts.slo)})
    first = by_shape[0] if by_shape else capacity([], opts.slo)
    cap = {**first, "by_shape": by_shape} if len(by_shape) > 1 else first
    if len(by_shape) > 1:
        cap["concurrency"] = min((s["concurrency"] or 0 for s in by_shape), default=0) or None
        cap["lowest_point_meets"] = all(s["lowest_point_meets"] for s in by_shape)
    versions = sorted({str(p.get("schema_version")) for p in points if p.get("schema_version")})
    return {
        "schema": REPORT_SCHEMA,
        "tool": {"name": "aiperf", "version": pins.AIPERF_VERSION, "export_schema_version": versions},
        "target": {
            "url": target.base_url,
            "model": target.model,
            "flavor": target.flavor,
            "api_key_set": target.api_key is not None,
        },
        "workload": {
            "kind": opts.workload,
            "mode": opts.mode,
            "shapes": [{"isl": i, "osl": o} for i, o in opts.shapes],
            "concurrency": opts.concurrency,
            "requests_per_point": opts.requests,
            "duration_s_per_point": opts.duration_s,
            "request_timeout_s": opts.request_timeout_s,
        },
        "tokenizer": {"folder": str(tokenizer.folder), "source": tokenizer.source},
        "points": points,
        "errors": sum(int(p.get("errors") or 0) for p in points),
        "engine_metrics": _overall_metrics(per_point_metrics),
        "capacity": cap,
        "expected": compare_expected(expected, points),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
    }


#: the sweep when none is given: short for the demo model on a small CPU box, real for anything else
DEMO_DEFAULTS = {"isl": [64], "osl": [16], "concurrency": [1, 2], "requests": 4}
REAL_SHAPES = {"isl": [1024, 8192], "osl": [1024, 1024]}


def batch_limit(engine_args: dict[str, Any]) -> int | None:
    """The most sequences the engine batches, from the plan's engine_args (None when unknown)."""
    for key in ("max_num_seqs", "max_running_requests", "parallel"):
        value = engine_args.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_sweep(model: str, engine_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults sized for the target: the demo's short sweep (under 2 minutes on 2 cores), else 1k/1k and
    8k/1k with concurrency doubling from 1 up to the plan's batch limit (64 when unknown).

    >>> default_sweep("demo")["concurrency"]
    [1, 2]
    >>> default_sweep("kimi-k2.5", {"max_num_seqs": 16})["concurrency"]
    [1, 2, 4, 8, 16]
    """
    if model == "demo":
        return {k: list(v) if isinstance(v, list) else v for k, v in DEMO_DEFAULTS.items()}
    limit = batch_limit(engine_args or {}) or 64
    conc, c = [], 1
    while c <= limit:
        conc.append(c)
        c *= 2
    if conc[-1] != limit:
        conc.append(limit)
    return {**{k: list(v) for k, v in REAL_SHAPES.items()}, "concurrency": conc, "requests": None}


__all__ = [
    "BenchOptions",
    "batch_limit",
    "build_report",
    "compare_expected",
    "default_sweep",
    "measured_decode_c1",
    "run_bench",
]
