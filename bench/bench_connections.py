"""`bench` against the demo's llama-server, run after run: lost requests and what fresh connections cost
(`make bench-connections`). Not a timed test.

llama-server closes the connection about a millisecond after every streamed response, although the response
offered keep-alive (``Engine.closes_after_stream``). AIPerf's default connection pool
then sometimes sends the next request on that closing socket, and the request is lost
(ClientOSError / ServerDisconnectedError) without reaching the engine. `bench` therefore has AIPerf open
one connection per request to llama.cpp targets.

This runs the same `--concurrency 1,2` sweep ``--runs`` times in each of two ways, in ABBA order, against one
engine started from the demo deployment:

- ``pooled``: the baseline, AIPerf's own pool (300 s idle keep-alive, connections reused), as `bench` did
  before; produced by switching ``deploy.benchmark.run.fresh_connections`` off and restoring AIPerf's
  keep-alive in this process only;
- ``bench``: what `kimi-deploy bench` does now.

It prints the failed requests per run and the medians of TTFT p50 and output throughput of each way, with
their ratio (bench / pooled). Goal: 0 failed requests in every ``bench`` run.

    .venv/bin/python bench/bench_connections.py --runs 20     # prepares .demo/bench-connections/ first
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy.benchmark import aiperf, run
from deploy.benchmark.tokenizer import tokenizer_for_weights
from deploy.checking.target import target_from_rendered
from deploy.demo.run import prepare_deployment
from deploy.planning.contract import load_plan
from deploy.serving import launch

WAYS = ("pooled", "bench")
AIPERF_DEFAULT_KEEPALIVE_S = "300"


def one_sweep(way: str, plan_path: Path) -> dict[str, Any]:
    """One `bench --concurrency 1,2` sweep in-process; ``pooled`` switches the connection fix off for it."""
    plan = load_plan(plan_path)
    target = target_from_rendered(plan, plan_path.parent / "rendered", None)
    tokenizer = tokenizer_for_weights(plan.chosen_candidate.weights.local_dir)
    opts = run.BenchOptions(concurrency=[1, 2], isl=[64], osl=[16], requests=4)
    saved = (run.fresh_connections, aiperf.POOL_IDLE_S)
    if way == "pooled":
        # the baseline: AIPerf's own pooling, exactly what `bench` passed before the fix
        run.fresh_connections, aiperf.POOL_IDLE_S = (lambda _flavor: False), AIPERF_DEFAULT_KEEPALIVE_S
    try:
        report = run.run_bench(target, opts, tokenizer, progress=None)
    finally:
        run.fresh_connections, aiperf.POOL_IDLE_S = saved
    points = report["points"]
    return {
        "way": way,
        "errors": report["errors"],
        "error_kinds": sorted(
            {e["error"].split("(")[0] for p in points for e in p.get("error_summary") or []}
        ),
        "ttft_p50_ms": [(p.get("ttft_ms") or {}).get("p50") for p in points],
        "output_tok_s": [p.get("output_tokens_per_s") for p in points],
    }


def _joined(values: list[float | None], spec: str) -> str:
    return "/".join("-" if v is None else format(v, spec) for v in values)


def _median_of(runs: list[dict[str, Any]], key: str, index: int) -> float | None:
    values = [r[key][index] for r in runs if len(r[key]) > index and r[key][index] is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="sweeps of each way (default 10)")
    ap.add_argument("--workdir", type=Path, default=Path(".demo") / "bench-connections")
    ap.add_argument("--json", type=Path, help="also write every run and the summary here")
    args = ap.parse_args(argv)

    print(f"== preparing the demo deployment in {args.workdir} (stages up to render)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    workdir = prepare_deployment(args.workdir, port=free)
    plan_path = workdir / "plan.json"
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(workdir / "state")}
    os.environ["KIMI_DEPLOY_STATE_DIR"] = env["KIMI_DEPLOY_STATE_DIR"]
    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy",
            "up",
            "--plan",
            str(plan_path),
            "--rendered",
            str(workdir / "rendered"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if up.returncode != 0:
        sys.stderr.write(up.stderr)
        raise SystemExit(f"`kimi-deploy up` failed (exit {up.returncode}); see above")
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    try:
        print(
            f"\n== {args.runs} sweeps (concurrency 1,2; 4 requests each; ISL 64 / OSL 16) of each way, "
            "in ABBA order"
        )
        for i in range(args.runs):
            # ABBA order: neither way always meets the engine's cold prompt cache first
            for way in WAYS if i % 2 == 0 else WAYS[::-1]:
                r = one_sweep(way, plan_path)
                runs[way].append(r)
                kinds = f" ({', '.join(r['error_kinds'])})" if r["error_kinds"] else ""
                print(
                    f"  run {i + 1:2d} {way:6s}: {r['errors']} failed{kinds}; TTFT p50 c1/c2 "
                    f"{_joined(r['ttft_p50_ms'], ',.0f')} ms; "
                    f"output {_joined(r['output_tok_s'], '.1f')} tok/s"
                )
    finally:
        launch.down(state_dir=workdir / "state", grace_s=10)

    summary: dict[str, Any] = {}
    print(
        "\nway      runs  runs with errors  failed requests  TTFT p50 c1/c2 (median ms)  output tok/s c1/c2"
    )
    for way in WAYS:
        rs = runs[way]
        med = {k: [_median_of(rs, k, i) for i in (0, 1)] for k in ("ttft_p50_ms", "output_tok_s")}
        summary[way] = {
            "runs": len(rs),
            "runs_with_errors": sum(1 for r in rs if r["errors"]),
            "failed_requests": sum(r["errors"] for r in rs),
            **med,
        }
        s = summary[way]
        print(
            f"{way:7s} {s['runs']:5d} {s['runs_with_errors']:17d} {s['failed_requests']:16d}  "
            f"{_joined(s['ttft_p50_ms'], ',.0f'):>26s}  {_joined(s['output_tok_s'], '.1f')}"
        )
    ratios = {}
    for k in ("ttft_p50_ms", "output_tok_s"):
        pairs = zip(summary["bench"][k], summary["pooled"][k], strict=True)
        ratios[k] = [round(b / p, 3) if b and p else None for b, p in pairs]
    print(
        f"\nbench / pooled: TTFT p50 c1 {ratios['ttft_p50_ms'][0]}, c2 {ratios['ttft_p50_ms'][1]}; "
        f"output throughput c1 {ratios['output_tok_s'][0]}, c2 {ratios['output_tok_s'][1]}"
    )
    verdict = "met" if summary["bench"]["failed_requests"] == 0 else "NOT met"
    print(f"goal: no failed request in any `bench` run: {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "summary": summary, "ratios": ratios}, indent=2))
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    raise SystemExit(main())
