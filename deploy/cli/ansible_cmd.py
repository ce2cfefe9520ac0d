"""`kimi-deploy ansible PLAYBOOK -i INVENTORY`: run the toolkit's playbooks through ansible-runner."""

from __future__ import annotations

import click

from deploy.ansible import runner as ansible
from deploy.errors import AnsibleRunError


@click.command("ansible")
@click.argument("playbook", default="site.yml")
@click.option(
    "-i", "--inventory", required=True, help="Inventory file or directory (groups kimi_head, kimi_workers)."
)
@click.option(
    "-t",
    "--tags",
    multiple=True,
    help="Only these stages: inventory, plan, preflight, download, render, up, check (repeat or "
    "comma-separate).",
)
@click.option("--skip-tags", multiple=True, help="Skip these stages.")
@click.option(
    "--skip-preflight", is_flag=True, help="Do not run the pre-flight checks before download and up."
)
@click.option("-l", "--limit", help="Limit to these hosts (Ansible pattern).")
@click.option("-C", "--check", "check_mode", is_flag=True, help="Show what would change without changing it.")
@click.option("-D", "--diff", is_flag=True, help="Show the differences in changed files.")
@click.option("-e", "--extra-vars", multiple=True, help="key=value or @file, as for ansible-playbook.")
@click.option(
    "--vault-password-file",
    type=click.Path(exists=True, dir_okay=False),
    help="For inventories with vaulted values (the API key).",
)
@click.option("-v", "--verbose", count=True, help="Pass -v.. to ansible-playbook.")
@click.option("--syntax-check", is_flag=True, help="Only check the playbook syntax; run nothing.")
def ansible_command(
    playbook: str,
    inventory: str,
    tags: tuple[str, ...],
    skip_tags: tuple[str, ...],
    skip_preflight: bool,
    limit: str | None,
    check_mode: bool,
    diff: bool,
    extra_vars: tuple[str, ...],
    vault_password_file: str | None,
    verbose: int,
    syntax_check: bool,
) -> None:
    """Run PLAYBOOK (default site.yml from the toolkit's playbooks/) with progress and the final stats.

    Exits 0 when every host succeeded, else with ansible-playbook's exit code."""
    result = ansible.run_playbook(
        playbook,
        inventory,
        tags=_split(tags),
        skip_tags=_split(skip_tags) + (["preflight"] if skip_preflight else []),
        limit=limit,
        check=check_mode,
        diff=diff,
        extra_vars=extra_vars,
        vault_password_file=vault_password_file,
        verbosity=verbose,
        syntax_check=syntax_check,
        on_line=click.echo,
    )
    if syntax_check and result.ok:
        click.echo(f"syntax ok: {ansible.resolve_playbook(playbook)}")
        return
    click.echo(ansible.format_recap(result))
    if not result.ok:
        first = result.failed_tasks[0].splitlines()[0] if result.failed_tasks else f"status {result.status}"
        raise AnsibleRunError(f"playbook {playbook} failed (rc {result.rc}): {first}", result.rc)
    click.echo(
        f"{'would change' if check_mode else 'changed'}: {result.total_changed} task(s) on "
        f"{len(result.hosts())} host(s)"
    )


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


COMMANDS = [ansible_command]
