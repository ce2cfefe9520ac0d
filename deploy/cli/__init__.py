"""The `kimi-deploy` command line: a thin layer over the library, one module per verb.

Each module in this package defines click commands and only parses options, calls the library and
prints; errors from the library (deploy.errors) become one line on stderr and their exit code.
"""

from __future__ import annotations

import sys

import click

from deploy import __version__
from deploy.errors import KimiDeployError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="kimi-deploy")
def cli() -> None:
    """Plan, download, render, launch and check self-hosted Kimi-K2.5 deployments."""


def _register() -> None:
    # Imported here so each verb's module stays independent of the others.
    from deploy.cli import commands

    for command in commands.all_commands():
        cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        cli.main(args=argv, prog_name="kimi-deploy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KimiDeployError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(0)
