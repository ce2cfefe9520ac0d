"""Capacity at the demo's SLO of one replica and of two behind the router, measured in one run
(`make bench-fleet`). Not a timed test.

Two deployments of the demo model, prepared once under ``--workdir``:

- ``single``: the demo as `kimi-deploy demo` plans it, one llama-server (the baseline);
- ``fleet``: the same hardware profile planned with ``--replicas 2``: two llama-server replicas behind
  vllm-router, on the one node, sharing its cores.

The baseline must run with the same engine flags as each fleet replica, so the ratio is the fleet's and
not a flag's: the rendered argv of the single server and of every replica are compared (``--threads``,
``--parallel``) and the run stops with one line when they differ.

Then, ``--runs`` times in ABBA order (neither deployment always meets a busier or a quieter moment of the
shared machine first), each deployment is started (`kimi-deploy up`), swept with `kimi-deploy bench`
through its front door (the router for the fleet) at ``--concurrency`` with the SLO the deployment alerts
on (the plan's ``ttft_p95_slo_s`` as render resolved it into the manifest: the demo's 2 s), and stopped
(`kimi-deploy down`, router first). Capacity is what `bench` reports: the highest concurrency meeting the
SLO (deploy/benchmark/slo.py).

Then `kimi-deploy capacity`, fed only the single replica's sweeps (`calibrate import`, into this run's own
calibration store), predicts the two-replica output tok/s at twice that replica's capacity; the prediction is
printed beside what the fleet's sweeps measured at that concurrency (the capacity issue's +-25%).

It prints each sweep, the median capacity of each deployment and their ratio (fleet / single; goal >= 1.6x on
the 2-core box), and the ratio of output tokens/s at the highest concurrency that every sweep of both met,
and at the sweep's top concurrency (equal load, SLO aside). It exits 0 whether the goal is met or not.

    .venv/bin/python bench/bench_fleet.py --runs 2     # prepares .bench-fleet/ first (a few minutes once)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deploy.demo.run import DEMO_MODEL, free_port, prepare_deployment
from deploy.fsutil import read_json
from deploy.monitoring.spec import DEFAULT_TTFT_P95_SLO_S
from deploy.planning.contract import plan_from_dict
from deploy.serving import fleet_launch

WAYS = ("single", "fleet")
GOAL = 1.6
FLAGS = ("--threads", "--parallel")


def kd(args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
    """Run one `kimi-deploy` command as a user would; its output goes to ``log`` (else through); a non-zero
    exit stops the benchmark with that command's last lines."""
    print(f"$ kimi-deploy {shlex.join(args)}", flush=True)
    out = log.open("w") if log else None
    try:
        done = subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            check=False,
        )
    finally:
        if out:
            out.close()
    if done.returncode != 0:
        if log:
            sys.stderr.write("".join(log.read_text().splitlines(keepends=True)[-20:]))
        raise SystemExit(f"`kimi-deploy {args[0]}` failed (exit {done.returncode}); see above")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing listens on now."""
    ports: list[int] = []
    while len(ports) < count:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def readdress_fleet(plan_path: Path) -> dict[str, Any]:
    """Move the fleet plan's router, router metrics and replicas onto free loopback ports, validated again.

    The planner puts a demo fleet on fixed ports (the router on the catalog's 8001, replicas on 8002.., the
    router's metrics on 29000) and neither `plan --router-port` (the router only) nor `render --port` (one
    server only) moves the rest; another demo fleet on this shared machine would hold them. Only addresses
    change: the engine flags, the router's policy and settings stay the planner's.
    """
    data = read_json(plan_path)
    fleet = data["fleet"]
    router_port, metrics_port, *replica_ports = free_ports(2 + len(fleet["replicas"]))
    router = fleet["router"]
    router.update(port=router_port, url=f"http://{router['host']}:{router_port}", metrics_port=metrics_port)
    for replica, port in zip(fleet["replicas"], replica_ports, strict=True):
        replica.update(port=port, url=f"http://{replica['host']}:{port}")
    plan_from_dict(data, str(plan_path))
    plan_path.write_text(json.dumps(data, indent=2) + "\n")
    return fleet


def prepare(workdir: Path) -> dict[str, Path]:
    """The two deployments: ``single`` through the demo's own stages (on a free port), ``fleet`` planned on
    the same hardware profile and weights with ``--replicas 2`` and rendered beside it."""
    print(f"== preparing the one-replica demo deployment in {workdir / 'single'} (stages up to render)")
    single = prepare_deployment(workdir / "single", port=free_port())
    fleet = (workdir / "fleet").resolve()
    fleet.mkdir(parents=True, exist_ok=True)
    print(f"\n== planning two replicas behind the router on the same node and weights in {fleet}")
    kd(["engine", "install", "router"])
    hardware = single / "this-node.yaml"
    kd(
        ["plan", "--model", DEMO_MODEL, "--engine", "llama.cpp", "--hardware", str(hardware)]
        + ["--replicas", "2", "-o", str(fleet / "plan.json")],
        log=fleet / "plan.log",
    )
    spec = readdress_fleet(fleet / "plan.json")
    ports = ", ".join(str(r["port"]) for r in spec["replicas"])
    print(
        f"  on free loopback ports: router {spec['router']['port']} "
        f"(metrics {spec['router']['metrics_port']}), replicas {ports}; policy {spec['router']['policy']}"
    )
    kd(
        ["render", "--plan", str(fleet / "plan.json"), "--out", str(fleet / "rendered")],
        log=fleet / "render.log",
    )
    return {"single": single, "fleet": fleet}


def engine_flags(rendered: Path) -> dict[str, dict[str, str | None]]:
    """``--threads`` and ``--parallel`` of every engine server in a rendered release, by node name."""
    manifest = read_json(rendered / "manifest.json")
    out = {}
    for node in manifest["nodes"]:
        argv = [str(a) for a in node["argv"]]
        out[node["name"]] = {f: argv[argv.index(f) + 1] if f in argv else None for f in FLAGS}
    return out


def same_flags(dirs: dict[str, Path]) -> dict[str, dict[str, dict[str, str | None]]]:
    """Both deployments' engine flags; SystemExit (one line) unless every fleet replica runs with the
    baseline's threads and slots."""
    flags = {way: engine_flags(dirs[way] / "rendered") for way in WAYS}
    base = next(iter(flags["single"].values()))
    for way in WAYS:
        for node, f in flags[way].items():
            print(f"  {way:6s} {node:6s} " + "  ".join(f"{k} {v}" for k, v in f.items()))
    odd = [n for n, f in flags["fleet"].items() if f != base]
    if odd:
        raise SystemExit(
            f"the fleet's {', '.join(odd)} run(s) with other engine flags than the one-replica baseline "
            f"({flags['fleet'][odd[0]]} against {base}): the ratio would measure the flags, not the fleet"
        )
    return flags


def slo_s(dirs: dict[str, Path]) -> float:
    """The TTFT p95 SLO the deployments alert on (the plan's, as render resolved it); both must agree."""
    values = {
        float(read_json(dirs[w] / "rendered" / "manifest.json")["monitoring"].get("ttft_p95_slo_s") or 0)
        or DEFAULT_TTFT_P95_SLO_S
        for w in WAYS
    }
    if len(values) != 1:
        raise SystemExit(f"the two deployments have different TTFT SLOs ({sorted(values)})")
    return values.pop()


def one_sweep(way: str, d: Path, args: argparse.Namespace, slo: float, index: int) -> dict[str, Any]:
    """up, `bench` through the front door, down; the sweep's capacity and per-point numbers."""
    env = {"KIMI_DEPLOY_STATE_DIR": str(d / "state")}
    out = d / f"bench-{index}.json"
    common = ["--plan", str(d / "plan.json"), "--rendered", str(d / "rendered")]
    t0 = time.monotonic()
    kd(["up", *common], env, log=d / f"up-{index}.log")
    try:
        kd(
            ["bench", *common, "--concurrency", args.concurrency, "--requests", str(args.requests)]
            + ["--isl", str(args.isl), "--osl", str(args.osl), "--slo", f"ttft_p95={slo:g}s", "-o", str(out)],
            env,
            log=d / f"bench-{index}.log",
        )
    finally:
        fleet_launch.down(state_dir=d / "state", grace_s=10)
    report = read_json(out)
    cap = report["capacity"]
    points = sorted(report["points"], key=lambda p: p["concurrency"])
    return {
        "way": way,
        "capacity": cap["concurrency"],
        "meets": {str(v["concurrency"]): not v["misses"] for v in cap["points"]},
        "output_tok_s": {str(p["concurrency"]): p.get("output_tokens_per_s") for p in points},
        "ttft_p95_ms": {str(p["concurrency"]): (p.get("ttft_ms") or {}).get("p95") for p in points},
        "errors": report["errors"],
        "url": report["target"]["url"],
        "report": str(out),
        "seconds": round(time.monotonic() - t0, 1),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def summarise(runs: dict[str, list[dict[str, Any]]], levels: list[int]) -> dict[str, Any]:
    """Median capacity and output tokens/s per concurrency of each way, and the fleet / single ratios."""
    summary: dict[str, Any] = {}
    for way in WAYS:
        rs = runs[way]
        summary[way] = {
            "capacities": [r["capacity"] for r in rs],
            # a sweep where even concurrency 1 missed counts as capacity 0
            "capacity_median": statistics.median([r["capacity"] or 0 for r in rs]),
            "output_tok_s_median": {
                str(c): _median([r["output_tok_s"].get(str(c)) for r in rs]) for c in levels
            },
            "ttft_p95_ms_median": {
                str(c): _median([r["ttft_p95_ms"].get(str(c)) for r in rs]) for c in levels
            },
            "errors": sum(r["errors"] for r in rs),
        }
    every = [r for way in WAYS for r in runs[way]]
    both = [c for c in levels if all(r["meets"].get(str(c)) for r in every)]
    at_both = max(both) if both else None
    top = max(levels)

    def tok_ratio(c: int | None) -> float | None:
        if c is None:
            return None
        return _ratio(
            summary["fleet"]["output_tok_s_median"][str(c)], summary["single"]["output_tok_s_median"][str(c)]
        )

    ratios = {
        "capacity": _ratio(summary["fleet"]["capacity_median"], summary["single"]["capacity_median"]),
        "capacity_per_pair": [
            _ratio(f["capacity"] or 0, s["capacity"] or 0)
            for s, f in zip(runs["single"], runs["fleet"], strict=True)
        ],
        "both_meet_concurrency": at_both,
        "output_tok_s_at_both_meet": tok_ratio(at_both),
        "top_concurrency": top,
        "output_tok_s_at_top": tok_ratio(top),
    }
    return {"summary": summary, "ratios": ratios}


def print_table(result: dict[str, Any], levels: list[int]) -> None:
    """Capacity per sweep and its median; then medians of output tokens/s and TTFT p95 per concurrency."""
    summary = result["summary"]
    print(f"\n{'way':7s} {'capacity per sweep':>18s}  {'median':>6s}  {'failed':>6s}")
    for way in WAYS:
        s = summary[way]
        caps = ",".join("-" if c is None else str(c) for c in s["capacities"])
        print(f"{way:7s} {caps:>18s}  {s['capacity_median']:6g}  {s['errors']:6d}")
    print(f"\n{'median at concurrency':24s}" + "".join(f"{c:>8d}" for c in levels))
    for key, label, spec in (
        ("output_tok_s_median", "output tok/s", ".1f"),
        ("ttft_p95_ms_median", "TTFT p95 ms", ",.0f"),
    ):
        for way in WAYS:
            vals = summary[way][key]
            cells = "".join(
                f"{format(vals[str(c)], spec):>8s}" if vals[str(c)] is not None else f"{'-':>8s}"
                for c in levels
            )
            print(f"{way + ' ' + label:24s}{cells}")


def sweeps(dirs: dict[str, Path], args: argparse.Namespace, levels: list[int], slo: float) -> dict[str, Any]:
    """``args.runs`` sweeps of each deployment in ABBA order, each printed as it ends."""
    print(
        f"\n== {args.runs} sweep(s) of each (concurrency {','.join(map(str, levels))}; {args.requests} "
        f"requests per point; ISL {args.isl} / OSL {args.osl}; SLO ttft_p95 <= {slo:g} s), in ABBA order"
    )
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    for i in range(args.runs):
        for way in WAYS if i % 2 == 0 else WAYS[::-1]:
            r = one_sweep(way, dirs[way], args, slo, i + 1)
            runs[way].append(r)
            tok = "/".join(f"{v:.1f}" if v is not None else "-" for v in r["output_tok_s"].values())
            ttft = "/".join(f"{v:,.0f}" if v is not None else "-" for v in r["ttft_p95_ms"].values())
            print(
                f"  run {i + 1} {way:6s}: capacity {r['capacity']}; TTFT p95 {ttft} ms; output {tok} tok/s; "
                f"{r['errors']} failed ({r['seconds']:.0f} s)"
            )
    return runs


def predict_fleet(
    dirs: dict[str, Path], runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, slo: float
) -> dict[str, Any]:
    """`capacity` from the single replica's measured sweeps (imported into a calibration store of this run's
    own), at twice that replica's capacity, against what the fleet's sweeps measured at that concurrency."""
    store = {"KIMI_DEPLOY_CALIBRATION_DIR": str(args.workdir / "calibration")}
    single = max(runs["single"], key=lambda r: r["capacity"] or 0)
    if not single["capacity"]:
        return {"predicted": None, "why": "the single replica met the SLO at no concurrency"}
    for r in runs["single"]:
        kd(["calibrate", "import", r["report"], "--plan", str(dirs["single"] / "plan.json")], store)
    users = 2 * single["capacity"]
    out = args.workdir / "capacity.json"
    with out.open("w") as fh:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "deploy",
                "capacity",
                "--plan",
                str(dirs["fleet"] / "plan.json"),
                "--isl",
                str(args.isl),
                "--osl",
                str(args.osl),
                "--users",
                str(users),
                "--ttft-p95",
                f"{slo:g}s",
                "--json",
            ],
            env={**os.environ, **store},
            stdout=fh,
            check=False,
        )
    if done.returncode != 0:
        return {"predicted": None, "why": f"`kimi-deploy capacity` failed (exit {done.returncode})"}
    cap = read_json(out)
    predicted = cap["replicas"]["value"] * cap["per_replica"]["output_tok_s"]["value"]
    measured = _median([r["output_tok_s"].get(str(users)) for r in runs["fleet"]])
    return {
        "users": users,
        "source": cap["per_replica"]["source"],
        "replicas": cap["replicas"]["value"],
        "predicted_output_tok_s": round(predicted, 2),
        "measured_output_tok_s": round(measured, 2) if measured is not None else None,
        "predicted_over_measured": _ratio(predicted, measured),
    }


def print_prediction(p: dict[str, Any]) -> None:
    if p.get("predicted_output_tok_s") is None and "why" in p:
        print(f"\ncapacity prediction: none ({p['why']})")
        return
    ratio = p["predicted_over_measured"]
    verdict = "within +-25%" if ratio is not None and abs(ratio - 1) <= 0.25 else "outside +-25%"
    print(
        f"\ncapacity ({p['source']}) for {p['users']} users: {p['replicas']} replicas, predicted "
        f"{p['predicted_output_tok_s']} output tok/s; the fleet measured {p['measured_output_tok_s']} at "
        f"concurrency {p['users']}: predicted / measured {ratio} ({verdict})"
    )


def print_ratios(ratios: dict[str, Any], flags: dict[str, Any], slo: float, cores: int | None) -> bool:
    """The ratios with the thread counts beside them, and the verdict; True when the goal is met."""
    threads = next(iter(flags["single"].values()))
    fleet_threads = sum(int(f["--threads"] or 0) for f in flags["fleet"].values())
    print(
        f"\ncapacity at ttft_p95 <= {slo:g} s, fleet / single: {ratios['capacity']}x (per ABBA pair: "
        f"{', '.join(str(r) for r in ratios['capacity_per_pair'])}); threads: single --threads "
        f"{threads['--threads']} --parallel {threads['--parallel']}, each of the "
        f"{len(flags['fleet'])} replicas the same ({fleet_threads} threads in all) on {cores} cores"
    )
    if ratios["both_meet_concurrency"] is not None:
        print(
            f"output tok/s, fleet / single, at concurrency {ratios['both_meet_concurrency']} "
            f"(the highest every sweep of both met the SLO at): {ratios['output_tok_s_at_both_meet']}x"
        )
    else:
        print("output tok/s at a concurrency both met the SLO: none (some sweep missed it at every point)")
    print(
        f"output tok/s, fleet / single, at concurrency {ratios['top_concurrency']} (the sweep's top, equal "
        f"load, SLO aside): {ratios['output_tok_s_at_top']}x"
    )
    met = ratios["capacity"] is not None and ratios["capacity"] >= GOAL
    print(f"goal >= {GOAL}x: {'met' if met else 'missed'}")
    return met


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="sweeps of each deployment, ABBA order (default 2)")
    ap.add_argument("--concurrency", default="1,2,3,4", help="the sweep (default 1,2,3,4)")
    ap.add_argument("--requests", type=int, default=8, help="requests per point (default 8)")
    ap.add_argument("--isl", type=int, default=64, help="input tokens per request (default 64, the demo's)")
    ap.add_argument("--osl", type=int, default=16, help="output tokens per request (default 16, the demo's)")
    ap.add_argument("--workdir", type=Path, default=Path(".bench-fleet"))
    ap.add_argument("--json", type=Path, help="also write every sweep, the medians and the ratios here")
    args = ap.parse_args(argv)
    try:
        levels = sorted({int(c) for c in args.concurrency.split(",")})
    except ValueError:
        ap.error(f"--concurrency {args.concurrency!r}: expected integers like 1,2,3,4")
    if min([args.runs, args.requests, args.isl, args.osl, *levels]) < 1:
        ap.error("--runs, --requests, --isl, --osl and every concurrency must be at least 1")

    dirs = prepare(args.workdir)
    print("\n== engine flags (rendered argv): the baseline must run as each fleet replica does")
    flags = same_flags(dirs)
    slo = slo_s(dirs)
    runs = sweeps(dirs, args, levels, slo)
    result = summarise(runs, levels)
    print_table(result, levels)
    cores = os.cpu_count()
    met = print_ratios(result["ratios"], flags, slo, cores)
    prediction = predict_fleet(dirs, runs, args, slo)
    print_prediction(prediction)
    result["capacity_prediction"] = prediction
    if args.json:
        workload = {"concurrency": levels, "requests": args.requests, "isl": args.isl, "osl": args.osl}
        extra = {"engine_flags": flags, "cores": cores, "slo_ttft_p95_s": slo, "workload": workload}
        args.json.write_text(
            json.dumps({**extra, "runs": runs, **result, "goal": GOAL, "goal_met": met}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
