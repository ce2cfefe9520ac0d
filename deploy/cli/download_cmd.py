"""`kimi-deploy download` and `kimi-deploy verify`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from deploy.errors import InputError, VerificationError
from deploy.planning.contract import Weights, load_plan
from deploy.weights.progress import Progress, pick_mode


def _weights(plan_path: str, candidate: str | None) -> Weights:
    plan = load_plan(plan_path)
    cand = plan.candidate(candidate) if candidate else plan.chosen_candidate
    return cand.weights


@click.command("download")
@click.option(
    "--plan", "plan_path", default="plan.json", show_default=True, help="plan.json from `kimi-deploy plan`."
)
@click.option("--candidate", help="Candidate id (default: the plan's chosen one).")
@click.option(
    "--dest", type=click.Path(file_okay=False), help="Weights folder (default: the candidate's local_dir)."
)
@click.option("--endpoint", help="Hub or mirror URL, path prefix allowed (default: $HF_ENDPOINT or the Hub).")
@click.option(
    "--offline",
    is_flag=True,
    help="No network: check the folder against weights.lock (also HF_HUB_OFFLINE=1).",
)
@click.option("--json", "json_out", is_flag=True, help="Print a JSON summary on stdout at the end.")
@click.option(
    "--retries", default=5, show_default=True, help="Attempts after the first, with exponential backoff."
)
@click.option(
    "--stall-seconds", default=30.0, show_default=True, help="No byte for this long: retry the request."
)
@click.option(
    "--progress-interval", default=10.0, show_default=True, help="Seconds between plain progress lines."
)
def download(
    plan_path: str,
    candidate: str | None,
    dest: str | None,
    endpoint: str | None,
    offline: bool,
    json_out: bool,
    retries: int,
    stall_seconds: float,
    progress_interval: float,
) -> None:
    """Download the plan's weights, write weights.lock, verify every file.

    The token comes from HF_TOKEN or `hf auth login`, never from the command line."""
    from deploy.weights.download import download_weights, exit_keeping_partials

    weights = _weights(plan_path, candidate)
    target = dest or weights.local_dir
    if not target:
        raise InputError(f"{plan_path}: the candidate has no weights.local_dir; pass --dest")
    # Totals are set once the repo is listed.
    progress = Progress(0, 0, stream=sys.stderr, mode=pick_mode(sys.stderr), interval=progress_interval)
    exit_keeping_partials()
    try:
        result = download_weights(
            weights,
            Path(target),
            endpoint=endpoint,
            offline=offline,
            retries=retries,
            stall_s=stall_seconds,
            progress=progress,
        )
    finally:
        progress.close()
    if json_out:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        how = "checked offline" if result.offline else f"{result.bytes_fetched / 1e9:.2f} GB fetched"
        click.echo(
            f"{result.repo}@{result.commit[:12]}: {result.files} files in {result.dest} ({how}), "
            f"verified: {result.what_was_checked()}"
        )


@click.command("verify")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option(
    "--plan",
    "plan_path",
    default="plan.json",
    show_default=True,
    help="Used for the folder when DIR is not given.",
)
@click.option("--json", "json_out", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--workers", type=int, help="Parallel hashing threads (default: CPU count, at most 8).")
def verify_cmd(directory: str | None, plan_path: str, json_out: bool, workers: int | None) -> None:
    """Re-hash every file of a weights folder against its weights.lock; corrupt files go to .quarantine/."""
    from deploy.weights.lockfile import verify

    if directory is None:
        if not Path(plan_path).is_file():
            raise InputError(f"no DIR given and {plan_path} not found")
        directory = _weights(plan_path, None).local_dir
    report = verify(directory, workers=workers)
    if json_out:
        click.echo(json.dumps(report.to_dict(), indent=2))
    if not report.ok:
        raise VerificationError(report.summary())
    if not json_out:
        click.echo(report.summary())


COMMANDS = [download, verify_cmd]
