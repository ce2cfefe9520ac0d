"""`kimi-deploy engine`: the cache layout, the llama.cpp build commands, reuse of a finished build, atomic
installs, and the parser venv.

The cold llama.cpp compile (about 13 minutes on 2 cores) runs in `make setup`, not here: these tests use the
build in the real cache (``make setup`` made it; missing is a failure) and copies of its binaries.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from deploy import constants, pins
from deploy.cli import main
from deploy.engines import builds as engines


@pytest.fixture
def built() -> engines.LlamaCppLayout:
    layout = engines.llama_cpp_layout()
    if not engines.llama_cpp_ready(layout):
        pytest.fail(f"{layout.server} is not built: run `make setup` (kimi-deploy engine install llama.cpp)")
    return layout


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setattr(constants, "CACHE_DIR", cache)
    return cache


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def built_tree(tmp_path: Path, layout: engines.LlamaCppLayout, with_rpc: bool = True) -> Path:
    """A llama.cpp tree as cmake leaves it: build/bin holds the targets (copies of the real binaries)."""
    tree = tmp_path / "llama.cpp"
    (tree / "build" / "bin").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text("project(llama.cpp)\n")
    shutil.copy2(layout.server, tree / "build" / "bin" / "llama-server")
    if with_rpc:
        shutil.copy2(layout.rpc_server, tree / "build" / "bin" / "ggml-rpc-server")
    (tree / "models" / "templates").mkdir(parents=True)
    for src in sorted(layout.templates_dir.glob("*.jinja"))[:3]:
        shutil.copy2(src, tree / "models" / "templates" / src.name)
    return tree


def test_cache_layout_is_keyed_by_the_pins(tmp_cache: Path) -> None:
    cpu, cuda = engines.llama_cpp_layout(), engines.llama_cpp_layout(cuda=True)
    assert cpu.root == tmp_cache / "engines" / "llama.cpp" / f"{pins.LLAMA_CPP_PYTHON_VERSION}-cpu-rpc"
    assert cuda.root.name == f"{pins.LLAMA_CPP_PYTHON_VERSION}-cuda-rpc"
    assert (
        cpu.server == cpu.root / "bin" / "llama-server" and cpu.rpc_server == cpu.root / "bin" / "rpc-server"
    )
    assert engines.llama_server_path() == cpu.server
    venv = engines.parser_venv_dir()
    assert venv == tmp_cache / "venvs" / f"parsers-vllm{pins.VLLM_VERSION}-sglang{pins.SGLANG_VERSION}"


def test_build_commands(tmp_path: Path) -> None:
    src, build = tmp_path / "src", tmp_path / "build"
    configure = engines.llama_cpp_configure_command(src, build)
    assert configure[:7] == ["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja"]
    for flag in (
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_SERVER=ON",
        "-DGGML_NATIVE=OFF",
        "-DGGML_RPC=ON",
        "-DLLAMA_BUILD_UI=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
    ):
        assert flag in configure
    assert "-DGGML_CUDA=ON" not in configure
    assert "-DGGML_CUDA=ON" in engines.llama_cpp_configure_command(src, build, cuda=True)
    build_cmd = engines.llama_cpp_build_command(build)
    targets = build_cmd[build_cmd.index("--target") + 1 : build_cmd.index("-j")]
    assert targets == ["llama-server", "ggml-rpc-server"]
    assert build_cmd[-1] == str(os.cpu_count())
    download = engines.llama_cpp_download_command(src)
    assert f"llama-cpp-python=={pins.LLAMA_CPP_PYTHON_VERSION}" in download
    assert download[download.index("--no-binary") + 1] == ":all:" and "--no-deps" in download


def test_finished_build_is_reused(built: engines.LlamaCppLayout, capsys) -> None:
    before = built.build_info.stat().st_mtime if built.build_info.exists() else None
    started = time.monotonic()
    messages: list[str] = []
    layout = engines.install_llama_cpp(progress=messages.append)
    assert time.monotonic() - started < 60
    assert layout == built and any("cached at" in m for m in messages)
    assert (built.build_info.stat().st_mtime if built.build_info.exists() else None) == before
    code, out, _ = run(capsys, "engine", "install", "llama.cpp")
    assert code == 0 and "cached at" in out and out.strip().endswith(str(built.server))
    code, out, _ = run(capsys, "engine", "path", "rpc-server")
    assert code == 0 and out.strip() == str(built.rpc_server)
    assert engines.llama_cpp_version(built.server)


def test_a_broken_binary_is_not_a_finished_build(tmp_cache: Path) -> None:
    # fault injection: a llama-server that exits non-zero, which a real build does not produce on purpose
    layout = engines.llama_cpp_layout()
    layout.bin_dir.mkdir(parents=True)
    layout.server.write_text("#!/bin/sh\nexit 1\n")
    layout.server.chmod(0o755)
    layout.rpc_server.write_text("")
    assert not engines.llama_cpp_ready(layout)


def test_adopt_a_built_tree_atomically(
    built: engines.LlamaCppLayout, tmp_path: Path, tmp_cache: Path
) -> None:
    tree = built_tree(tmp_path, built)
    layout = engines.install_llama_cpp(from_tree=tree, progress=None)
    assert engines.llama_cpp_ready(layout) and layout.root.parent.parent.parent == tmp_cache
    info = json.loads(layout.build_info.read_text())
    assert info["llama_cpp_python"] == pins.LLAMA_CPP_PYTHON_VERSION and info["cuda"] is False
    assert sorted(p.name for p in layout.templates_dir.iterdir()) == sorted(
        p.name for p in (tree / "models" / "templates").iterdir()
    )
    assert [p.name for p in layout.root.parent.iterdir()] == [layout.key]


def test_a_failed_install_leaves_nothing_that_looks_complete(
    built: engines.LlamaCppLayout, tmp_path: Path, tmp_cache: Path
) -> None:
    tree = built_tree(tmp_path, built, with_rpc=False)
    with pytest.raises(engines.EngineInstallError, match="ggml-rpc-server"):
        engines.install_llama_cpp(from_tree=tree, progress=None)
    layout = engines.llama_cpp_layout()
    assert not layout.root.exists()
    assert list(layout.root.parent.iterdir()) == []  # the staging folder is gone too


def test_missing_build_tools_are_reported(tmp_cache: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # fault injection: a machine without cmake
    with pytest.raises(engines.EngineInstallError, match="cmake not found"):
        engines.install_llama_cpp(progress=None)


def test_parser_venv_is_built_and_reused() -> None:
    venv = engines.parser_venv_dir()
    if not engines.parser_venv_ready(venv):
        pytest.fail(f"parser venv missing at {venv}: run `make setup` (kimi-deploy engine install parsers)")
    messages: list[str] = []
    assert engines.install_parser_venv(progress=messages.append) == venv
    assert any("cached at" in m for m in messages)


def test_parser_venv_packages_are_pinned_and_no_deps(tmp_path: Path) -> None:
    packages = engines.parser_venv_packages()
    for name, pin in (
        ("vllm", pins.VLLM_VERSION),
        ("sglang", pins.SGLANG_VERSION),
        ("xgrammar", pins.XGRAMMAR_VERSION),
        ("torch", pins.TORCH_CPU_VERSION),
    ):
        assert f"{name}=={pin}" in packages
    assert all("==" in p for p in packages)
    assert len({p.split("==")[0].lower() for p in packages}) == len(packages)
    commands = engines.parser_venv_install_commands(tmp_path / "v")
    pip = next(c for c in commands if "pip" in c)
    assert "--no-deps" in pip
    assert not engines.parser_venv_ready(tmp_path / "v")


def test_kt_parser_venv_is_built_and_reused() -> None:
    venv = engines.kt_parser_venv_dir()
    if not engines.kt_parser_ready(venv):
        pytest.fail(
            f"KTransformers parser venv missing at {venv}: run `make setup` (engine install parsers-kt)"
        )
    messages: list[str] = []
    assert engines.install_kt_parser(progress=messages.append) == venv
    assert any("cached at" in m for m in messages)


def test_kt_parser_venv_pins_the_fork_and_a_matching_torch(tmp_path: Path) -> None:
    """torch and torchvision come as a pinned pair (pip takes the CUDA libraries torch's metadata pins);
    everything else, the fork first, is pinned and --no-deps."""
    venv_cmd, torch_cmd, fork_cmd = engines.kt_parser_venv_install_commands(tmp_path / "v")
    assert "venv" in venv_cmd
    assert torch_cmd[-2:] == [
        f"torch=={pins.TORCH_KT_VERSION}",
        f"torchvision=={pins.TORCHVISION_KT_VERSION}",
    ]
    assert "--no-deps" in fork_cmd and f"sglang-kt=={pins.SGLANG_KT_VERSION}" in fork_cmd
    packages = fork_cmd[fork_cmd.index("--no-deps") + 1 :]
    assert all("==" in p for p in packages)
    assert not any(p.split("==")[0] in ("sglang", "torch", "vllm") for p in packages)
    assert not engines.kt_parser_ready(tmp_path / "v")


def test_engine_cli_bad_input_is_exit_2(capsys) -> None:
    code, _, err = run(capsys, "engine", "install", "parsers", "--cuda")
    assert code == 2 and err.startswith("error: --cuda")
    code, _, err = run(capsys, "engine", "install", "vllm")
    assert code == 2 and "--cpu" in err


def test_engine_path_of_a_missing_build_is_exit_1(capsys, tmp_cache: Path) -> None:
    code, _, err = run(capsys, "engine", "path", "llama.cpp", "--cuda")
    assert code == 1 and "kimi-deploy engine install llama.cpp" in err
