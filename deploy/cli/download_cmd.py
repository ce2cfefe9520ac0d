"""`kimi-deploy download` and `kimi-deploy verify`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from deploy.errors import InputError, VerificationError
from deploy.planning.contract import Weights, load_plan
from deploy.weights.progress import Progress, pick_mode


def _weights(plan_path: str, candidate: str | None) -> tuple[Weights, Weights | None]:
    """The candidate's weights and its speculative-decoding draft model (None without one)."""
    plan = load_plan(plan_path)
    cand = plan.candidate(candidate) if candidate else plan.chosen_candidate
    return cand.weights, cand.draft_weights


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
    """Download the plan's weights, write weights.lock, verify every file; then the same for the
    speculative-decoding draft model when the plan uses one (`plan --speculative`), into its own folder.

    The token comes from HF_TOKEN or `hf auth login`, never from the command line."""
    from deploy.weights.download import DownloadResult, download_weights, exit_keeping_partials

    weights, draft = _weights(plan_path, candidate)
    target = dest or weights.local_dir
    if not target:
        raise InputError(f"{plan_path}: the candidate has no weights.local_dir; pass --dest")
    if draft is not None and not draft.local_dir:
        raise InputError(f"{plan_path}: the speculative draft model has no draft_model_path")
    exit_keeping_partials()

    def fetch(what: Weights, folder: str) -> DownloadResult:
        # totals are set once the repo is listed
        progress = Progress(0, 0, stream=sys.stderr, mode=pick_mode(sys.stderr), interval=progress_interval)
        try:
            return download_weights(
                what,
                Path(folder),
                endpoint=endpoint,
                offline=offline,
                retries=retries,
                stall_s=stall_seconds,
                progress=progress,
            )
        finally:
            progress.close()

    result = fetch(weights, target)
    draft_result = fetch(draft, draft.local_dir) if draft is not None else None
    if json_out:
        data = result.to_dict()
        if draft_result is not None:
            data["draft"] = draft_result.to_dict()
        click.echo(json.dumps(data, indent=2))
        return
    for r in (result, draft_result):
        if r is None:
            continue
        how = "checked offline" if r.offline else f"{r.bytes_fetched / 1e9:.2f} GB fetched"
        click.echo(
            f"{r.repo}@{r.commit[:12]}: {r.files} files in {r.dest} ({how}), verified: {r.what_was_checked()}"
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
    """Re-hash every file of a weights folder against its weights.lock; corrupt files go to .quarantine/.

    Without DIR: the plan's weights folder, and its speculative draft model's folder when it has one."""
    from deploy.weights.lockfile import verify

    draft_dir = None
    if directory is None:
        if not Path(plan_path).is_file():
            raise InputError(f"no DIR given and {plan_path} not found")
        weights, draft = _weights(plan_path, None)
        directory, draft_dir = weights.local_dir, (draft.local_dir if draft is not None else None)
    report = verify(directory, workers=workers)
    draft_report = verify(draft_dir, workers=workers) if draft_dir else None
    if json_out:
        data = report.to_dict()
        if draft_report is not None:
            data["draft"] = draft_report.to_dict()
        click.echo(json.dumps(data, indent=2))
    for r in (report, draft_report):
        if r is not None and not r.ok:
            raise VerificationError(r.summary())
    if not json_out:
        click.echo(report.summary())
        if draft_report is not None:
            click.echo(draft_report.summary())


COMMANDS = [download, verify_cmd]
