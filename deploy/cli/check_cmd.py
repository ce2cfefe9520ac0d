"""`kimi-deploy check`: run the conformance suite against a deployment (from plan.json) or any URL,
optionally with a K2-Vendor-Verifier sample set and its trigger F1 against a reference endpoint."""

from __future__ import annotations

import json

import click

from deploy.checking import fleet as fleet_check
from deploy.checking import session
from deploy.checking import suite as check
from deploy.checking.result import print_table
from deploy.checking.target import choose_target
from deploy.cli import params
from deploy.errors import CheckFailedError
from deploy.fsutil import atomic_write_json
from deploy.planning.contract import load_plan
from deploy.secrets import redact, redact_data


@click.command("check")
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False),
    help="Check what this plan deploys (default: plan.json when no --url is given).",
)
@click.option(
    "--rendered",
    type=click.Path(file_okay=False),
    help="Check the server `kimi-deploy render` wrote into this folder: bind, port, served name, API "
    "key variable and RPC workers from its manifest.json (follows `render --port/--bind`), the rest "
    "from the plan.",
)
@click.option(
    "--url",
    help="Any OpenAI-compatible endpoint instead of a plan, as its provider publishes it: a URL with a "
    "path is the API base (https://hub.oxen.ai/api/ai, https://api.moonshot.ai/v1); a bare "
    "http://10.0.0.5:8000 gets /v1.",
)
@click.option("--model", "model_name", help="Served model name (with --url).")
@click.option(
    "--api-key-env", metavar="NAME", help="Environment variable holding the API key (never printed)."
)
@click.option(
    "--flavor",
    type=click.Choice(check.FLAVORS),
    help="Engine or provider (with --url; default: the provider the URL's host belongs to, else vllm). "
    "Engines are probed at /health; providers (nim, moonshot, oxen, openai) by an authenticated GET "
    "{base}/models. moonshot sends thinking={type: disabled}, the others chat_template_kwargs.",
)
@click.option(
    "--catalog-model",
    metavar="NAME",
    help="Catalog entry whose capabilities apply (with --url; "
    "default: the entry matching --model, else kimi-k2.5).",
)
@click.option(
    "--few-shot/--no-few-shot",
    default=None,
    help="Send a few-shot history with each request "
    "(base models; default from the catalog's modes.few_shot).",
)
@click.option(
    "--samples",
    type=int,
    default=check.DEFAULT_SAMPLES,
    show_default=True,
    help="Prompts each conformance probe (instant, thinking, tool_call, streaming, vision) is asked; the "
    "report shows a pass rate per check against its threshold.",
)
@click.option(
    "--metrics/--no-metrics", default=None, help="Require /metrics (with --url; default: vLLM only)."
)
@click.option(
    "--vision/--no-vision",
    default=None,
    help="Whether the URL serves images (with --url; default from the catalog).",
)
@click.option(
    "--max-model-len",
    type=params.Whole(1, params.MAX_TOKENS),
    help="Context the URL must report at least (with --url).",
)
@click.option(
    "--tool-calls",
    "tool_calls",
    type=click.Path(dir_okay=False),
    metavar="FILE.jsonl",
    help="Also run a K2-Vendor-Verifier sample set (one request body per line).",
)
@click.option(
    "--limit",
    type=params.Whole(1, 10**6),
    default=50,
    show_default=True,
    help="At most this many --tool-calls requests.",
)
@click.option(
    "--concurrency",
    type=params.Whole(1, params.MAX_CONCURRENCY),
    default=4,
    show_default=True,
    help="Requests in flight per endpoint (samples; the reference has its own).",
)
@click.option(
    "--threshold",
    type=float,
    default=0.95,
    show_default=True,
    help="Schema accuracy --tool-calls must reach.",
)
@click.option(
    "--reference-url",
    metavar="URL",
    help="Trigger F1 of the --tool-calls samples against this endpoint (e.g. https://api.moonshot.ai/v1).",
)
@click.option("--reference-model", metavar="ID", help="Model id at --reference-url (e.g. kimi-k2.5).")
@click.option(
    "--reference-api-key-env", metavar="NAME", help="Environment variable with --reference-url's key."
)
@click.option(
    "--reference-flavor",
    type=click.Choice(check.FLAVORS),
    help="Dialect of --reference-url (default: from its host, else openai).",
)
@click.option(
    "--reference-results",
    type=click.Path(dir_okay=False),
    metavar="FILE.jsonl",
    help="Recorded reference answers instead of --reference-url (K2-Vendor-Verifier results.jsonl).",
)
@click.option(
    "--f1-threshold",
    type=float,
    default=session.DEFAULT_F1_THRESHOLD,
    show_default=True,
    help="Trigger F1 the samples must reach against the reference (Moonshot's bar for K2-Thinking).",
)
@click.option(
    "--max-requests",
    type=params.Whole(0, 10**9),
    default=session.DEFAULT_MAX_REQUESTS,
    show_default=True,
    help="Chat requests this run may send in all (both endpoints, retries included); 0: no limit.",
)
@click.option(
    "--max-retry-wait",
    type=params.Finite(0, 3600),
    default=30.0,
    show_default=True,
    help="Longest Retry-After (seconds) a 429 is waited out; longer asks fail the request.",
)
@click.option(
    "--timeout", "timeout_s", type=float, default=120.0, show_default=True, help="Seconds per request."
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the JSON report to FILE.")
def check_command(
    plan_path: str | None,
    rendered: str | None,
    url: str | None,
    model_name: str | None,
    api_key_env: str | None,
    flavor: str | None,
    catalog_model: str | None,
    few_shot: bool | None,
    samples: int,
    metrics: bool | None,
    vision: bool | None,
    max_model_len: int | None,
    tool_calls: str | None,
    limit: int,
    concurrency: int,
    threshold: float,
    reference_url: str | None,
    reference_model: str | None,
    reference_api_key_env: str | None,
    reference_flavor: str | None,
    reference_results: str | None,
    f1_threshold: float,
    max_requests: int,
    max_retry_wait: float,
    timeout_s: float,
    as_json: bool,
    output: str | None,
) -> None:
    """Check liveness, models, instant and thinking chat, tool calls, streaming, vision and metrics; on a
    prefill/decode split, that each role replica's KV transfer counter grew (kv_transfer_<replica>).

    Exits 0 only when every required check passes (7 otherwise); skips come from declared capabilities.
    With --tool-calls and a reference, the trigger F1 must reach --f1-threshold as well.
    """
    ref_opts = session.ReferenceOptions(
        url=reference_url,
        model=reference_model,
        api_key_env=reference_api_key_env,
        flavor=reference_flavor,
        results=reference_results,
    )
    session.validate_options(
        tool_calls, ref_opts, f1_threshold, threshold, concurrency, max_requests, max_retry_wait
    )
    choice = choose_target(
        url,
        plan_path,
        rendered,
        url_needs=(("--model", model_name, "the served model name"),),
        url_only=(
            ("--model", model_name),
            ("--flavor", flavor),
            ("--catalog-model", catalog_model),
            ("--max-model-len", max_model_len),
            ("--metrics/--no-metrics", metrics),
            ("--vision/--no-vision", vision),
        ),
    )
    fleet = fleet_check.FleetCheck()
    if choice.url:
        target = check.target_from_url(
            choice.url,
            model_name,
            flavor=flavor,
            api_key_env=api_key_env,
            catalog_model=catalog_model,
            few_shot=few_shot,
            metrics=metrics,
            vision=vision,
            max_model_len=max_model_len,
            timeout_s=timeout_s,
        )
    else:
        plan = load_plan(choice.plan)
        if choice.rendered:
            target = check.target_from_rendered(plan, choice.rendered, api_key_env, timeout_s=timeout_s)
        else:
            target = check.target_from_plan(plan, api_key_env, timeout_s=timeout_s)
        if few_shot is not None:
            target.few_shot = few_shot
        fleet = fleet_check.FleetCheck.start(plan, target)
    target.samples = check.check_samples(samples)
    check.require_key(target)
    run = session.prepare_run(
        target, ref_opts, tool_calls, limit, concurrency, max_requests, max_retry_wait, timeout_s
    )
    report = session.execute(run, threshold, f1_threshold)
    report.results += fleet.results(requests_sent=run.target.meter.requests)
    secrets = run.secrets()
    data = redact_data(report.to_dict(), secrets)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        print_table(report, scrub=lambda text: redact(text, secrets))
    if output:
        atomic_write_json(output, data)
        click.echo(f"wrote {output}", err=True)
    if not report.ok:
        raise CheckFailedError(redact(failure_line(report), secrets))


def failure_line(report: check.CheckReport) -> str:
    """The error line: the checks that failed, the first one's reason, how many were not run."""
    failed = [r for r in report.failed if not r.reason.startswith("not run")]
    not_run = len(report.failed) - len(failed)
    names = ", ".join(r.name for r in failed) or report.failed[0].name
    first = failed[0] if failed else report.failed[0]
    tail = f"; {not_run} more not run" if not_run else ""
    return (
        f"{len(failed) or len(report.failed)} check(s) failed: {names} ({first.name}: {first.reason}){tail}"
    )


COMMANDS = [check_command]
