"""`bench --plan A --compare-plan B`: the same AIPerf workload against two plans' front doors, one after the
other, and the output tok/s per GPU of each and their ratio (A / B).

    >>> point = {"isl": 64, "osl": 16, "concurrency": 4}
    >>> split, agg = {**point, "output_tokens_per_s": 640.0}, {**point, "output_tokens_per_s": 320.0}
    >>> rows = per_gpu_rows({"points": [split]}, 32, {"points": [agg]}, 32)
    >>> rows[0]["per_gpu"], rows[0]["ratio"]
    ([20.0, 10.0], 2.0)

Made for a prefill/decode split against aggregated replicas of the same model (plan --fleet-mode
disaggregated / aggregated), deployed side by side: the question the planner's ranking answers with a model
(``fleet.options``), answered by measurement. Per GPU, because the two fleets need not hold as many GPUs: a
fleet's GPUs are each replica's nodes times its candidate's GPUs per node (a split's roles may run different
candidates). The runs are sequential, so neither fleet's load slows the other's; the shapes, concurrencies,
request counts, mode and workload are the same for both. Each run is a full `bench` report (the second is
kept whole under ``comparison.other_report``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from deploy.benchmark.run import BenchOptions, Progress, replica_endpoints, run_bench
from deploy.benchmark.tokenizer import LocalTokenizer
from deploy.checking.target import target_from_plan
from deploy.errors import InputError
from deploy.planning.contract import Plan, load_plan
from deploy.serving.replicas import role_candidate


def fleet_gpus(plan: Plan) -> int:
    """The GPUs a plan's fleet runs on: each replica's nodes times its candidate's GPUs per node."""
    chosen = plan.chosen_candidate
    return sum(
        len(r.nodes) * role_candidate(plan, chosen, r.to_dict()).gpus_per_node for r in plan.fleet.replicas
    )


def _key(point: dict[str, Any]) -> tuple[Any, Any, Any]:
    return point.get("isl"), point.get("osl"), point["concurrency"]


def per_gpu_rows(a: dict[str, Any], gpus_a: int, b: dict[str, Any], gpus_b: int) -> list[dict[str, Any]]:
    """For each (ISL, OSL, concurrency) both reports measured: each output tok/s, per GPU, and A / B (None
    where a point measured nothing)."""
    other = {_key(p): p for p in b.get("points") or []}
    rows = []
    for p in a.get("points") or []:
        q = other.get(_key(p))
        if q is None:
            continue
        tok = [p.get("output_tokens_per_s"), q.get("output_tokens_per_s")]
        per_gpu = [t / g if t is not None and g else None for t, g in zip(tok, (gpus_a, gpus_b), strict=True)]
        ratio = per_gpu[0] / per_gpu[1] if per_gpu[0] is not None and per_gpu[1] else None
        rows.append(
            {
                "isl": p.get("isl"),
                "osl": p.get("osl"),
                "concurrency": p["concurrency"],
                "output_tok_s": tok,
                "per_gpu": per_gpu,
                "ratio": ratio,
            }
        )
    return rows


def _label(plan: Plan, path: str) -> dict[str, Any]:
    fleet = plan.fleet
    return {"plan": path, "mode": fleet.mode, "replicas": fleet.size, "gpus": fleet_gpus(plan)}


@dataclass(frozen=True)
class Other:
    """The plan ``--compare-plan`` names (``path``), read and found comparable to the one at ``this_path``."""

    plan: Plan
    path: str
    this_path: str


def comparable(plan: Plan, this_path: str, other_path: str | None) -> Other | None:
    """The other plan (None without ``--compare-plan``), read now: InputError (before anything runs) unless
    both plans serve the same model on GPUs."""
    if other_path is None:
        return None
    other = load_plan(other_path)
    a, b = (str(p.model.get("served_model_name") or p.model.get("name")) for p in (plan, other))
    if a != b:
        raise InputError(
            f"--compare-plan {other_path}: it serves {b!r}, this plan {a!r} (the same model only)"
        )
    for p, where in ((plan, "this plan"), (other, other_path)):
        if not fleet_gpus(p):
            raise InputError(f"--compare-plan: {where} runs on no GPU (output tok/s per GPU needs GPUs)")
    return Other(other, other_path, this_path)


def compare(
    plan: Plan,
    other: Other,
    report: dict[str, Any],
    opts: BenchOptions,
    tokenizer: LocalTokenizer,
    api_key_env: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run ``opts`` against ``other``'s front door (its router, or its one replica, from its plan) as
    ``report`` ran against ``plan``'s; the per-GPU rows and both fleets, with the other run's report."""
    target = target_from_plan(other.plan, api_key_env, timeout_s=opts.request_timeout_s)
    other_opts = dataclasses.replace(opts, replicas=replica_endpoints(other.plan))
    other_report = run_bench(target, other_opts, tokenizer, None, progress)
    this, that = _label(plan, other.this_path), _label(other.plan, other.path)
    return {
        "this": {**this, "url": (report.get("target") or {}).get("url")},
        "other": {**that, "url": target.base_url},
        "rows": per_gpu_rows(report, this["gpus"], other_report, that["gpus"]),
        "other_report": other_report,
    }


def render_comparison(cmp: dict[str, Any]) -> str:
    """The comparison as lines for the terminal."""

    def n(x: float | None, digits: int = 1) -> str:
        return "-" if x is None else f"{x:,.{digits}f}"

    lines = ["", "Compared on the same workload (one run each, one after the other):"]
    for side in ("this", "other"):
        s = cmp[side]
        lines.append(
            f"  {side:<5}  {s['plan']}: {s['mode']}, {s['replicas']} replica(s), {s['gpus']} GPUs, {s['url']}"
        )
    header = ("ISL/OSL", "CONC", "OUT tok/s (this)", "OUT tok/s (other)", "per GPU (this)", "per GPU (other)")
    rows = [(*header, "this/other")]
    for r in cmp["rows"]:
        rows.append(
            (
                f"{r['isl']}/{r['osl']}",
                str(r["concurrency"]),
                n(r["output_tok_s"][0]),
                n(r["output_tok_s"][1]),
                n(r["per_gpu"][0], 2),
                n(r["per_gpu"][1], 2),
                n(r["ratio"], 2),
            )
        )
    if not cmp["rows"]:
        lines.append("  no point measured in both runs")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


__all__ = ["Other", "comparable", "compare", "fleet_gpus", "per_gpu_rows", "render_comparison"]
