"""`kimi-deploy inventory`: probe this node and print (or write) its hardware profile."""

from __future__ import annotations

import click

from deploy.fsutil import atomic_write_text
from deploy.hardware import inventory


@click.command("inventory")
@click.option(
    "--weights-dir",
    default=inventory.DEFAULT_WEIGHTS_DIR,
    show_default=True,
    help="Where the weights will live; free disk is measured there (or at its nearest existing parent).",
)
@click.option(
    "--bandwidth/--no-bandwidth",
    default=True,
    show_default=True,
    help="Measure RAM bandwidth (about a second) for the planner's expected decode speed.",
)
@click.option(
    "--no-read-test",
    is_flag=True,
    help="Skip the weights folder's read-rate probe (a bounded read of at most 256 MiB / 3 s).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML (also implied by -o FILE.json).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write the profile to FILE (atomically)."
)
def inventory_command(
    weights_dir: str, bandwidth: bool, no_read_test: bool, as_json: bool, output: str | None
) -> None:
    """Probe GPUs, CPU, RAM (and its bandwidth), NUMA, disk (free space, sequential read rate) and network
    into a hardware profile for `plan --hardware`."""
    profile = inventory.probe(weights_dir, memory_bandwidth=bandwidth, measure_read=not no_read_test)
    text = inventory.dump_profile(profile, as_json=as_json or (output or "").endswith(".json"))
    if output:
        atomic_write_text(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


COMMANDS = [inventory_command]
