"""Blackwell's NVFP4 variant and the optional speculative-decoding setting: sizes from the architecture and
the quantisation format, the GPU feature that gates NVFP4, the rendered flags, off by default."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploy.catalog import load_model
from deploy.constants import GIB
from deploy.hardware.profiles import load_gpu_table, load_profile, profile_from_gpus
from deploy.planning.architecture import architecture_for, expert_bytes
from deploy.planning.contract import INCOMPATIBLE, RUNNABLE
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving.argv import Endpoint, node_commands


@pytest.fixture(scope="module")
def kimi():
    return load_model("kimi-k2.5")


def test_nvfp4_expert_bytes_from_the_format(kimi):
    a = kimi.architecture
    params = 3 * a["hidden_size"] * a["moe_intermediate_size"]
    # E2M1 nibbles, one FP8 scale per 16 weights, FP32 global + input scale for each of the 3 linears
    want = params // 2 + params // 16 + 3 * (4 + 4)
    assert expert_bytes(a, kimi.variant("nvfp4").quant) == want
    arch = architecture_for(kimi, kimi.variant("nvfp4"))
    v = kimi.variant("nvfp4")
    # NVIDIA's announcement rounds to 591 GB; the tensors computed from config.json agree within 1%
    assert abs(arch.total_bytes - v.file_bytes) / v.file_bytes < 0.01
    assert v.requires_gpu == ("fp4",) and v.engines == ["vllm", "sglang"]


def test_kimi_k26_nvfp4_repo():
    assert load_model("kimi-k2.6").variant("nvfp4").repo == "nvidia/Kimi-K2.6-NVFP4"
    assert load_model("kimi-k2.6").speculative["eagle3"]["draft_repo"] == "lightseekorg/kimi-k2.6-eagle3-mla"


@pytest.mark.parametrize("gpu", ["B200", "B300", "GB200"])
def test_nvfp4_runs_on_blackwell(gpu, kimi):
    assert load_gpu_table()[gpu].fp4
    p = plan(profile_from_gpus(f"8x{gpu}"))
    nv = [c for c in p.candidates if c.variant == "nvfp4"]
    assert {c.engine for c in nv} == {"vllm", "sglang"}
    # SGLang's cookbook runs NVFP4 on B300/GB300 only (the catalog's engine_gpus)
    only = kimi.variant("nvfp4").engine_gpus["sglang"]["gpus"]
    assert all(c.runs == (gpu in only) for c in nv if c.engine == "sglang" and c.nodes == 1)
    tp8 = next(c for c in nv if c.engine == "vllm" and c.tensor_parallel == 8)
    assert tp8.status == RUNNABLE
    arch = architecture_for(kimi, kimi.variant("nvfp4"))
    # TP8 splits everything but the replicated groups: the weights per GPU are at least 1/8 of the total
    assert tp8.memory.weights * GIB >= arch.total_bytes / 8
    assert tp8.memory.weights * GIB < arch.total_bytes / 8 * 1.1
    assert tp8.weights.repo == "nvidia/Kimi-K2.5-NVFP4"


def test_nvfp4_blocked_without_fp4():
    p = plan(load_profile("h200x8"), PlanRequest(variant="nvfp4"))
    assert p.chosen is None
    for c in p.candidates:
        assert c.status == INCOMPATIBLE
        assert any("FP4 tensor cores" in r for r in c.reasons)


def test_plan_cli_lists_nvfp4_on_b200():
    out = subprocess.run(
        [sys.executable, "-m", "deploy", "plan", "--gpus", "8xB200", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    cands = [
        c for c in json.loads(out.stdout)["candidates"] if c["variant"] == "nvfp4" and c["engine"] == "vllm"
    ]
    assert cands and all(c["status"] == RUNNABLE for c in cands)
    assert all(c["memory"]["weights"] > 0 and c["memory"]["kv_cache"] > 0 for c in cands)


def test_sglang_nvfp4_renders_modelopt_fp4():
    # on B300: SGLang's cookbook runs NVFP4 on B300/GB300 only
    p = plan(profile_from_gpus("8xB300"), PlanRequest(engine="sglang", variant="nvfp4"))
    (head,) = node_commands(p, p.chosen_candidate, "/models/m", Endpoint())
    i = head.argv.index("--quantization")
    assert head.argv[i + 1] == "modelopt_fp4"


def test_speculative_off_by_default():
    p = plan(load_profile("h200x8"))
    for c in p.candidates:
        assert c.engine_args.get("speculative") is None
        if c.runs and c.engine in ("vllm", "sglang"):
            argv = [str(x) for x in node_commands(p, c, "/m", Endpoint())[0].argv]
            assert not any(a.startswith("--speculative") for a in argv)


def test_eagle3_memory_counted(kimi):
    spec = kimi.speculative["eagle3"]
    base = plan(load_profile("h200x8"), PlanRequest(engine="sglang"))
    eagle = plan(load_profile("h200x8"), PlanRequest(engine="sglang", speculative="eagle3"))
    b = next(c for c in base.candidates if c.tensor_parallel == 8 and c.data_parallel == 1)
    e = next(c for c in eagle.candidates if c.tensor_parallel == 8 and c.data_parallel == 1)
    tp = e.tensor_parallel
    draft = spec["draft_params"] * 2 / tp
    # memory figures are rounded to 0.001 GiB
    assert (e.memory.weights - b.memory.weights) * GIB == pytest.approx(draft, abs=0.002 * GIB)
    # the KV pool shrinks by the draft's weights, and each token also holds the MLA draft layer's latent,
    # whole on every TP rank like the target's (lightseekorg/kimi-k2.5-eagle3-mla: the target's MLA shapes)
    arch = architecture_for(kimi, kimi.variant("int4"))
    target = arch.kv_bytes_per_token("bf16")
    per_token = target + spec["draft_layers"] * target // kimi.architecture["num_hidden_layers"]
    assert e.kv_cache_tokens == pytest.approx(e.memory.kv_cache * GIB / per_token, rel=1e-3)
    assert e.kv_cache_tokens < b.kv_cache_tokens
    args = e.engine_args["speculative"]
    assert args["draft_model_path"].endswith(spec["draft_repo"])
    (head,) = node_commands(eagle, e, "/m", Endpoint())
    argv = [str(x) for x in head.argv]
    assert argv[argv.index("--speculative-algorithm") + 1] == "EAGLE3"
    assert argv[argv.index("--speculative-num-draft-tokens") + 1] == str(spec["num_draft_tokens"])


def test_eagle3_only_where_a_recipe_runs_it():
    p = plan(load_profile("kt-4x4090-768g"), PlanRequest(speculative="eagle3"))
    assert all(c.engine_args.get("speculative") is None for c in p.candidates)
    p = plan(load_profile("b200x8"), PlanRequest(engine="vllm", speculative="eagle3"))
    c = p.chosen_candidate
    (head,) = node_commands(p, c, "/m", Endpoint())
    argv = [str(x) for x in head.argv]
    config = json.loads(argv[argv.index("--speculative-config") + 1])
    assert config["method"] == "eagle3" and config["num_speculative_tokens"] == 3


def test_vllm_multinode_distributed_timeout_on_every_rank():
    p = plan(load_profile("h100x8-2nodes"), PlanRequest(engine="vllm"))
    for c in (c for c in p.candidates if c.runs and c.nodes > 1):
        want = str(max(600, 2 * c.time_to_ready_s))
        for backend in ("mp", "ray"):
            for n in node_commands(p, c, "/m", Endpoint(multinode_backend=backend)):
                argv = [str(x) for x in n.argv]
                if n.program == "vllm":
                    assert argv[argv.index("--distributed-timeout-seconds") + 1] == want
    single = plan(load_profile("h200x8"), PlanRequest(engine="vllm")).chosen_candidate
    assert "multinode" not in single.engine_args
