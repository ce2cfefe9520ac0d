"""`kimi-deploy mirror serve` and `kimi-deploy mirror stage`."""

from __future__ import annotations

import json
import os
import signal
import threading

import click

from deploy.cli import params
from deploy.errors import InputError


@click.group("mirror")
def mirror() -> None:
    """Serve staged weights over the Hub protocol (LAN fan-out, air-gapped sites)."""


@mirror.command("serve")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 for the LAN).")
@click.option(
    "--port", type=params.PORT_OR_ANY, default=8090, show_default=True, help="Hub port (0 = any free port)."
)
@click.option(
    "--lfs-port",
    type=params.PORT_OR_ANY,
    default=0,
    show_default=True,
    help="Port of the second origin large files redirect to.",
)
@click.option(
    "--token", help="Require `Authorization: Bearer <token>` (prefer --token-env: argv is visible)."
)
@click.option("--token-env", help="Name of an environment variable holding the token.")
@click.option(
    "--path-prefix", default="", help="Serve under a path prefix, e.g. /hf (corporate mirror layouts)."
)
@click.option("--threads", default=32, show_default=True, help="Request worker threads.")
@click.option(
    "--log", "log_path", type=click.Path(dir_okay=False), help="Append one JSON line per request here."
)
@click.option(
    "--fault-corrupt", multiple=True, hidden=True, help="Fault injection: flip a byte of this file."
)
@click.option(
    "--fault-drop-after", default=0, hidden=True, help="Fault injection: cut each file's first GET here."
)
@click.option(
    "--fault-stall-after", default=0, hidden=True, help="Fault injection: go silent once at this offset."
)
@click.option(
    "--throttle", "throttle_bps", default=0, hidden=True, help="Fault injection: bytes/s per request."
)
def serve(
    directory: str,
    host: str,
    port: int,
    lfs_port: int,
    token: str | None,
    token_env: str | None,
    path_prefix: str,
    threads: int,
    log_path: str | None,
    fault_corrupt: tuple[str, ...],
    fault_drop_after: int,
    fault_stall_after: int,
    throttle_bps: int,
) -> None:
    """Serve the repos staged in DIRECTORY (read-only) until interrupted.

    A line `mirror-ready {json}` on stdout carries the URLs; point clients at it with
    HF_ENDPOINT=http://<this host>:<port> (plus the path prefix, if any)."""
    from deploy.weights.mirror import MirrorConfig, MirrorServer

    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise InputError(f"--token-env {token_env}: the variable is not set or empty")
    srv = MirrorServer(
        MirrorConfig(
            root=directory,
            host=host,
            port=port,
            lfs_port=lfs_port,
            token=token or None,
            path_prefix=path_prefix,
            threads=threads,
            log_path=log_path,
            fault_corrupt=list(fault_corrupt),
            fault_drop_after=fault_drop_after,
            fault_stall_after=fault_stall_after,
            throttle_bps=throttle_bps,
        )
    )
    srv.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    faults = [
        n
        for n, v in (
            ("corrupt", fault_corrupt),
            ("drop", fault_drop_after),
            ("stall", fault_stall_after),
            ("throttle", throttle_bps),
        )
        if v
    ]
    ready = {
        "url": srv.url,
        "lfs_url": srv.lfs_url,
        "repos": sorted(srv.repos),
        "token": bool(token),
        "faults": faults,
    }
    click.echo(f"serving {len(srv.repos)} repo(s) at {srv.url}: HF_ENDPOINT={srv.url}")
    if faults:
        click.echo(f"FAULT INJECTION ON: {', '.join(faults)}")
    click.echo("mirror-ready " + json.dumps(ready), nl=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


@mirror.command("stage")
@click.argument("src_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--repo", required=True, help="Repo id to serve it as, owner/name.")
@click.option(
    "--into", "into", required=True, type=click.Path(file_okay=False), help="The mirror's root folder."
)
@click.option(
    "--revision",
    default="main",
    show_default=True,
    help="The revision name it is served under (besides its commit and main), e.g. to stage an upgrade.",
)
def stage(src_dir: str, repo: str, into: str, revision: str) -> None:
    """Stage a local folder as a repo (hard links where possible) with a weights.lock.

    Staging again replaces what the mirror serves for the repo (one revision at a time)."""
    import re

    from deploy.weights.lockfile import read_lock
    from deploy.weights.mirror import stage_folder

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", revision):
        raise InputError(f"--revision {revision!r}: letters, digits, '.', '_' or '-'")
    dest = stage_folder(src_dir, repo, into, revision=revision)
    lock = read_lock(dest)
    click.echo(
        f"staged {repo} ({len(lock.files)} files, {lock.total_bytes} bytes) at {dest}, commit {lock.commit}"
    )


COMMANDS = [mirror]
