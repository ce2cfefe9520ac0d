"""Tensor-group arithmetic against the architecture numbers of the catalog (config.json's text_config)."""

from __future__ import annotations

import pytest

from deploy.catalog import load_model
from deploy.constants import GIB
from deploy.errors import CatalogError
from deploy.planning.architecture import BF16, architecture_for, expert_bytes, vision_params


@pytest.fixture(scope="module")
def kimi():
    return load_model("kimi-k2.5")


@pytest.fixture(scope="module")
def int4(kimi):
    return architecture_for(kimi, kimi.variant("int4"))


def test_one_native_int4_expert(kimi):
    a = kimi.architecture
    q = a["expert_quantization"]
    params = 3 * a["hidden_size"] * a["moe_intermediate_size"]  # gate, up, down
    packed = params * q["bits"] // 8
    scales = params // q["group_size"] * q["scale_bytes"]
    assert expert_bytes(a, kimi.variant("int4").quant) == packed + scales
    # the figure measured on the real checkpoint (reference sheet, section 2)
    assert packed + scales == 24_772_608


def test_kv_bytes_per_token_mla(kimi, int4):
    a = kimi.architecture
    per_layer = a["kv_lora_rank"] + a["qk_rope_head_dim"]
    assert int4.kv_bytes_per_token("bf16") == per_layer * 2 * a["num_hidden_layers"] == 70_272
    assert int4.kv_bytes_per_token("fp8") == per_layer * 1 * a["num_hidden_layers"] == 35_136
    assert int4.kv_bytes_per_token("bf16", layers=31) == per_layer * 2 * 31
    with pytest.raises(CatalogError):
        int4.kv_bytes_per_token("fp4")


def test_groups_follow_config(kimi, int4):
    a = kimi.architecture
    L, h, heads = a["num_hidden_layers"], a["hidden_size"], a["num_attention_heads"]
    moe_layers = L - a["first_k_dense_replace"]
    assert int4.group("attn_o").params == L * heads * a["v_head_dim"] * h
    assert int4.group("attn_q_b").params == L * a["q_lora_rank"] * heads * (
        a["qk_nope_head_dim"] + a["qk_rope_head_dim"]
    )
    assert int4.group("attn_kv_b").params == L * a["kv_lora_rank"] * heads * (
        a["qk_nope_head_dim"] + a["v_head_dim"]
    )
    assert int4.group("embed").params == int4.group("lm_head").params == a["vocab_size"] * h
    assert int4.group("dense_mlp").params == a["first_k_dense_replace"] * 3 * h * a["intermediate_size"]
    assert int4.group("routed_experts").bytes == moe_layers * a["n_routed_experts"] * 24_772_608
    assert int4.group("routed_experts").layers == tuple(range(a["first_k_dense_replace"], L))
    # everything but the routed experts stays BF16 in the native checkpoint (routers add an FP32 bias)
    for g in int4.groups:
        if g.name not in ("routed_experts", "routers"):
            assert g.bytes == g.params * BF16, g.name
    assert int4.group("routers").bytes == moe_layers * a["n_routed_experts"] * (h * BF16 + 4)


def test_splits(int4):
    splits = {g.name: g.split for g in int4.groups}
    assert splits["attn_q_a"] == splits["attn_kv_a"] == splits["routers"] == splits["vision"] == "replicated"
    assert splits["attn_q_b"] == splits["attn_kv_b"] == splits["attn_o"] == "heads"
    assert splits["embed"] == splits["lm_head"] == "vocab"
    assert splits["dense_mlp"] == splits["shared_experts"] == "intermediate"
    assert splits["routed_experts"] == "experts"


def test_totals_match_the_checkpoint(kimi, int4):
    # computed size within 0.1 % of the listing of the 64 real files (headers and metadata make the rest)
    v = kimi.variant("int4")
    assert abs(int4.total_bytes - v.file_bytes) / v.file_bytes < 0.001
    attention = sum(int4.group(n).bytes for n in ("attn_q_a", "attn_q_b", "attn_kv_a", "attn_kv_b", "attn_o"))
    assert attention / GIB == pytest.approx(11.49, abs=0.01)  # the reference sheet's MLA total


def test_vision_tower_size(kimi, int4):
    params = vision_params(kimi.architecture["vision"])
    assert int4.group("vision").params == params
    # the card says about 400M parameters for the tower; the projector adds a few tens of millions
    assert 0.38e9 < params < 0.5e9


def test_gguf_variants_have_no_vision_and_use_bpw(kimi):
    for v in kimi.variants:
        if v.format != "gguf":
            continue
        arch = architecture_for(kimi, v)
        assert "vision" not in {g.name for g in arch.groups}
        a = kimi.architecture
        one = int(3 * a["hidden_size"] * a["moe_intermediate_size"] * v.quant["routed_experts_bpw"] / 8)
        assert arch.one_expert_bytes == one
        assert arch.group("routed_experts").bytes == len(arch.moe_layers) * a["n_routed_experts"] * one
        attn = arch.group("attn_o")
        assert attn.bytes == int(attn.params * v.quant["other_bpw"] / 8)


def test_fidelity_order_follows_bits(kimi):
    gguf = sorted((v for v in kimi.variants if v.format == "gguf"), key=lambda v: v.fidelity)
    sizes = [architecture_for(kimi, v).total_bytes for v in gguf]
    assert sizes == sorted(sizes)
    assert kimi.variant("int4").fidelity > max(v.fidelity for v in gguf)
