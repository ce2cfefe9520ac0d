"""`kimi-deploy upgrade` and `kimi-deploy rollback`: switch the running deployment's release behind a gate."""

from __future__ import annotations

from collections.abc import Callable

import click

from deploy.cli import params
from deploy.releases import upgrade as releases


def _node_and_deadline(command: Callable[..., None]) -> Callable[..., None]:
    """--node and --deadline, which upgrade and rollback share."""
    command = click.option(
        "--deadline", type=params.SECONDS, metavar="SECONDS", help="How long to wait for /health 200."
    )(command)
    return click.option(
        "--node",
        "nodes",
        multiple=True,
        help="The plan's node this machine runs (repeatable; default: those `up` started here, "
        "else the head).",
    )(command)


@click.command("upgrade")
@click.option(
    "--plan",
    "plan_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="The new plan (from `kimi-deploy plan`; `plan diff` shows what changes).",
)
@click.option(
    "--rendered",
    type=click.Path(file_okay=False),
    help="The rendered folder (default: the one the running deployment was started from).",
)
@click.option("--endpoint", help="Hub or mirror URL for the new weights (default: $HF_ENDPOINT or the Hub).")
@click.option(
    "--weights-dir",
    type=click.Path(file_okay=False),
    help="Put the new weights here (default: the plan's folder, or <folder>@<revision> beside the old).",
)
@click.option(
    "--bench-gate",
    is_flag=True,
    help="Also gate on a bench run against the previous release's bench report (a tolerated regression).",
)
@click.option(
    "--bench-args",
    default="--concurrency 1 --requests 8",
    show_default=True,
    help="Options of the `kimi-deploy bench` run the gate makes against the new release.",
)
@click.option(
    "--bench-report",
    type=click.Path(dir_okay=False),
    help="Gate on this report of the new release instead of running bench (a `bench -o` report, or "
    "{metrics: {name: {value, better}}}).",
)
@click.option(
    "--bench-tolerance",
    type=click.FloatRange(min=0.0, max=1.0),
    default=releases.DEFAULT_BENCH_TOLERANCE,
    show_default=True,
    help="Tolerated regression of each bench metric (fraction).",
)
@_node_and_deadline
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=releases.release_dir.DEFAULT_KEEP,
    show_default=True,
    help="Releases kept besides current and the previous one.",
)
def upgrade_command(
    plan_path: str,
    rendered: str | None,
    endpoint: str | None,
    weights_dir: str | None,
    bench_gate: bool,
    bench_args: str,
    bench_report: str | None,
    bench_tolerance: float,
    nodes: tuple[str, ...],
    deadline: float | None,
    keep: int,
) -> None:
    """Upgrade the running deployment to a new plan; roll back by itself if the new release fails.

    Downloads and verifies the new weights beside the old, installs the new engine beside the old, renders
    the new release, then stops the old server, starts the new one and runs `check` (and the bench gate).
    Any failure stops the new server, switches `current` back, starts and checks the old release, and exits
    with the cause's code (5 weights, 6 start, 7 check). The deployment is found from KIMI_DEPLOY_STATE_DIR.
    """
    releases.upgrade(
        releases.UpgradeOptions(
            plan_path=plan_path,
            rendered=rendered,
            endpoint=endpoint,
            weights_dir=weights_dir,
            bench_gate=bench_gate,
            bench_args=bench_args,
            bench_report=bench_report,
            bench_tolerance=bench_tolerance,
            deadline_s=deadline,
            keep=keep,
            nodes=list(nodes) or None,
        )
    )


@click.command("rollback")
@click.option(
    "--rendered",
    type=click.Path(file_okay=False),
    help="The rendered folder (default: the one the running deployment was started from).",
)
@click.option("--to", "to", metavar="RELEASE", help="This release instead of the one before current.")
@_node_and_deadline
def rollback_command(
    rendered: str | None, to: str | None, nodes: tuple[str, ...], deadline: float | None
) -> None:
    """Switch back to the previous release (or --to), start it and check it.

    Finishes an interrupted upgrade first. If the release rolled back to fails its check, the current one
    is put back and the command exits non-zero.
    """
    releases.rollback(rendered=rendered, to=to, deadline_s=deadline, nodes=list(nodes) or None)


COMMANDS = [upgrade_command, rollback_command]
