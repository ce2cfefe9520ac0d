"""llama.cpp built for the node that runs it: CUDA for the card's compute capability, the CPU's ISA, the
portable build on the shared demo box; the launch script finds its own node's build.

No test compiles llama.cpp: each rendered install step is run through the real CLI with ``--dry-run``,
which prints the cache key and the cmake configure command that build would use. The numbers come from
the GPU table (hardware/gpus.yaml) and the profiles' CPU flags.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from helpers.cpu_nodes import write_cpu_profile

from deploy.engines import builds as engines
from deploy.hardware.profiles import load_gpu_table, load_profile
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving import render

REPO = Path(__file__).resolve().parents[1]


def _gguf(tmp_path: Path, cand) -> Path:
    d = tmp_path / "weights"
    folder = cand.weights.allow_patterns[0].split("/")[0]
    (d / folder).mkdir(parents=True, exist_ok=True)
    (d / folder / f"Kimi-K2.5-{folder}-00001-of-00002.gguf").touch()
    (d / folder / f"Kimi-K2.5-{folder}-00002-of-00002.gguf").touch()
    return d


def _render(tmp_path: Path, p, cand) -> render.RenderResult:
    path = tmp_path / "plan.json"
    save_plan(p, path)
    opts = render.RenderOptions(
        out_dir=tmp_path / "out", candidate_id=cand.id, weights_dir=_gguf(tmp_path, cand)
    )
    return render.render(path, opts)


def _install_command(script: Path) -> list[str]:
    """The `kimi-deploy engine install llama.cpp ...` line of a rendered install script."""
    (line,) = [x for x in script.read_text().splitlines() if x.startswith("kimi-deploy engine install")]
    return shlex.split(line)


def _dry_run(install: list[str]) -> dict[str, str]:
    """Run the install step through the real CLI with --dry-run: key, folder and configure command."""
    out = subprocess.run(
        [sys.executable, "-m", "deploy", *install[1:], "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split(": ", 1) for line in out.stdout.splitlines())


def test_rtx4090_install_builds_cuda_for_its_compute_capability(tmp_path: Path) -> None:
    p = plan(load_profile("rtx4090-256g"), PlanRequest(engine="llama.cpp"))
    cand = p.chosen_candidate
    assert cand.placement in ("gpu", "hybrid")
    sm = load_gpu_table()["RTX4090"].compute_capability.replace(".", "")
    result = _render(tmp_path, p, cand)
    node = result.nodes[0]
    install = _install_command(result.out_dir / f"install-{node.node}.sh")
    assert install[install.index("--cuda-arch") + 1] == sm
    dry = _dry_run(install)
    configure = dry["configure"].split()
    assert "-DGGML_CUDA=ON" in configure and f"-DCMAKE_CUDA_ARCHITECTURES={sm}" in configure
    # the Threadripper's AVX-512 for the experts kept in RAM
    assert "-DGGML_AVX512=ON" in configure and "-DGGML_AVX512_BF16=ON" in configure
    assert dry["key"] == node.build.key == f"0.3.36-cuda-sm{sm}-avx512-bf16-rpc"
    assert dry["into"] == str(engines.llama_cpp_layout(build=node.build).root)
    # the launch script runs that build from its own node's cache
    launch = (result.out_dir / f"launch-{node.node}.sh").read_text()
    assert f"/engines/llama.cpp/{dry['key']}\n" in launch
    assert str(engines.constants.CACHE_DIR) not in launch


def test_cpu_node_install_builds_for_its_isa(tmp_path: Path) -> None:
    profile = load_profile("cpu-512g")
    p = plan(profile, PlanRequest(engine="llama.cpp"))
    cand = p.chosen_candidate
    assert cand.engine_args["node_role"] == "dedicated"
    result = _render(tmp_path, p, cand)
    install = _install_command(result.out_dir / f"install-{profile.head.name}.sh")
    assert "--cuda-arch" not in install and "--cuda" not in install
    configure = _dry_run(install)["configure"].split()
    want = {
        "avx512f": "-DGGML_AVX512=ON",
        "avx512_bf16": "-DGGML_AVX512_BF16=ON",
        "amx_tile": "-DGGML_AMX_TILE=ON",
    }
    for flag, option in want.items():
        assert (option in configure) == (flag in profile.head.cpu.isa), option
    assert "-DGGML_CUDA=ON" not in configure and "-DGGML_NATIVE=OFF" in configure
    # a dedicated node: OpenMP's own wait policy, not the demo box's PASSIVE
    env = (result.out_dir / "kimi-deploy.env").read_text()
    assert "OMP_WAIT_POLICY" not in env


def test_amx_node_gets_the_amx_options() -> None:
    build = engines.LlamaCppBuild(cpu_isa=tuple(load_profile("kt-4x4090-768g").head.cpu.isa))
    flags = build.cmake_flags()
    assert {"-DGGML_AMX_TILE=ON", "-DGGML_AMX_INT8=ON", "-DGGML_AMX_BF16=ON", "-DGGML_AVX512=ON"} <= set(
        flags
    )
    assert build.key.endswith("-amx-rpc")
    native = engines.LlamaCppBuild(native=True)
    assert "-DGGML_NATIVE=ON" in native.cmake_flags() and "-DGGML_NATIVE=OFF" not in native.cmake_flags()


def test_demo_keeps_the_portable_build(tmp_path: Path) -> None:
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    cand = p.chosen_candidate
    assert cand.engine_args["node_role"] == "shared"
    assert cand.engine_args["omp_wait_policy"] == "PASSIVE"
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "model.gguf").touch()
    path = tmp_path / "plan.json"
    save_plan(p, path)
    result = render.render(path, render.RenderOptions(out_dir=tmp_path / "out", weights_dir=weights))
    install = _install_command(result.out_dir / f"install-{result.nodes[0].node}.sh")
    assert install == ["kimi-deploy", "engine", "install", "llama.cpp"]
    assert _dry_run(install)["key"] == engines.llama_cpp_layout().key == "0.3.36-cpu-rpc"
    assert "OMP_WAIT_POLICY=PASSIVE" in (result.out_dir / "kimi-deploy.env").read_text().splitlines()


def test_rpc_nodes_each_get_their_own_isa(tmp_path: Path) -> None:
    path = write_cpu_profile(tmp_path / "two.yaml", ["10.0.0.1", "10.0.0.2"], ram_gib=512, cores=64)
    data = yaml.safe_load(path.read_text())
    data["nodes"][1]["cpu"]["isa"] = ["avx2", "avx512f", "amx_tile", "amx_int8"]
    path.write_text(yaml.safe_dump(data))
    p = plan(load_profile(path), PlanRequest(nodes=2, variant="UD-TQ1_0"))
    cand = p.chosen_candidate
    assert cand.placement == "rpc"
    result = _render(tmp_path, p, cand)
    keys = {}
    for n in result.nodes:
        install = _install_command(result.out_dir / f"install-{n.node}.sh")
        keys[n.node] = _dry_run(install)["key"]
        launch = (result.out_dir / f"launch-{n.node}.sh").read_text()
        assert f"/engines/llama.cpp/{keys[n.node]}\n" in launch
    assert keys == {"node1": "0.3.36-cpu-rpc", "node2": "0.3.36-cpu-avx512-amx-rpc"}


def test_launch_finds_the_build_in_its_own_nodes_cache(tmp_path: Path) -> None:
    """The rendered launch runs the binary under the cache of whoever runs it ($KIMI_DEPLOY_CACHE here),
    not the renderer's. A stand-in llama-server (records its path and exits) replaces only the engine."""
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "model.gguf").touch()
    path = tmp_path / "plan.json"
    save_plan(p, path)
    result = render.render(path, render.RenderOptions(out_dir=tmp_path / "out", weights_dir=weights))
    node = result.nodes[0]
    launch = result.out_dir / f"launch-{node.node}.sh"
    other = tmp_path / "node cache"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KIMI_DEPLOY_CACHE": str(other)}
    missing = subprocess.run(["bash", str(launch)], capture_output=True, text=True, env=env, timeout=30)
    assert missing.returncode == 2 and "is not built on this node" in missing.stderr
    assert f"install-{node.node}.sh" in missing.stderr
    stub = other / "engines" / "llama.cpp" / node.build.key / "bin" / "llama-server"
    stub.parent.mkdir(parents=True)
    stub.write_text('#!/bin/sh\necho "$0"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    ran = subprocess.run(["bash", str(launch)], capture_output=True, text=True, env=env, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(stub)
    # without KIMI_DEPLOY_CACHE: the HOME of the user running it
    env.pop("KIMI_DEPLOY_CACHE")
    home = subprocess.run(["bash", str(launch)], capture_output=True, text=True, env=env, timeout=30)
    assert home.returncode == 2 and str(tmp_path / ".cache" / "kimi-deploy") in home.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("isa", "want", "unwanted"),
    [
        ((), ["-mavx2"], ["-mavx512f", "-mamx-int8"]),
        (
            ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_int8"),
            ["-mavx512f", "-mamx-int8"],
            ["-mamx-bf16"],
        ),
    ],
    ids=["portable", "avx512-amx"],
)
def test_llama_cpp_cmake_configures_the_isa_build(tmp_path: Path, isa, want, unwanted) -> None:
    """llama.cpp's own CMake (configure only, a few seconds; nothing is compiled) takes the build's options
    and turns them into the compiler flags of its CPU backend, from the pinned sdist the cached build kept."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.fail("cmake and ninja are needed: apt-get install cmake ninja-build (make setup-system)")
    sdist = engines.llama_cpp_layout().root / "src" / f"{engines.LLAMA_CPP_SDIST}.tar.gz"
    if not sdist.is_file():
        pytest.fail(f"{sdist} is missing: run `make setup` (kimi-deploy engine install llama.cpp)")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    tree = tmp_path / engines.LLAMA_CPP_SDIST / "vendor" / "llama.cpp"
    build = engines.LlamaCppBuild(cpu_isa=isa)
    cmd = engines.llama_cpp_configure_command(tree, tmp_path / "build", build=build)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (line,) = [x for x in out.stdout.splitlines() if "Adding CPU backend variant ggml-cpu:" in x]
    flags = line.split(":", 1)[1].split()[0].split(";")
    assert all(f in flags for f in want) and not any(f in flags for f in unwanted), flags
