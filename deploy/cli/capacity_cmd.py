"""`kimi-deploy capacity`: how many replicas, nodes and GPUs for U users (or R requests/s) at an SLO.

kimi-deploy capacity --gpus 8xH200 --workload chat --users 1000 --tokens-per-user 20 --gpu-hour-price 3.5
kimi-deploy capacity --plan plan.json --isl 2048 --osl 256 --rate 5 --itl-p95 50ms --json
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from deploy import constants
from deploy.errors import InputError
from deploy.planning.capacity import WORKLOADS, Capacity, Figure, Load, Slo, Workload


def number(value: str | None, option: str, *, positive: bool = True) -> float | None:
    """``value`` as a finite number (positive unless told), else InputError naming ``option``.

    >>> number("3.5", "--gpu-hour-price")
    3.5
    """
    if value is None:
        return None
    try:
        out = float(value)
    except ValueError:
        raise InputError(f"{option} {value!r}: expected a number") from None
    if out != out or out in (float("inf"), float("-inf")) or (positive and out <= 0) or out < 0:
        raise InputError(
            f"{option} {value!r}: expected a {'positive' if positive else 'non-negative'} number"
        )
    return out


def seconds(value: str | None, option: str) -> float | None:
    """``80ms``, ``2s`` or ``2`` (seconds) into seconds; InputError for anything else or a non-positive one.

    >>> seconds("80ms", "--itl-p95"), seconds("2", "--ttft-p95")
    (0.08, 2.0)
    """
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", value)
    if m is None or float(m.group(1)) <= 0:
        raise InputError(f"{option} {value!r}: expected a positive duration such as 80ms or 2s")
    return float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)


def _workload(
    preset: str | None,
    isl: str | None,
    osl: str | None,
    trace: str | None,
    hit: str | None,
    spec: str | None,
    acc: str | None,
) -> Workload:
    base = WORKLOADS[preset or "chat"]
    name, i, o = base.name, base.isl, base.osl
    if trace:
        from deploy.planning.trace import trace_shape

        i, o = trace_shape(trace)
        name = f"trace {trace}"
    if isl or osl:
        if not (isl and osl):
            raise InputError("--isl and --osl go together (or use --workload chat|agentic|long)")
        i, o, name = int(number(isl, "--isl") or 0), int(number(osl, "--osl") or 0), "custom"
    prefix_hit = number(hit, "--prefix-hit", positive=False) or 0.0
    if prefix_hit >= 1:
        raise InputError(f"--prefix-hit {hit!r}: expected a fraction below 1")
    acceptance = number(acc, "--acceptance") or 1.0
    if spec and acceptance <= 1:
        raise InputError("--speculative needs --acceptance A (mean tokens accepted per step, above 1)")
    return Workload(name, i, o, prefix_hit, spec, acceptance if spec else 1.0)


def _fig(f: Figure | None, fmt: str = "{:,.1f}") -> str:
    if f is None:
        return "-"
    if f.low == f.high == f.value:
        return fmt.format(f.value)
    return f"{fmt.format(f.value)}  ({fmt.format(f.low)} .. {fmt.format(f.high)})"


def render_table(cap: Capacity, candidate: str) -> str:
    """The table for people: per replica with its source, then the fleet."""
    per, w, load = cap.per_replica, cap.workload, cap.load
    asked = f"{load.users} users" if load.users is not None else f"{load.rate:g} requests/s"
    lines = [
        f"capacity of {candidate} for {asked}, {w.name} {w.isl}/{w.osl} tokens (prefix hit {w.prefix_hit:g})",
        f"per replica: source {per.source.upper()} - {per.basis}",
        f"  requests/s              {_fig(per.requests_s, '{:,.2f}')}",
        f"  output tok/s            {_fig(per.output_tok_s)}",
        f"  output tok/s per GPU    {_fig(per.output_tok_s_per_gpu)}",
        f"  concurrency             {_fig(per.concurrency, '{:,.0f}')}",
        "fleet:",
        f"  replicas                {_fig(cap.replicas, '{:,.0f}')}",
        f"  nodes                   {_fig(cap.nodes, '{:,.0f}')}",
        f"  GPUs                    {_fig(cap.gpus, '{:,.0f}')}",
        f"  GPU-hours per month     {_fig(cap.gpu_hours_month, '{:,.0f}')}",
        f"  $ per million output tokens  {_fig(cap.cost_per_million_output_tokens, '{:,.3f}')}",
    ]
    return "\n".join(lines + [f"note: {n}" for n in cap.notes])


@click.command("capacity")
@click.option(
    "--plan", "plan_path", type=click.Path(dir_okay=False), help="Size replicas of this plan's candidate."
)
@click.option("--hardware", metavar="FILE", help="Or plan on this hardware profile first (as `plan`).")
@click.option(
    "--gpus", "gpu_spec", metavar="SPEC", help="Or on hardware you do not have: 8xH200, 2x8xH100, ..."
)
@click.option(
    "--model",
    default=constants.DEFAULT_MODEL,
    show_default=True,
    help="Catalog model (with --gpus/--hardware).",
)
@click.option("--engine", help="Only this engine (with --gpus/--hardware).")
@click.option("--variant", help="Only this weights variant (with --gpus/--hardware).")
@click.option("--candidate", metavar="ID", help="This candidate instead of the chosen one.")
@click.option(
    "--workload",
    type=click.Choice(sorted(WORKLOADS)),
    help="chat 1024/1024, agentic 65536/400, long 131072/1024.",
)
@click.option("--isl", help="Input tokens per request (with --osl).")
@click.option("--osl", help="Output tokens per request (with --isl).")
@click.option(
    "--trace", type=click.Path(dir_okay=False), help="An AIPerf mooncake_trace JSONL: its mean lengths."
)
@click.option("--prefix-hit", metavar="F", help="Prefix-cache hit rate of the prompts, 0 to <1 (default 0).")
@click.option("--speculative", metavar="METHOD", help="Speculative decoding the replicas run (e.g. eagle3).")
@click.option("--acceptance", metavar="A", help="Its mean accepted tokens per step (with --speculative).")
@click.option("--users", metavar="U", help="Concurrent users.")
@click.option("--rate", metavar="R", help="Or requests per second.")
@click.option("--ttft-p95", metavar="T", help="TTFT p95 limit, e.g. 2s.")
@click.option("--itl-p95", metavar="T", help="Inter-token latency p95 limit, e.g. 50ms.")
@click.option("--tokens-per-user", metavar="N", help="Or the output tok/s each user must get.")
@click.option(
    "--gpu-hour-price", metavar="USD", help="Price of one GPU-hour, for the cost per million tokens."
)
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def capacity_command(**opts: Any) -> None:
    """Per-replica capacity at the SLO (measured, else published, else modelled, and which), then replicas,
    nodes, GPUs, GPU-hours per month and cost per million output tokens, each with its band.

    Exit 2 (one line) on bad input: no load or zero users, an SLO below what one token takes, a bad price."""
    from deploy.planning.capacity import capacity

    load = _load(opts["users"], opts["rate"])
    slo = Slo(
        seconds(opts["ttft_p95"], "--ttft-p95"),
        seconds(opts["itl_p95"], "--itl-p95"),
        number(opts["tokens_per_user"], "--tokens-per-user"),
    )
    price = number(opts["gpu_hour_price"], "--gpu-hour-price", positive=False)
    w = _workload(
        opts["workload"],
        opts["isl"],
        opts["osl"],
        opts["trace"],
        opts["prefix_hit"],
        opts["speculative"],
        opts["acceptance"],
    )
    replica = _replica(opts)
    cap = capacity(replica, w, slo, load, gpu_hour_price=price)
    if opts["as_json"]:
        replica_doc = {**replica.key(), "candidate": replica.candidate}
        click.echo(json.dumps({"replica": replica_doc, **cap.to_dict()}, indent=2))
    else:
        click.echo(
            render_table(cap, f"{replica.candidate} ({replica.gpus or 'CPU'} x {replica.gpu} per replica)")
        )


def _load(users: str | None, rate: str | None) -> Load:
    if (users is None) == (rate is None):
        raise InputError("give the load: --users U (concurrent users) or --rate R (requests/s), one of them")
    if users is not None:
        u = number(users, "--users")
        if u is None or u != int(u):
            raise InputError(f"--users {users!r}: expected a positive whole number")
        return Load(users=int(u))
    return Load(rate=number(rate, "--rate"))


def _replica(opts: dict[str, Any]) -> Any:
    from deploy.planning.capacity import replica_of

    if opts["plan_path"]:
        if opts["hardware"] or opts["gpu_spec"]:
            raise InputError("give either --plan or --gpus/--hardware, not both")
        from deploy.planning.contract import load_plan

        p = load_plan(opts["plan_path"])
    else:
        from deploy.planning.inputs import hardware_profile
        from deploy.planning.planner import plan
        from deploy.planning.request import PlanRequest

        if not (opts["hardware"] or opts["gpu_spec"]):
            raise InputError("give --plan PLAN, or --gpus SPEC / --hardware FILE to plan on")
        profile = hardware_profile(opts["hardware"], opts["gpu_spec"])
        p = plan(profile, PlanRequest(model=opts["model"], engine=opts["engine"], variant=opts["variant"]))
        if p.chosen is None:
            raise InputError(f"nothing can run {opts['model']} on {profile.name} (see `kimi-deploy plan`)")
    cand = p.candidate(opts["candidate"]) if opts["candidate"] else p.chosen_candidate
    return replica_of(p, cand)


def replan_for_users(
    profile: Any,
    request: Any,
    records: list,
    result: Any,
    users: str | None,
    itl_p95: str | None,
    tokens_per_user: str | None,
    workload: str | None,
) -> Any:
    """`plan --users U`: the plan again with ``--replicas`` from the chosen candidate's capacity at the SLO
    (capped at what the profile holds, with a line saying so)."""
    from deploy.planning.capacity import plan_for_load

    if users is None:
        raise InputError("--itl-p95, --tokens-per-user and --workload size replicas for --users U; give it")
    if request.replicas is not None:
        raise InputError("give either --replicas N or --users U (which sets the replicas), not both")
    if result.chosen is None:
        return result
    slo = Slo(
        request.ttft_p95_slo_s, seconds(itl_p95, "--itl-p95"), number(tokens_per_user, "--tokens-per-user")
    )
    again, cap = plan_for_load(
        profile, request, records, result, WORKLOADS[workload or "chat"], slo, _load(users, None)
    )
    wanted = int(cap.replicas.value)
    held = len(again.fleet.replicas) if again.fleet else 1
    per = cap.per_replica
    click.echo(
        f"capacity: {wanted} replica(s) for {users} users ({per.source}: "
        f"{per.concurrency.value:,.0f} per replica, band {cap.replicas.low:,.0f}..{cap.replicas.high:,.0f})"
        + (f"; the profile holds {held}: plan more nodes" if held < wanted else ""),
        err=True,
    )
    return again


COMMANDS = [capacity_command]
