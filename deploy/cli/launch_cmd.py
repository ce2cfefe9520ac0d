"""`kimi-deploy up`, `down` and `status`: start the rendered engine and wait until it is ready, stop it."""

from __future__ import annotations

import sys

import click

from deploy.cli import params
from deploy.serving import fleet_launch
from deploy.serving import watch as live_status


@click.command("up")
@click.option(
    "--plan",
    "plan_path",
    default="plan.json",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The plan the launch files were rendered from.",
)
@click.option(
    "--rendered",
    default="rendered",
    show_default=True,
    type=click.Path(file_okay=False),
    help="The folder `kimi-deploy render` wrote.",
)
@click.option(
    "--node",
    help="Which node of the plan this machine is (default: the head, the first node; for a fleet, every "
    "replica and then the router); `router` starts a fleet's router.",
)
@click.option("--systemd", is_flag=True, help="Install and start the rendered systemd unit instead.")
@click.option(
    "--deadline",
    type=params.SECONDS,
    metavar="SECONDS",
    help="How long to wait for /health 200 (default: the plan's ready_deadline_s, its predicted time to "
    "ready times the factor of safety).",
)
def up_command(
    plan_path: str, rendered: str, node: str | None, systemd: bool, deadline: float | None
) -> None:
    """Start the engine on verified weights and wait until it is ready (a fleet: each replica, then the
    router, until it reports every replica healthy).

    A second `up` on a node whose server is ready prints "already running" and exits 0; if that server is
    not ready, or another `up` is still starting it, it exits 6. A worker node is ready when its process
    runs and, for llama.cpp's rpc-server, a socket listens on its port. On a failed start the cause read
    from the log is printed with its last lines (exit 6).
    """
    # an upgrade or rollback killed half-way is finished first (rolled back), so `up` never starts beside it
    from deploy.releases import upgrade

    upgrade.recover(out=sys.stderr)
    fleet_launch.up(plan_path, rendered, node=node, systemd=systemd, deadline_s=deadline)


@click.command("down")
@click.option(
    "--rendered",
    type=click.Path(file_okay=False),
    help="The rendered folder: its nodes are listed too (what runs comes from the pidfiles).",
)
@click.option(
    "--node",
    help="Stop only this node (default: every node `up` started here, a fleet's router first); a fleet "
    "replica's node leaves the router, drained, before it stops.",
)
@click.option(
    "--grace",
    type=params.Finite(0, 3600),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between SIGTERM and SIGKILL.",
)
def down_command(rendered: str | None, node: str | None, grace: float) -> None:
    """Stop the engine (SIGTERM to its process group, SIGKILL after the grace period). Idempotent."""
    for line in fleet_launch.down(node=node, grace_s=grace, rendered=rendered):
        click.echo(line)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (JSON Lines with --watch).")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C (or --count).")
@click.option(
    "--interval",
    type=params.Finite(0.2, 86400),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between refreshes with --watch.",
)
@click.option("--count", type=params.Whole(1, 10**9), metavar="N", help="Stop --watch after N refreshes.")
@click.option(
    "--api-key-env",
    default="KIMI_API_KEY",
    show_default=True,
    metavar="NAME",
    help="Env var with the key /metrics wants (else read from the engine's env files).",
)
def status_command(as_json: bool, watch: bool, interval: float, count: int | None, api_key_env: str) -> None:
    """Show each node's engine: ready?, requests running/waiting, KV-cache usage, generated tokens/s (from
    the engine's /metrics), pid and URL. Exits 0 only when every node is ready."""
    views = live_status.run(
        as_json=as_json, watch=watch, interval_s=interval, count=count, key_env=api_key_env
    )
    # SystemExit, not ctx.exit: the entry point runs click with standalone_mode=False, which drops the code
    sys.exit(0 if views and all(v.ready for v in views) else 1)


COMMANDS = [up_command, down_command, status_command]
