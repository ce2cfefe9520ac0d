"""`kimi-deploy preflight --plan plan.json`: prove the nodes, drivers and fabric before download and up."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploy.errors import PreflightFailed


@click.command("preflight")
@click.option(
    "--plan", "plan_path", default="plan.json", show_default=True, help="The plan to check against."
)
@click.option("--ssh-user", help="User for ssh to the other nodes (default: ssh's own).")
@click.option("--ssh-key", type=click.Path(dir_okay=False), help="Private key for ssh to the other nodes.")
@click.option(
    "--ssh-option", "ssh_options", multiple=True, help="An ssh -o option (repeat): StrictHostKeyChecking=no."
)
@click.option("--remote-python", default="python3", show_default=True, help="Python on the other nodes.")
@click.option(
    "--torch-python",
    help="A python with torch, at the same path on every node, for the Gloo all-reduce "
    "(default: the first cached venv with torch here).",
)
@click.option(
    "--release",
    "release_dir",
    type=click.Path(file_okay=False),
    help="A rendered folder (render --out) whose env files the NCCL fabric check reads "
    "(default: what render would write).",
)
@click.option("--no-measure", is_flag=True, help="Skip the bandwidth measurements (iperf3).")
@click.option(
    "--skip",
    "skipped",
    multiple=True,
    help="Report this check as skipped (repeat): ports_free when the deployment already runs.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="A JSON list of checks (name, status, value, hint, node)."
)
def preflight_command(
    plan_path: str,
    ssh_user: str | None,
    ssh_key: str | None,
    ssh_options: tuple[str, ...],
    remote_python: str,
    torch_python: str | None,
    release_dir: str | None,
    no_measure: bool,
    skipped: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check this host as the plan's head and the other nodes over ssh: driver, GPUs, fabric manager,
    /dev/shm, disk, RAM, ISA, ports, interface and MTU, NCCL's fabric env, driver/CUDA/engine versions,
    clocks, weights.lock, bandwidth and the collective (NCCL all_reduce_perf, else Gloo); in a
    prefill/decode split, every role node's RDMA devices and the KV transfer's ports between the roles.

    Exits 9 when a check failed (every check is still printed)."""
    from deploy.planning.contract import load_plan
    from deploy.preflight import remote, result
    from deploy.preflight.run import preflight

    plan = load_plan(plan_path).to_dict()
    options = tuple(arg for o in ssh_options for arg in ("-o", o))
    ssh = remote.Ssh(user=ssh_user, key=ssh_key, options=options, python=remote_python)
    checks = preflight(
        plan,
        ssh,
        measure=not no_measure,
        skip=frozenset(skipped),
        torch_python=torch_python,
        release=Path(release_dir) if release_dir else None,
    )
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        click.echo(result.format_table(checks))
        click.echo(result.summary(checks))
    bad = result.failed(checks)
    if bad:
        names = ", ".join(sorted({f"{c.name}" + (f" ({c.node})" if c.node else "") for c in bad}))
        raise PreflightFailed(f"pre-flight failed: {names}")


COMMANDS = [preflight_command]
