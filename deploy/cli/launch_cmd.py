"""`kimi-deploy up`, `down` and `status`: start the rendered engine and wait until it is ready, stop it."""

from __future__ import annotations

import json
import sys

import click

from deploy.serving import launch


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
@click.option("--node", help="Which node of the plan this machine is (default: the head, the first node).")
@click.option("--systemd", is_flag=True, help="Install and start the rendered systemd unit instead.")
@click.option(
    "--deadline",
    type=float,
    metavar="SECONDS",
    help="How long to wait for /health 200 (default: the plan's time_to_ready_s).",
)
def up_command(
    plan_path: str, rendered: str, node: str | None, systemd: bool, deadline: float | None
) -> None:
    """Start the engine on verified weights and wait until it is ready.

    A second `up` on a node whose server is ready prints "already running" and exits 0; if that server is
    not ready, or another `up` is still starting it, it exits 6. A worker node is ready when its process
    runs and, for llama.cpp's rpc-server, a socket listens on its port. On a failed start the cause read
    from the log is printed with its last lines (exit 6).
    """
    launch.up(plan_path, rendered, node=node, systemd=systemd, deadline_s=deadline)


@click.command("down")
@click.option(
    "--rendered",
    type=click.Path(file_okay=False),
    help="The rendered folder: its nodes are listed too (what runs comes from the pidfiles).",
)
@click.option("--node", help="Stop only this node (default: every node `up` started here).")
@click.option(
    "--grace",
    type=float,
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between SIGTERM and SIGKILL.",
)
def down_command(rendered: str | None, node: str | None, grace: float) -> None:
    """Stop the engine (SIGTERM to its process group, SIGKILL after the grace period). Idempotent."""
    for line in launch.down(node=node, grace_s=grace, rendered=rendered):
        click.echo(line)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(as_json: bool) -> None:
    """Show each node's engine: running?, ready?, pid, URL. Exits 0 only when every node is ready."""
    nodes = launch.status()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "node": s.node,
                        "running": s.running,
                        "ready": s.ready,
                        "pid": s.pid,
                        "url": s.url,
                        "detail": s.detail,
                    }
                    for s in nodes
                ],
                indent=2,
            )
        )
    elif not nodes:
        click.echo("not running")
    for s in [] if as_json else nodes:
        state = "ready" if s.ready else ("running, not ready" if s.running else "not running")
        pid = f" pid {s.pid}" if s.running else ""
        url = f" {s.url.rsplit('/', 1)[0]}" if s.running and s.url else ""
        click.echo(f"{s.node}: {state}{pid}{url} ({s.detail})")
    # SystemExit, not ctx.exit: the entry point runs click with standalone_mode=False, which drops the code
    sys.exit(0 if nodes and all(s.ready for s in nodes) else 1)


COMMANDS = [up_command, down_command, status_command]
