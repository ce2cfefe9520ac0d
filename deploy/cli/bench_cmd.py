"""`kimi-deploy bench`: load-test what a plan deploys (or any URL) through AIPerf."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploy.cli import params
from deploy.errors import InputError, SloMissedError
from deploy.fsutil import atomic_write_json


def _ints(text: str | None, name: str) -> list[int] | None:
    high = params.MAX_CONCURRENCY if name == "--concurrency" else params.MAX_TOKENS
    try:
        return params.whole_list(text, 1, high)
    except ValueError:
        raise InputError(
            f"{name} {text!r}: expected comma-separated integers from 1 to {high}, e.g. 1,2,4"
        ) from None


@click.command("bench")
@click.option(
    "--plan", "plan_path", type=click.Path(dir_okay=False), help="Benchmark what this plan deploys."
)
@click.option(
    "--rendered",
    type=click.Path(file_okay=False),
    help="The server `kimi-deploy render` wrote into this folder (bind, port, name, key variable).",
)
@click.option("--url", help="Any OpenAI-compatible endpoint instead of a plan, e.g. http://10.0.0.5:8000.")
@click.option("--model", "model_name", help="Served model name (with --url).")
@click.option(
    "--api-key-env", metavar="NAME", help="Environment variable holding the API key (never printed)."
)
@click.option(
    "--flavor",
    type=click.Choice(["vllm", "sglang", "llama.cpp", "ktransformers", "moonshot"]),
    help="Engine dialect (with --url; default vllm).",
)
@click.option(
    "--tokenizer",
    "tokenizer_path",
    type=click.Path(exists=True),
    help="The model's tokenizer: a folder with tokenizer files or a .gguf (default: the plan's weights).",
)
@click.option("--isl", help="Input tokens per request; a list (1024,8192) makes one sweep per shape.")
@click.option("--osl", help="Output tokens per request (one value, or one per --isl).")
@click.option(
    "--concurrency",
    "concurrency_text",
    help="Concurrency points, e.g. 1,2,4 (default: sized for the target).",
)
@click.option(
    "--requests", type=params.Whole(1, 10**7), help="Requests per point (default: sized for the target)."
)
@click.option(
    "--duration",
    "duration_s",
    type=params.Finite(0, 86400, low_open=True),
    help="Seconds per point instead of a request count.",
)
@click.option("--mode", type=click.Choice(["instant", "thinking"]), default="instant", show_default=True)
@click.option(
    "--workload",
    type=click.Choice(["chat", "tool-calls"]),
    default="chat",
    show_default=True,
    help="chat: synthetic prompts of --isl tokens; tool-calls: check's tool request and tool definitions.",
)
@click.option(
    "--slo", help="Limits for capacity, e.g. ttft_p95=2s,itl_p95=80ms (ttft|itl|e2e, p50|p90|p95|p99)."
)
@click.option("--gate", is_flag=True, help="Exit 8 when even the lowest concurrency point misses --slo.")
@click.option(
    "--timeout",
    "timeout_s",
    type=params.REQUEST_SECONDS,
    default=120.0,
    show_default=True,
    help="Seconds per request.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON report to FILE.")
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), help="Write latency vs throughput to FILE.png."
)
@click.option(
    "--artifacts", type=click.Path(file_okay=False), help="Keep AIPerf's own artifacts (per point) in DIR."
)
@click.option(
    "--compare-plan",
    type=click.Path(dir_okay=False),
    metavar="OTHER_PLAN",
    help="Then run the same workload against this plan's front door (e.g. aggregated replicas beside a "
    "prefill/decode split) and print each one's output tok/s per GPU and their ratio.",
)
def bench_command(
    plan_path: str | None,
    rendered: str | None,
    url: str | None,
    model_name: str | None,
    api_key_env: str | None,
    flavor: str | None,
    tokenizer_path: str | None,
    isl: str | None,
    osl: str | None,
    concurrency_text: str | None,
    requests: int | None,
    duration_s: float | None,
    mode: str,
    workload: str,
    slo: str | None,
    gate: bool,
    timeout_s: float,
    as_json: bool,
    output: str | None,
    plot_path: str | None,
    artifacts: str | None,
    compare_plan: str | None,
) -> None:
    """Sweep concurrency with AIPerf: TTFT/ITL/E2E percentiles, throughput, errors, engine metrics from
    /metrics, capacity at --slo, and measured against the plan's expected decode speed; with
    --compare-plan, the same sweep against a second plan and the output tok/s per GPU of both.

    Exits 8 under --gate when even the lowest point misses the SLO (the report is written first).
    """
    from deploy.benchmark import compare
    from deploy.benchmark import run as bench
    from deploy.benchmark.slo import parse_slo
    from deploy.benchmark.tokenizer import resolve_tokenizer, tokenizer_for_weights
    from deploy.checking import target as targets
    from deploy.planning.contract import load_plan

    if gate and not slo:
        raise InputError("--gate needs --slo (what the lowest point must meet)")
    if compare_plan and url:
        raise InputError("--compare-plan compares two plans' front doors: give --plan, not --url")
    choice = targets.choose_target(
        url,
        plan_path,
        rendered,
        url_needs=(
            ("--model", model_name, "the served model name"),
            ("--tokenizer DIR|FILE.gguf", tokenizer_path, "the served model's tokenizer, read offline"),
        ),
        url_only=(("--model", model_name), ("--flavor", flavor)),
    )
    if plot_path and not plot_path.lower().endswith(".png"):
        raise InputError(f"--plot {plot_path!r}: expected a .png file name")
    limits = parse_slo(slo)
    expected = None
    if choice.url:
        target = targets.target_from_url(
            choice.url, str(model_name), flavor=flavor or "vllm", api_key_env=api_key_env, timeout_s=timeout_s
        )
        engine_args: dict = {}
        other = None
    else:
        plan = load_plan(choice.plan)
        other = compare.comparable(plan, choice.plan, compare_plan)
        if choice.rendered:
            target = targets.target_from_rendered(plan, choice.rendered, api_key_env, timeout_s=timeout_s)
        else:
            target = targets.target_from_plan(plan, api_key_env, timeout_s=timeout_s)
        cand = plan.chosen_candidate
        engine_args = cand.engine_args
        expected = getattr(cand, "performance", None) or None
        if not tokenizer_path:
            tokenizer = tokenizer_for_weights(cand.weights.local_dir)
    if tokenizer_path:
        tokenizer = resolve_tokenizer(tokenizer_path)
    sweep = bench.default_sweep(target.model, engine_args)
    opts = bench.BenchOptions(
        concurrency=_ints(concurrency_text, "--concurrency") or sweep["concurrency"],
        isl=_ints(isl, "--isl") or sweep["isl"],
        osl=_ints(osl, "--osl") or sweep["osl"],
        requests=requests if requests is not None or duration_s is not None else sweep["requests"],
        duration_s=duration_s,
        mode=mode,
        workload=workload,
        slo=limits,
        request_timeout_s=timeout_s,
        keep_artifacts=Path(artifacts) if artifacts else None,
        replicas=[] if choice.url else bench.replica_endpoints(plan),
    )
    say = lambda m: click.echo(m, err=True)  # noqa: E731 - progress lines go to stderr
    report = bench.run_bench(target, opts, tokenizer, expected, progress=say)
    if other is not None:
        report["comparison"] = compare.compare(plan, other, report, opts, tokenizer, api_key_env, say)
    _save(report, output, plot_path, None if choice.url else choice.plan)
    _show(report, as_json, gate)


def _show(report: dict, as_json: bool, gate: bool) -> None:
    """Print the report (and the comparison with --compare-plan); exit 8 under --gate when the lowest
    point misses the SLO."""
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        from deploy.benchmark.compare import render_comparison
        from deploy.benchmark.report import render_report

        click.echo(render_report(report))
        if report.get("comparison"):
            click.echo(render_comparison(report["comparison"]))
    if gate and not report["capacity"].get("lowest_point_meets"):
        first = (report["capacity"].get("points") or [{}])[0]
        why = "; ".join(first.get("misses") or ["no point ran"])
        raise SloMissedError(f"the lowest concurrency point misses the SLO ({why})")


def _save(report: dict, output: str | None, plot_path: str | None, plan_path: str | None) -> None:
    if output:
        atomic_write_json(output, report)
        click.echo(f"wrote {output}", err=True)
    if plan_path:
        _record_for_capacity(plan_path, report)
    if plot_path:
        from deploy.benchmark.plot import write_plot

        write_plot(report, plot_path)
        click.echo(f"wrote {plot_path}", err=True)


def _record_for_capacity(plan_path: str, report: dict) -> None:
    """Keep one replica's points in the bench store for `capacity` (a fleet's router mixes replicas:
    not kept)."""
    from deploy.calibration.bench_store import add_bench_records, records_from_report
    from deploy.errors import CalibrationError
    from deploy.planning.capacity import replica_of
    from deploy.planning.contract import load_plan

    plan = load_plan(plan_path)
    cand = plan.chosen_candidate
    if len(getattr(plan.fleet, "replicas", []) or []) > 1:
        click.echo("not recorded for capacity: the plan runs several replicas behind a router", err=True)
        return
    try:
        records = records_from_report(
            report, {**replica_of(plan, cand).key(), "candidate": cand.id}, f"bench --plan {plan_path}"
        )
    except CalibrationError as exc:
        click.echo(f"not recorded for capacity: {exc}", err=True)
        return
    click.echo(f"recorded for capacity -> {add_bench_records(records)}", err=True)


COMMANDS = [bench_command]
