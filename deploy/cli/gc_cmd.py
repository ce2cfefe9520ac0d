"""`kimi-deploy gc`: remove old releases, and weights no kept release references."""

from __future__ import annotations

import click

from deploy.serving.release_dir import DEFAULT_KEEP


@click.command("gc")
@click.option(
    "--rendered",
    type=click.Path(file_okay=False),
    help="The rendered folder (default: the one the running deployment was started from).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=DEFAULT_KEEP,
    show_default=True,
    help="Releases kept (current and the one before it always are).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def gc_command(rendered: str | None, keep: int, dry_run: bool) -> None:
    """Remove releases beyond --keep and weights folders that no kept release references.

    Only weights laid out beside a kept release's (<folder> or <folder>@<revision>, same repo) are
    candidates; files hard-linked into a kept folder stay on disk through it.
    """
    from deploy.releases.gc import gc_deployment

    root, done = gc_deployment(rendered=rendered, keep=keep, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for rid in done.releases:
        click.echo(f"{verb} release {rid}")
    for folder in done.weights:
        click.echo(f"{verb} weights {folder}")
    click.echo(
        f"{root}: kept {len(done.kept_releases)} release(s) and {len(done.kept_weights)} weights folder(s); "
        f"{'would free' if dry_run else 'freed'} {done.freed_bytes / 1e9:.2f} GB"
    )


COMMANDS = [gc_command]
