"""The `kimi-deploy` command line: a thin layer over the library, one module per verb.

Each ``*_cmd`` module in this package defines click commands and only parses options, calls the library and
prints; errors from the library (deploy.errors) become one line on stderr and their exit code.
"""

from __future__ import annotations

import errno
import sys

import click

from deploy import __version__
from deploy.cli.commands import LazyGroup
from deploy.errors import DiskSpaceError, KimiDeployError


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(__version__, prog_name="kimi-deploy")
def cli() -> None:
    """Plan, download, render, launch and check self-hosted Kimi-K2.5 deployments.

    Pipeline: inventory -> plan -> download -> verify -> render -> up -> check -> down.
    """


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="kimi-deploy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # one line, like every other error: "error: Invalid value for '--port': ... (kimi-deploy plan -h)"
        where = f" ({exc.ctx.command_path} -h)" if exc.ctx is not None else ""
        click.echo(f"error: {' '.join(exc.format_message().split())}{where}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
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
    except OSError as exc:
        # the last net under the library's own errors: a full disk is exit 4, any other OS error one line
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            click.echo(f"error: {where}disk full ({exc.strerror})", err=True)
            sys.exit(DiskSpaceError.exit_code)
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    # with standalone_mode=False, ctx.exit(n) comes back as the return value
    sys.exit(code if isinstance(code, int) else 0)
