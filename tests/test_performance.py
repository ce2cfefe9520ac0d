"""The planner's decode expectation (deploy/planning/performance.py): bytes per token from the architecture,
efficiency factors that reproduce the published measurements they were calibrated on, and the plan field."""

from __future__ import annotations

import pytest

from deploy.catalog import load_model
from deploy.hardware.profiles import load_profile
from deploy.planning.architecture import architecture_for
from deploy.planning.performance import EFFICIENCY, EXPECTED_CONTEXT, decode_bytes, decode_estimate
from deploy.planning.planner import plan

KIMI = load_model("kimi-k2.5")
INT4 = architecture_for(KIMI, KIMI.variant("int4"))
Q4 = architecture_for(KIMI, KIMI.variant("UD-Q4_K_XL"))


def _total(t: dict[str, float]) -> float:
    return sum(t.values())


# (engine, placement) -> the measurement: tokens/s at concurrency 1 and the time per token it implies
# for a factor of 1 (GPU bytes / GPU GB/s + host bytes / host GB/s), each from the cited source
CALIBRATION = {
    ("vllm", "gpu"): (96.0, lambda: _total(decode_bytes(INT4, "vllm", 8, 1, EXPECTED_CONTEXT)) / 4800e9),
    ("ktransformers", "hybrid"): (
        10.3,
        lambda: (lambda t: (t["dense"] + t["kv"]) / 1792e9 + t["experts"] / 358.4e9)(
            decode_bytes(INT4, "ktransformers", 1, 1, EXPECTED_CONTEXT)
        ),
    ),
    ("llama.cpp", "cpu"): (
        11.5,
        lambda: _total(decode_bytes(Q4, "llama.cpp", 1, 1, EXPECTED_CONTEXT)) / 614.4e9,
    ),
    ("llama.cpp", "hybrid"): (
        22.05,
        lambda: (lambda t: (t["dense"] + t["kv"]) / 1792e9 + t["experts"] / 1177.6e9)(
            decode_bytes(Q4, "llama.cpp", 1, 1, EXPECTED_CONTEXT)
        ),
    ),
}


@pytest.mark.parametrize("key", sorted(CALIBRATION))
def test_each_factor_reproduces_its_measurement(key: tuple[str, str]) -> None:
    measured, seconds_at_full_bandwidth = CALIBRATION[key]
    factor = EFFICIENCY[key][0]
    implied = measured * seconds_at_full_bandwidth()
    assert factor == pytest.approx(implied, abs=0.01), (
        f"{key}: factor {factor} but the source implies {implied:.3f}"
    )


def test_bytes_per_token_follow_the_architecture() -> None:
    # 8 of 384 experts per MoE layer: the active routed bytes are 8 experts x the MoE layers, split over TP
    t1 = decode_bytes(INT4, "vllm", 1, 1, 0)
    t8 = decode_bytes(INT4, "vllm", 8, 1, 0)
    assert t1["experts"] == pytest.approx(8 * INT4.one_expert_bytes * len(INT4.moe_layers))
    assert t8["experts"] == pytest.approx(t1["experts"] / 8)
    # MLA's latent KV is whole on every rank; GQA's would be split
    assert decode_bytes(INT4, "vllm", 8, 1, 1000)["kv"] == pytest.approx(
        INT4.kv_bytes_per_token("bf16") * 1000
    )
    # the input embedding is a lookup: counting it would add vocab x hidden bytes
    embed = INT4.group("embed").bytes
    assert t1["dense"] < sum(g.bytes for g in INT4.groups if not g.routed_experts and g.name != "vision")
    assert t1["dense"] == pytest.approx(
        sum(g.bytes for g in INT4.groups if not g.routed_experts and g.name not in ("vision", "embed"))
    )
    assert embed > 0


def test_unknown_bandwidth_gives_null_with_the_reason() -> None:
    est = decode_estimate(Q4, "llama.cpp", "cpu", host_bandwidth_gbs=None)
    assert est["decode_tokens_per_s_c1"] is None
    assert "memory_bandwidth_gbs" in est["sources"]["missing"]


def test_plan_carries_performance_and_more_bandwidth_is_faster() -> None:
    p = plan(load_profile("hardware/h200x8.yaml"))
    best = p.chosen_candidate
    rate = best.performance["decode_tokens_per_s_c1"]
    # H200 4.8 TB/s x 0.12 over the int4 TP8 bytes per GPU
    assert rate == pytest.approx(
        4800e9 * EFFICIENCY[("vllm", "gpu")][0] / _total(decode_bytes(INT4, "vllm", 8, 1, EXPECTED_CONTEXT)),
        rel=0.02,
    )
    # TP8 x PP2 on H100: the stages run one after another, so the same bytes per token at 3.35 TB/s
    h100 = plan(load_profile("hardware/h100x8-2nodes.yaml")).candidate("vllm-int4-tp8-pp2")
    assert h100.performance["decode_tokens_per_s_c1"] == pytest.approx(rate * 3350 / 4800, rel=0.02)
