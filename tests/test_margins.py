"""Margins: every plan on every profile keeps its promise at the low end of its KV range, leaves the stated
GPU headroom free, and derives its start-up deadline from the predicted time to ready."""

from __future__ import annotations

import math

import pytest

from deploy import constants
from deploy.constants import GB
from deploy.hardware.profiles import load_profile
from deploy.planning.contract import REDUCED, RUNNABLE
from deploy.planning.margins import (
    GPU_HEADROOM_FRACTION,
    KV_ERRORS,
    READY_SAFETY_FACTOR,
    gpu_headroom_gib,
)
from deploy.planning.memory import LLAMA_FIT_MARGIN_GIB
from deploy.planning.planner import CONTEXT_STEP, plan
from deploy.planning.request import PlanRequest

PROFILES = sorted(p.stem for p in constants.HARDWARE_DIR.glob("*.yaml") if p.stem != "gpus")


@pytest.fixture(scope="module")
def plans():
    return {name: plan(load_profile(name)) for name in PROFILES}


def test_there_are_profiles():
    assert {"h100x8", "h200x8", "rtx4090-256g"} <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_reduced_plans_size_the_context_to_the_low_end(plans, name):
    for c in plans[name].candidates:
        if not c.runs:
            continue
        assert c.kv_cache_tokens_low <= c.kv_cache_tokens, c.id
        assert c.kv_cache_tokens_low >= c.max_model_len, c.id
        assert c.kv_error_source, c.id
        if c.status == REDUCED and c.engine != "llama.cpp":
            # the step-rounded low end of the range, never the estimate
            expected_low = int(c.kv_cache_tokens * (1 - c.kv_error))
            assert c.max_model_len <= expected_low < c.max_model_len + CONTEXT_STEP, c.id
        if c.status == RUNNABLE:
            assert c.kv_cache_tokens_low >= c.max_model_len, c.id


def test_errors_are_stated_per_engine_and_device():
    for (engine, device), e in KV_ERRORS.items():
        assert 0 <= e.fraction < 0.5 and len(e.source) > 20, (engine, device)


@pytest.mark.parametrize("name", PROFILES)
def test_gpu_plans_leave_the_headroom_free(plans, name):
    node = load_profile(name).head
    if not node.gpu_count:
        pytest.skip("no GPU")
    headroom = max(1.0, GPU_HEADROOM_FRACTION * node.gpu_memory_mib / 1024)
    for c in plans[name].candidates:
        if not c.runs or not c.memory.total:
            continue
        m = c.memory
        if c.engine == "llama.cpp":
            used = m.weights + m.kv_cache + m.terms["compute_buffer"] + m.terms["non_torch"]
            # llama.cpp's own --fit margin plus the stated headroom
            assert m.total - used >= LLAMA_FIT_MARGIN_GIB + headroom - 0.01, c.id
        else:
            # vLLM / SGLang: everything predicted lives inside the utilisation budget or its reserves
            assert m.total - m.budget >= min(headroom, m.activations) - 0.01, c.id


def test_rtx4090_leaves_its_headroom():
    c = plan(load_profile("rtx4090-256g")).chosen_candidate
    free = c.memory.total - (
        c.memory.weights + c.memory.kv_cache + c.memory.terms["compute_buffer"] + c.memory.terms["non_torch"]
    )
    assert free >= LLAMA_FIT_MARGIN_GIB + gpu_headroom_gib(24564) - 0.01
    assert c.status == REDUCED and c.max_model_len % CONTEXT_STEP == 0


def test_vllm_above_the_headroom_needs_tight():
    p = plan(load_profile("h200x8"), PlanRequest(engine="vllm", gpu_memory_utilization=0.99))
    c = p.candidate("vllm-int4-tp8")
    assert not c.runs and "plan --tight" in " ".join(c.reasons)
    t = plan(load_profile("h200x8"), PlanRequest(engine="vllm", gpu_memory_utilization=0.99, tight=True))
    tc = t.candidate("vllm-int4-tp8-tight")
    assert tc.runs and tc.tight and "risk" in tc.reasons[0]


def test_deadline_derives_from_the_measured_read_rate(tmp_path):
    data = load_profile("h200x8").to_dict()
    data["nodes"][0]["disk_read_gbps"] = 0.5
    import yaml

    f = tmp_path / "slow.yaml"
    f.write_text(yaml.safe_dump(data))
    slow = plan(load_profile(f)).chosen_candidate
    fast = plan(load_profile("h200x8")).chosen_candidate
    assert slow.read_rate_gbps == 0.5 and "measured" in slow.read_rate_source
    # reading the weights at 0.5 GB/s alone takes bytes / 0.5 GB/s
    assert slow.time_to_ready_s >= slow.weights.bytes / (0.5 * GB)
    assert slow.time_to_ready_s > fast.time_to_ready_s
    for c in (slow, fast):
        assert c.ready_deadline_s >= math.ceil(c.time_to_ready_s * READY_SAFETY_FACTOR) - 1
        assert c.ready_deadline_s >= c.time_to_ready_s + 120


def test_one_h100_node_follows_the_engines_and_names_the_alternatives():
    p = plan(load_profile("h100x8"))
    c = p.chosen_candidate
    # SGLang's own fraction leaves no room on one node: the answer keeps experts in host RAM
    assert c.placement == "hybrid" and not c.tight
    sglang = p.candidate("sglang-int4-tp8")
    assert not sglang.runs
    assert any(r.startswith("a second node") for r in sglang.remediation)
    assert any(r.startswith("hybrid on this node") for r in sglang.remediation)
    assert any(line.startswith("All on GPUs instead: a second node") for line in p.explanation)
