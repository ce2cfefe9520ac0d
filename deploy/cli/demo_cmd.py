"""`kimi-deploy demo`: the whole pipeline on a small real model, every stage printed as it runs."""

from __future__ import annotations

import click

from deploy.cli import params
from deploy.demo import run as demo


@click.command("demo")
@click.option(
    "--workdir",
    default=".demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the demo keeps everything it writes (mirror, weights, plan, rendered files, state).",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Leave the engine up at the end (stop it with KIMI_DEPLOY_STATE_DIR=<workdir>/state "
    "kimi-deploy down).",
)
@click.option(
    "--port",
    type=params.PORT_OR_ANY,
    help="Serve on this port instead of the catalog's (0: any free port); check then goes by --url.",
)
@click.option(
    "--engine",
    type=click.Choice(list(demo.ENGINES)),
    default="llama.cpp",
    show_default=True,
    help="llama.cpp: llama-server on the GGUF; vllm: vLLM's CPU build on the HF-format variant.",
)
@click.option(
    "--monitoring",
    is_flag=True,
    help="Also run Prometheus on the rendered monitoring/ (fast alerts) and show the dashboard queries "
    "answering; with --keep-running it stays up beside the engine.",
)
@click.option(
    "--bench",
    is_flag=True,
    help="After check, a short AIPerf load test (concurrency 1,2): bench.json and bench.png in --workdir.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Serve this many llama-server replicas behind the router (vllm-router) on loopback; check and "
    "bench go through the router's URL.",
)
def demo_command(
    workdir: str,
    keep_running: bool,
    port: int | None,
    engine: str,
    monitoring: bool,
    bench: bool,
    replicas: int,
) -> None:
    """Build (cached), stage, serve, plan, download, verify, render, up, check, report, down.

    Runs Gemma 3 270M (GGUF from PyPI) on llama.cpp's llama-server through the same commands a deployment
    of Kimi-K2.5 uses. Exits with the failing stage's code (5 verify, 6 up, 7 check) and always cleans up.
    """
    result = demo.run_demo(
        workdir,
        keep_running=keep_running,
        port=port,
        engine=engine,
        monitoring=monitoring,
        bench=bench,
        replicas=replicas,
    )
    click.echo(
        f"\ndemo passed: {result.check.get('summary', {}).get('pass', 0)} checks passed "
        f"in {result.timings.get('total', 0):.0f} s"
    )
    if result.bench:
        cap = result.bench.get("capacity") or {}
        click.echo(
            f"bench: {len(result.bench.get('points') or [])} points, {result.bench.get('errors', 0)} errors"
            + (f", capacity at the SLO: concurrency {cap['concurrency']}" if cap.get("slo_ms") else "")
            + f"; report {workdir}/bench.json, picture {workdir}/bench.png"
        )


COMMANDS = [demo_command]
