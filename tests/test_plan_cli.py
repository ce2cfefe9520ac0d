"""`kimi-deploy plan` through the real CLI entry point (in-process for speed) and the console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cpu_nodes import write_cpu_profile

from deploy import constants
from deploy.cli import main
from deploy.hardware.profiles import available_profiles
from deploy.planning.contract import RUNNABLE, load_plan

KD = Path(sys.executable).with_name("kimi-deploy")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def hw(name: str) -> str:
    return str(constants.HARDWARE_DIR / f"{name}.yaml")


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_gives_an_answer(capsys, name, tmp_path):
    out_file = tmp_path / "plan.json"
    code, out, err = run(capsys, "plan", "--hardware", hw(name), "-o", str(out_file))
    assert code in (0, 3), err
    assert "STATUS" in out and "ENGINE" in out and "Hardware:" in out
    plan = load_plan(out_file)
    assert len(plan.candidates) == out.count("\n", out.index("STATUS"), out.index("\n\n"))
    if code == 0:
        assert plan.chosen is not None and "Chosen:" in out and "sources:" in out
    else:
        assert plan.chosen is None and "What would run it" in out
        assert err.strip().splitlines()[-1].startswith("error: nothing can run")


def test_h200_output(capsys):
    code, out, _ = run(capsys, "plan", "--hardware", hw("h200x8"))
    assert code == 0
    first = out.splitlines()[2].split()
    assert first[:4] == ["1", "runnable", "vllm", "int4"]
    for term in (
        "weights",
        "activation_peak",
        "cuda_graphs",
        "non_torch",
        "kv_cache",
        "host_engine_processes",
    ):
        assert term in out


def test_expected_choices(capsys):
    expect = {
        "h100x8-2nodes": ("vllm", "int4", 2),
        "rtx4090-256g": ("llama.cpp", None, 1),
        "kt-4x4090-768g": ("ktransformers", "int4", 1),
        "cpu-512g": ("llama.cpp", None, 1),
    }
    for name, (engine, variant, nodes) in expect.items():
        code, out, _ = run(capsys, "plan", "--hardware", hw(name), "--json")
        assert code == 0
        data = json.loads(out)
        chosen = next(c for c in data["candidates"] if c["id"] == data["chosen"])
        assert chosen["engine"] == engine and chosen["nodes"] == nodes
        assert variant is None or chosen["variant"] == variant
        if engine == "llama.cpp":
            assert chosen["weights"]["format"] == "gguf"


def test_h100_single_node(capsys):
    code, out, _ = run(capsys, "plan", "--hardware", hw("h100x8"), "--json")
    assert code == 0
    data = json.loads(out)
    native = [c for c in data["candidates"] if c["engine"] in ("vllm", "sglang")]
    assert all(c["status"] != RUNNABLE for c in native)
    assert any("second node" in r for c in native for r in c["remediation"])


def test_gpus_spec(capsys):
    code, out, _ = run(capsys, "plan", "--gpus", "2x8xH100", "--json")
    assert code == 0
    data = json.loads(out)
    assert len(data["hardware"]["nodes"]) == 2 and data["chosen"]


def test_nothing_runnable_writes_plan_and_exits_3(capsys, tmp_path):
    out_file = tmp_path / "plan.json"
    code, out, err = run(capsys, "plan", "--hardware", hw("ci-24g"), "-o", str(out_file))
    assert code == 3
    assert "incompatible" in out and "GB RAM" in out
    assert load_plan(out_file).chosen is None
    assert err.strip().splitlines()[-1].startswith("error: nothing can run kimi-k2.5")


def test_demo_on_ci(capsys):
    code, out, _ = run(capsys, "plan", "--hardware", hw("ci-24g"), "--model", "demo", "--json")
    assert code == 0
    data = json.loads(out)
    chosen = next(c for c in data["candidates"] if c["id"] == data["chosen"])
    assert chosen["engine_args"]["threads"] == 1 and chosen["placement"] == "cpu"


@pytest.mark.parametrize(
    "argv",
    [
        ["--context", "0"],
        ["--context", "262145"],
        ["--context", "abc"],
        ["--engine", "foo"],
        ["--variant", "nope"],
        ["--gpu-memory-utilization", "1.5"],
        ["--gpu-memory-utilization", "0"],
        ["--tensor-parallel", "3"],
        ["--kv-cache-dtype", "fp16"],
        ["--gpus", "8xNOPE"],
        ["--model", "nope"],
        ["--decode-context-parallel", "0"],
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv):
    hardware = [] if argv[0] == "--gpus" else ["--hardware", hw("h200x8")]
    code, out, err = run(capsys, "plan", *hardware, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err


def test_bad_profile_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes:\n  - name: n\n    gpus: {model: H100, count: 8}\n")
    code, _, err = run(capsys, "plan", "--hardware", str(bad))
    assert code == 2 and str(bad) in err and "cpu" in err


def test_console_script(tmp_path):
    out_file = tmp_path / "plan.json"
    proc = subprocess.run(
        [str(KD), "plan", "--hardware", hw("h200x8"), "-o", str(out_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert load_plan(out_file).chosen_candidate.engine == "vllm"
    bad = subprocess.run(
        [str(KD), "plan", "--hardware", hw("h200x8"), "--context", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_make_plan(tmp_path):
    # `-o` marks the venv's console script as up to date, so make does not reinstall the toolkit here
    root = constants.REPO_ROOT
    keep = ["-o", str(KD.relative_to(root)) if KD.is_relative_to(root) else ".venv/bin/kimi-deploy"]
    out = tmp_path / "h200.json"
    ok = subprocess.run(
        ["make", *keep, "plan", "HARDWARE=hardware/h200x8.yaml", f"PLAN={out}"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert load_plan(out).chosen_candidate.engine == "vllm"
    here = tmp_path / "here.json"
    no = subprocess.run(
        ["make", *keep, "plan", f"PLAN={here}"], cwd=root, capture_output=True, text=True, timeout=300
    )
    # the expectation comes from planning this machine's probed profile: on the CI machine (no GPU, 24 GB)
    # nothing runs, kimi-deploy exits 3 after the table and the explanation, and make names that status
    from deploy.hardware.inventory import probe
    from deploy.planning.planner import plan

    if plan(probe()).chosen is None:
        assert no.returncode != 0 and "Error 3" in no.stderr
        assert "What would run it" in no.stdout and load_plan(here).chosen is None
    else:
        assert no.returncode == 0 and load_plan(here).chosen is not None


def test_nodes_2_on_two_cpu_nodes_plans_llama_cpp_rpc(capsys, tmp_path):
    profile = write_cpu_profile(tmp_path / "two.yaml", ["10.213.0.1", "10.213.0.2"])
    out_file = tmp_path / "plan.json"
    code, out, err = run(
        capsys, "plan", "--hardware", str(profile), "--model", "demo", "--nodes", "2", "-o", str(out_file)
    )
    assert code == 0, err
    c = load_plan(out_file).chosen_candidate
    assert c.placement == "rpc" and c.nodes == 2 and c.status == RUNNABLE
    assert c.engine_args["rpc_servers"] == ["10.213.0.2:50052"]
    assert "RPC over 2 nodes" in out and "host_node2_weights" in out
    code, out, err = run(capsys, "plan", "--hardware", str(profile), "--model", "demo", "--nodes", "3")
    assert code == 2 and err.strip() == "error: --nodes 3: the profile has 2 nodes" and "Traceback" not in err
    code, _out, err = run(capsys, "plan", "--hardware", str(profile), "--nodes", "two")
    assert code == 2 and "--nodes 'two'" in err
