"""The memory model: weights placed by layout, budgets per engine, KV cache and host RAM, checked against
the tensor-group arithmetic and the engines' own formulas."""

from __future__ import annotations

import re

import pytest

from deploy.catalog import load_model
from deploy.constants import GIB, MIB
from deploy.hardware.profiles import load_profile
from deploy.planning.architecture import architecture_for
from deploy.planning.memory import (
    Layout,
    evaluate,
    gpu_weights,
    llama_host_tensors,
    pp_partition,
    sglang_mem_fraction_static,
)

REPLICATED = {"attn_q_a", "attn_kv_a", "layer_norms", "routers", "final_norm", "vision"}


@pytest.fixture(scope="module")
def kimi():
    return load_model("kimi-k2.5")


@pytest.fixture(scope="module")
def int4(kimi):
    return architecture_for(kimi, kimi.variant("int4"))


@pytest.fixture(scope="module")
def tq1(kimi):
    return architecture_for(kimi, kimi.variant("UD-TQ1_0"))


def test_tp8_weights_are_the_group_sums_divided(int4):
    expected = sum(g.bytes if g.name in REPLICATED else g.bytes / 8 for g in int4.groups)
    total, per_group, layers = gpu_weights(int4, Layout("vllm", gpus_per_node=8, tensor_parallel=8))
    assert total == pytest.approx(expected)
    assert per_group["routed_experts"] == pytest.approx(int4.group("routed_experts").bytes / 8)
    assert per_group["vision"] == int4.group("vision").bytes  # --mm-encoder-tp-mode data
    assert len(layers) == int4.num_layers


def test_dp_ep_replicates_all_but_experts(int4):
    lay = Layout("vllm", gpus_per_node=8, tensor_parallel=1, data_parallel=8, expert_parallel=True)
    total, per_group, _ = gpu_weights(int4, lay)
    experts = int4.group("routed_experts").bytes
    assert total == pytest.approx(int4.total_bytes - experts + experts / 8)


def test_pp_partition_like_vllm():
    parts = pp_partition(61, 2)
    assert [len(p) for p in parts] == [31, 30]
    assert parts[0].start == 0 and parts[1].stop == 61
    # extra layers go to the stages before the last, counted back from the second-to-last
    # (the last stage carries lm_head)
    assert [len(p) for p in pp_partition(61, 4)] == [15, 15, 16, 15]
    assert [len(p) for p in pp_partition(63, 4)] == [16, 16, 16, 15]


def test_pp2_stage_weights(int4):
    lay = Layout("vllm", nodes=2, gpus_per_node=8, tensor_parallel=8, pipeline_parallel=2)
    total, per_group, layers = gpu_weights(int4, lay)
    stage0, stage1 = pp_partition(int4.num_layers, 2)

    def stage_bytes(ids, s):
        out = 0.0
        for g in int4.groups:
            amount = (
                g.bytes_in(set(ids))
                if g.layers
                else (g.bytes if (g.stage == "first" and s == 0) or (g.stage == "last" and s == 1) else 0)
            )
            out += amount if g.name in REPLICATED else amount / 8
        return out

    assert total == pytest.approx(max(stage_bytes(stage0, 0), stage_bytes(stage1, 1)))
    assert layers in (stage0, stage1)


def test_vllm_budget_identity_and_kv_tokens(int4):
    node = load_profile("h200x8").head
    fit = evaluate(int4, Layout("vllm", gpus_per_node=8, tensor_parallel=8), node)
    t = fit.memory.terms
    budget = node.gpu_memory_mib * MIB * 0.9 / GIB
    assert fit.memory.budget == pytest.approx(budget, abs=1e-3)
    parts = t["weights"] + t["activation_peak"] + t["cuda_graphs"] + t["non_torch"] + t["kv_cache"]
    assert parts == pytest.approx(budget, abs=0.01)
    # the MLA latent is replicated on every TP rank: all 61 layers, 70,272 bytes per token
    assert fit.kv_bytes_per_token == int4.kv_bytes_per_token("bf16") == 70_272
    assert fit.kv_capacity_tokens == pytest.approx(t["kv_cache"] * GIB / 70_272, rel=1e-3)
    for name in ("weights", "activation_peak", "cuda_graphs", "non_torch", "kv_cache", "budget"):
        assert name in fit.memory.sources


def test_decode_context_parallel_splits_kv(int4):
    node = load_profile("h200x8").head
    one = evaluate(int4, Layout("vllm", gpus_per_node=8, tensor_parallel=8), node)
    two = evaluate(int4, Layout("vllm", gpus_per_node=8, tensor_parallel=8, decode_context_parallel=2), node)
    assert two.kv_bytes_per_token == one.kv_bytes_per_token // 2
    assert two.kv_capacity_tokens == pytest.approx(2 * one.kv_capacity_tokens, rel=1e-3)


def test_fp8_kv_halves_bytes(int4):
    node = load_profile("h200x8").head
    bf16 = evaluate(int4, Layout("vllm", gpus_per_node=8, tensor_parallel=8), node)
    fp8 = evaluate(int4, Layout("vllm", gpus_per_node=8, tensor_parallel=8), node, kv_cache_dtype="fp8")
    assert fp8.kv_bytes_per_token == 35_136
    assert fp8.kv_capacity_tokens == pytest.approx(2 * bf16.kv_capacity_tokens, rel=1e-3)


def test_sglang_fraction_formula():
    # H200, TP8: SGLang reserves max(512 + 1.5 x 8192 + 2 x 512 + 1024 x 8/8, 10240) MiB
    reserved = max(512 + 1.5 * 8192 + 2 * 512 + 1024, 10240)
    assert sglang_mem_fraction_static(143771, 8) == round((143771 - reserved) / 143771, 3)
    # RTX 4090, TP4: no 10 GiB floor below 60 GiB
    reserved = 512 + 1.5 * 2048 + 2 * 80 + 1024 * 4 / 8
    assert sglang_mem_fraction_static(24564, 4) == round((24564 - reserved) / 24564, 3)


def test_sglang_pool_is_weights_plus_kv(int4):
    node = load_profile("h200x8").head
    fit = evaluate(int4, Layout("sglang", gpus_per_node=8, tensor_parallel=8), node)
    frac = fit.settings["mem_fraction_static"]
    assert fit.memory.weights + fit.memory.kv_cache == pytest.approx(
        node.gpu_memory_mib * MIB * frac / GIB, abs=0.01
    )


def test_kt_expert_unit_cost(int4):
    node = load_profile("kt-4x4090-768g").head
    base = Layout("ktransformers", gpus_per_node=4, tensor_parallel=4)
    w0, *_ = gpu_weights(int4, base)
    w1, *_ = gpu_weights(int4, Layout("ktransformers", gpus_per_node=4, tensor_parallel=4, gpu_experts=1))
    moe_layers = len(int4.moe_layers)
    assert w1 - w0 == pytest.approx(moe_layers * 24_772_608 / 4)  # 60 x one expert per unit, split over TP
    # the routed experts that stay off the GPU are held in host RAM
    fit = evaluate(int4, base, node)
    assert fit.memory.terms["host_routed_experts"] == pytest.approx(
        int4.group("routed_experts").bytes / GIB, abs=1e-3
    )


def test_llama_hybrid_keeps_experts_in_ram(tq1):
    node = load_profile("rtx4090-256g").head
    lay = Layout("llama.cpp", gpus_per_node=1, placement="hybrid")
    fit = evaluate(tq1, lay, node, context=16384)
    experts, embed = tq1.group("routed_experts").bytes, tq1.group("embed").bytes
    assert llama_host_tensors(tq1, lay) == experts + embed
    assert fit.memory.weights == pytest.approx((tq1.total_bytes - experts - embed) / GIB, abs=1e-3)
    assert fit.memory.kv_cache == pytest.approx(16384 * 70_272 / GIB, abs=1e-3)
    # the override pattern catches the routed expert tensors and not the shared expert
    pattern = re.compile(fit.settings["override_tensor"][0].rsplit("=", 1)[0])
    assert pattern.search("blk.3.ffn_up_exps.weight") and pattern.search("blk.60.ffn_down_exps.weight")
    assert not pattern.search("blk.3.ffn_up_shexp.weight")


def test_llama_cpu_allocates_exactly_ctx(tq1):
    node = load_profile("cpu-512g").head
    lay = Layout("llama.cpp", placement="cpu")
    small = evaluate(tq1, lay, node, context=8192)
    big = evaluate(tq1, lay, node, context=65536)
    assert big.memory.terms["host_kv_cache"] - small.memory.terms["host_kv_cache"] == pytest.approx(
        (65536 - 8192) * 70_272 / GIB, abs=1e-3
    )
    assert small.memory.terms["host_cpu_tensors"] == pytest.approx(tq1.total_bytes / GIB, abs=1e-3)


def test_h100_tp8_does_not_fit(int4):
    # 8x H100: the TP8 weights per GPU alone exceed 0.9 x 80 GiB
    node = load_profile("h100x8").head
    fit = evaluate(int4, Layout("vllm", gpus_per_node=8, tensor_parallel=8), node)
    assert fit.memory.weights > node.gpu_memory_mib * MIB * 0.9 / GIB
    assert not fit.fits and fit.reasons
