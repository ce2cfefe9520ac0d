"""The `kimi-deploy` command line: a thin layer over the library, one module per verb.

Each ``*_cmd`` module in this package defines click commands and only parses options, calls the library and
prints; errors from the library (deploy.errors) become one line on stderr and their exit code.
"""

from __future__ import annotations

import errno
import os
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


def _error(text: str) -> None:
    """One ``error:`` line on stderr, with every secret (known from the environment, or by its shape:
    URL userinfo, credential parameters and headers) masked: errors quote URLs and server answers."""
    from deploy.secrets import redact, secret_values

    click.echo(redact(f"error: {' '.join(text.split())}", secret_values()), err=True)


def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="kimi-deploy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        # one line, like every other error: "error: Invalid value for '--port': ... (kimi-deploy plan -h)"
        where = f" ({exc.ctx.command_path} -h)" if exc.ctx is not None else ""
        _error(f"{exc.format_message()}{where}")
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KimiDeployError as exc:
        _error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        # the last net under the library's own errors: a full disk is exit 4, any other OS error one line
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _error(f"{where}disk full ({exc.strerror})")
            sys.exit(DiskSpaceError.exit_code)
        _error(f"{where}{exc.strerror or exc}")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last net: a bug is one line and exit 1, not a traceback
        if os.environ.get("KIMI_DEPLOY_DEBUG"):
            raise
        _error(f"internal error ({exc.__class__.__name__}: {exc}); KIMI_DEPLOY_DEBUG=1 shows the traceback")
        sys.exit(1)
    # with standalone_mode=False, ctx.exit(n) comes back as the return value
    sys.exit(code if isinstance(code, int) else 0)
