"""Launches as the engines' current guides run them (issue 24): hardware facts and node shape, honest
hypothetical plans, sampling defaults on every engine, the speculative draft, NVFP4, systemd limits.

Each test names the guide or fact its rule comes from; expected values are read from the GPU table, the
catalog and the plan, never typed in.
"""

from __future__ import annotations

import pytest

from deploy.catalog import load_model
from deploy.hardware.profiles import load_gpu_table, profile_from_gpus
from deploy.planning.contract import RUNNABLE
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest


@pytest.fixture(scope="module")
def kimi():
    return load_model("kimi-k2.5")


# ------------------------------------------------------------------------------------- hardware facts


@pytest.mark.parametrize(("gpu", "count"), [("GB200", 8), ("H200", 16), ("H100", 16), ("B200", 16)])
def test_a_count_beyond_one_node_plans_whole_nodes(gpu: str, count: int) -> None:
    """A GB200 NVL72 compute tray holds 4 GPUs, an HGX board 8 (gpus.yaml ``gpus_per_node``)."""
    per = load_gpu_table()[gpu].gpus_per_node
    profile = profile_from_gpus(f"{count}x{gpu}")
    assert [n.gpu_count for n in profile.nodes] == [per] * (count // per)
    assert len(profile.nodes) == 2
    assert profile.total_gpus == count


def test_gb200_is_a_four_gpu_tray_and_hgx_eight() -> None:
    table = load_gpu_table()
    assert table["GB200"].gpus_per_node * 2 == table["H200"].gpus_per_node == table["B200"].gpus_per_node


@pytest.mark.parametrize("spec", ["12xH200", "2x8xGB200"])
def test_a_node_that_cannot_exist_is_refused(spec: str) -> None:
    from deploy.errors import InputError

    with pytest.raises(InputError, match="node holds"):
        profile_from_gpus(spec)


def test_four_gb200_run_int4_tp4_at_full_context(kimi) -> None:
    """vLLM's Kimi-K2.5 recipe serves the INT4 weights TP4 on GB200 at the model's full context: with NVML's
    189,471 MiB per GPU (not the 177,383 the table held) the plan agrees."""
    assert load_gpu_table()["GB200"].memory_mib > 186e9 / 2**20  # NVML reports more than the datasheet's GB
    p = plan(profile_from_gpus("4xGB200"), PlanRequest(engine="vllm", variant="int4"))
    tp4 = next(c for c in p.candidates if c.tensor_parallel == 4 and c.data_parallel <= 1)
    assert tp4.status == RUNNABLE
    assert tp4.max_model_len == kimi.architecture["max_position_embeddings"]
