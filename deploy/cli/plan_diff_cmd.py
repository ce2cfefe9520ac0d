"""`kimi-deploy plan diff OLD NEW`: what changes between two plans or releases (a subcommand of `plan`)."""

from __future__ import annotations

import json

import click


@click.command("diff")
@click.argument("old", type=click.Path(exists=True))
@click.argument("new", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def diff_command(old: str, new: str, as_json: bool) -> None:
    """Compare OLD and NEW: each a plan.json, a release folder (rendered/releases/<id>) or a rendered folder
    (its current release).

    Shows engine and version, weights (repo, revision, files, bytes to download), every launch flag added,
    removed or changed on each node, context, memory and nodes. Exits 0 either way.
    """
    from deploy.releases import diff

    d = diff.diff(diff.load_side(old), diff.load_side(new))
    click.echo(json.dumps(d.to_dict(), indent=2) if as_json else diff.render_diff(d))


COMMANDS = [diff_command]
