"""The planner on every hardware profile: statuses, ranking, engine_args, remediation, and monotonicity
(property tests): more GPU memory or RAM never gives a worse status; a longer context never needs less."""

from __future__ import annotations

import dataclasses
import math

import pytest
from helpers.cpu_nodes import write_cpu_profile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.catalog import load_model
from deploy.constants import GIB
from deploy.errors import InputError
from deploy.hardware.profiles import HardwareProfile, load_profile, profile_from_gpus
from deploy.planning.architecture import architecture_for
from deploy.planning.contract import INCOMPATIBLE, REDUCED, RUNNABLE, load_plan, save_plan
from deploy.planning.memory import host_available, llama_layer_devices, rpc_split
from deploy.planning.planner import CONTEXT_STEP, MIN_CONTEXT, plan
from deploy.planning.request import PlanRequest

ORDER = {RUNNABLE: 0, REDUCED: 1, INCOMPATIBLE: 2}
FULL = 262_144


@pytest.fixture(scope="module")
def kimi():
    return load_model("kimi-k2.5")


@pytest.fixture(scope="module")
def plans():
    names = [
        "h200x8",
        "h100x8",
        "h100x8-2nodes",
        "b200x8",
        "rtx4090-256g",
        "kt-4x4090-768g",
        "cpu-512g",
        "ci-24g",
    ]
    return {n: plan(load_profile(n)) for n in names}


def test_h200_runs_native_int4_full_context(plans, kimi):
    p = plans["h200x8"]
    c = p.chosen_candidate
    assert (c.engine, c.variant, c.status, c.max_model_len) == ("vllm", "int4", RUNNABLE, FULL)
    assert (c.tensor_parallel, c.nodes, c.gpus_per_node) == (8, 1, 8)
    # KV tokens = the KV GiB left per GPU / 70,272 bytes (replicated on every TP rank)
    assert c.kv_cache_tokens == pytest.approx(c.memory.kv_cache * GIB / 70_272, rel=1e-3)
    arch = architecture_for(kimi, kimi.variant("int4"))
    assert c.weights.computed_bytes == arch.total_bytes
    assert c.weights.local_dir == "/models/moonshotai/Kimi-K2.5"
    assert c.engine_args["enable_auto_tool_choice"] is True
    assert c.engine_args["mm_encoder_tp_mode"] == "data"
    assert c.engine_args["tool_call_parser"] == c.engine_args["reasoning_parser"] == "kimi_k2"
    assert c.engine_args["port"] == kimi.engines["vllm"]["port"]
    assert c.engine_args["trust_remote_code"] is True
    assert p.explanation and "vllm" in " ".join(p.explanation)


def test_h100_single_node_points_to_second_node(plans):
    p = plans["h100x8"]
    native = [c for c in p.candidates if c.engine in ("vllm", "sglang")]
    assert native and all(c.status != RUNNABLE for c in native)
    for c in native:
        assert c.remediation
    tp8 = p.candidate("vllm-int4-tp8")
    assert any("second node" in r for r in tp8.remediation)
    for c in p.candidates:
        if c.status == REDUCED:
            assert c.max_model_len % CONTEXT_STEP == 0 and MIN_CONTEXT <= c.max_model_len < FULL


def test_two_h100_nodes_run(plans):
    c = plans["h100x8-2nodes"].chosen_candidate
    assert c.status == RUNNABLE and c.nodes == 2 and c.variant == "int4"
    assert c.engine_args["multinode"]["backend"] == "mp"
    # PP splits the layers: each GPU caches only its stage's layers
    assert c.pipeline_parallel == 2


def test_4090_runs_gguf_with_experts_in_ram(plans):
    c = plans["rtx4090-256g"].chosen_candidate
    assert c.engine == "llama.cpp" and c.placement == "hybrid" and c.runs
    assert c.weights.format == "gguf"
    assert any("exps" in o and o.endswith("=CPU") for o in c.engine_args["override_tensor"])
    assert c.engine_args["ctx_size"] == c.max_model_len and c.engine_args["jinja"] is True


def test_kt_box_runs_ktransformers(plans):
    c = plans["kt-4x4090-768g"].chosen_candidate
    assert c.engine == "ktransformers" and c.runs and c.variant == "int4"
    kt = c.engine_args["kt"]
    assert kt["method"] == "RAWINT4" and kt["weight_path"] == c.weights.local_dir
    # 64 physical cores less one per GPU (4), as KTransformers advises; one thread pool per NUMA node
    assert kt["cpuinfer"] == 64 - 4 and kt["threadpool_count"] == 2
    # the guide keeps experts on the GPUs: the memory model sizes them beside the guide's 50,000-token pool
    assert kt["num_gpu_experts"] > 0 and kt["gpu_prefill_token_threshold"] > 0
    assert c.engine_args["max_total_tokens"] >= 50000 and c.max_model_len >= 50000


def test_cpu_box_runs_gguf_on_cpu(plans):
    c = plans["cpu-512g"].chosen_candidate
    assert c.engine == "llama.cpp" and c.placement == "cpu" and c.status == RUNNABLE
    assert c.memory.host <= 512


def test_ci_runs_nothing_and_says_what_would(plans):
    p = plans["ci-24g"]
    assert p.chosen is None
    assert all(c.status == INCOMPATIBLE and c.remediation for c in p.candidates)
    text = "\n".join(p.explanation)
    assert "GB RAM" in text and "GPUs" in text


def test_demo_on_ci(kimi):
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    c = p.chosen_candidate
    assert (c.engine, c.placement, c.status) == ("llama.cpp", "cpu", RUNNABLE)
    a = c.engine_args
    assert (a["threads"], a["parallel"], a["metrics"], a["jinja"]) == (1, 1, True, True)
    assert a["chat_template"] == "demo-hermes-think.jinja" and a["reasoning_format"] == "deepseek"
    demo = load_model("demo")
    # a base model's plain-text turn end stops llama-server for every client (modes.stop -> --reverse-prompt)
    assert a["reverse_prompt"] == demo.modes["stop"] and a["n_predict"] == demo.modes["default_max_tokens"]
    assert c.max_model_len == demo.expected["context_length"]
    assert c.weights.bytes == demo.expected["file_bytes"]


def test_ranking(plans, kimi):
    fid = {v.id: v.fidelity for v in kimi.variants}
    for p in plans.values():
        ranks = [c.rank for c in p.candidates]
        assert ranks == list(range(1, len(ranks) + 1))
        runs = [c.runs for c in p.candidates]
        assert runs == sorted(runs, reverse=True)
        running = [fid[c.variant] for c in p.candidates if c.runs]
        assert running == sorted(running, reverse=True)


def test_every_field_filled_and_round_trip(plans, tmp_path):
    p = plans["h100x8-2nodes"]
    for c in p.candidates:
        assert c.id and c.layout and c.time_to_ready_s >= 60
        assert c.weights.repo and c.weights.allow_patterns and c.weights.bytes > 0
        if c.status != INCOMPATIBLE:
            assert c.max_model_len > 0 and c.kv_cache_tokens >= c.max_model_len // max(
                1, c.decode_context_parallel
            )
        else:
            assert c.reasons and c.remediation
    path = save_plan(p, tmp_path / "plan.json")
    back = load_plan(path)
    assert back.chosen == p.chosen and [c.id for c in back.candidates] == [c.id for c in p.candidates]
    assert back.chosen_candidate.memory.terms == p.chosen_candidate.memory.terms


def test_time_to_ready_grows_with_weights(plans):
    c = plans["h200x8"].chosen_candidate
    # at least the read time at the profile's rate (assumed 1 GB/s when not measured)
    assert c.time_to_ready_s >= c.weights.bytes / (c.read_rate_gbps * 1e9)


def test_fp8_kv_doubles_tokens():
    bf16 = plan(load_profile("h200x8"), PlanRequest(engine="vllm", variant="int4")).candidate("vllm-int4-tp8")
    fp8 = plan(
        load_profile("h200x8"), PlanRequest(engine="vllm", variant="int4", kv_cache_dtype="fp8")
    ).candidate("vllm-int4-tp8")
    assert fp8.kv_cache_tokens == pytest.approx(2 * bf16.kv_cache_tokens, rel=1e-3)


def test_sglang_on_one_h100_node_follows_its_own_fraction():
    # SGLang 0.5.23's own --mem-fraction-static on an 80 GB card at TP8: 10 GiB floor, 512 + 1.5 x 8192 +
    # 2 x 512 + 1024 MiB reserved, then x 0.95 x (1 - 0.1 x (27 x 1152^2 / (24 x 1024^2) - 1)) for MoonViT
    p = plan(load_profile("h100x8"), PlanRequest(engine="sglang", context=16384))
    c = p.candidate("sglang-int4-tp8")
    mib = load_profile("h100x8").head.gpu_memory_mib
    reserved = max(512 + 1.5 * 8192 + 2 * 512 + 8 / 8 * 1024, 10 * 1024)
    vit = 0.95 * (1 - 0.1 * (27 * 1152**2 / (24 * 1024**2) - 1))
    fraction = round(round((mib - reserved) / mib, 3) * vit, 3)
    assert c.status == INCOMPATIBLE and c.gpu_memory_utilization == pytest.approx(fraction)
    assert any("second node" in r for r in c.remediation) and any("hybrid" in r for r in c.remediation)
    assert not c.tight
    # only `--tight` sets a fraction beyond SGLang's own, and says so; it ranks after every non-tight one
    t = plan(load_profile("h100x8"), PlanRequest(engine="sglang", context=16384, tight=True))
    tc = t.candidate("sglang-int4-tp8-tight")
    assert tc.tight and tc.runs and tc.gpu_memory_utilization > fraction
    assert "overrides SGLang's own" in tc.reasons[0] and "risk" in tc.reasons[0]
    assert all(not c.runs or c.tight for c in t.candidates[t.candidates.index(tc) :])


def test_filters():
    p = plan(profile_from_gpus("8xH200"), PlanRequest(engine="llama.cpp", variant="UD-Q2_K_XL"))
    assert {c.engine for c in p.candidates} == {"llama.cpp"} and {c.variant for c in p.candidates} == {
        "UD-Q2_K_XL"
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"engine": "foo"},
        {"variant": "nope"},
        {"context": 0},
        {"context": FULL + 1},
        {"gpu_memory_utilization": 0},
        {"gpu_memory_utilization": 1.01},
        {"kv_cache_dtype": "fp16"},
        {"tensor_parallel": 3},
        {"decode_context_parallel": 0},
        {"engine": "vllm", "variant": "UD-TQ1_0"},
        {"model": "nope"},
    ],
)
def test_bad_input(kwargs):
    with pytest.raises(InputError):
        plan(load_profile("h200x8"), PlanRequest(**kwargs))


def test_the_request_is_one_frozen_keyword_only_value():
    r = PlanRequest(engine="vllm", context=65536)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.engine = "sglang"  # type: ignore[misc]
    with pytest.raises(TypeError):
        PlanRequest("kimi-k2.5")  # type: ignore[misc]
    # checked when built, before any profile or model is read
    with pytest.raises(InputError, match="--context 0"):
        PlanRequest(context=0)
    # plan.json's request is the value, field for field
    assert plan(load_profile("h200x8"), r).request == dataclasses.asdict(r)
    assert plan(load_profile("h200x8")).request == dataclasses.asdict(PlanRequest())


# ---- property tests ----------------------------------------------------------------------------------


def _scaled(profile: HardwareProfile, gpu: float = 1.0, ram: float = 1.0) -> HardwareProfile:
    nodes = tuple(
        dataclasses.replace(n, gpu_memory_mib=int(n.gpu_memory_mib * gpu), ram_gib=n.ram_gib * ram)
        for n in profile.nodes
    )
    return dataclasses.replace(profile, nodes=nodes)


def _statuses(p):
    return {c.id: ORDER[c.status] for c in p.candidates}


PROFILES = st.sampled_from(
    ["h100x8", "h100x8-2nodes", "rtx4090-256g", "kt-4x4090-768g", "cpu-512g", "ci-24g"]
)
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(name=PROFILES, base=st.floats(0.5, 1.5), factor=st.floats(1.0, 2.5))
def test_more_gpu_memory_never_worse(name, base, factor):
    small = _scaled(load_profile(name), gpu=base)
    big = _scaled(small, gpu=factor)
    before, after = _statuses(plan(small)), _statuses(plan(big))
    for cid, status in before.items():
        assert after[cid] <= status, cid


@FEW
@given(name=PROFILES, base=st.floats(0.1, 1.5), factor=st.floats(1.0, 4.0))
def test_more_ram_never_worse(name, base, factor):
    small = _scaled(load_profile(name), ram=base)
    big = _scaled(small, ram=factor)
    before, after = _statuses(plan(small)), _statuses(plan(big))
    for cid, status in before.items():
        assert after[cid] <= status, cid


@FEW
@given(name=PROFILES, short=st.integers(1, FULL), longer=st.integers(0, FULL))
def test_longer_context_never_needs_less(name, short, longer):
    long_ctx = min(FULL, short + longer)
    profile = load_profile(name)
    a, b = plan(profile, PlanRequest(context=short)), plan(profile, PlanRequest(context=long_ctx))
    sa, sb = _statuses(a), _statuses(b)
    for cid in sa:
        assert sa[cid] <= sb[cid], cid
        ca, cb = a.candidate(cid), b.candidate(cid)
        if ca.engine == "llama.cpp" and ca.runs and cb.runs:
            # llama.cpp allocates the context it is given: more tokens, more KV memory
            assert cb.memory.kv_cache >= ca.memory.kv_cache and cb.memory.host >= ca.memory.host


def test_smaller_batch_settings_are_written_when_used():
    # with --tight on 80 GB GPUs the plan falls back to SGLang's 24 GB-class settings and must then pass
    # them to the engine, matching the memory it reserved
    c = plan(load_profile("h100x8"), PlanRequest(engine="sglang", tight=True)).candidate(
        "sglang-int4-tp8-tight"
    )
    assert c.runs and c.tight
    args, terms = c.engine_args, c.memory.terms
    assert terms["activation_reserve"] == pytest.approx(
        1.5 * max(args["chunked_prefill_size"], 2048) / 1024, abs=1e-3
    )
    assert terms["cuda_graph_reserve"] == pytest.approx(2 * args["cuda_graph_max_bs"] / 1024, abs=1e-3)
    assert any("the plan sets" in r for r in c.reasons)


def test_demo_on_vllm_cpu():
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo", engine="vllm"))
    c = p.chosen_candidate
    demo = load_model("demo")
    arch = architecture_for(demo, demo.variant("hf-bf16"))
    a = c.engine_args
    assert (c.variant, c.placement, c.status, c.gpus_per_node) == ("hf-bf16", "cpu", RUNNABLE, 0)
    assert (a["device"], a["enforce_eager"], a["language_model_only"]) == ("cpu", True, False)
    # the KV space is whole GiB, enough for the full context: ceil(32,768 x 18,432 B / 1 GiB)
    per_token = arch.kv_bytes_per_token("bf16")
    need = -(-demo.expected["context_length"] * per_token // GIB)
    assert a["cpu_kvcache_space_gib"] == max(need, demo.engines["vllm"]["kvcache_space_gib"])
    assert c.kv_cache_tokens == a["cpu_kvcache_space_gib"] * GIB // per_token
    # the converted checkpoint holds the GGUF's parameters in bfloat16
    assert c.weights.computed_bytes == arch.total_params * 2
    assert c.memory.host == pytest.approx(
        arch.total_bytes / GIB + a["cpu_kvcache_space_gib"] + c.memory.terms["host_engine_processes"],
        abs=1e-3,
    )
    # on the default demo plan llama-server (the GGUF's own weights) ranks first
    assert plan(load_profile("ci-24g"), PlanRequest(model="demo")).chosen_candidate.engine == "llama.cpp"


def test_decode_context_parallel():
    two = plan(load_profile("h200x8"), PlanRequest(engine="vllm", decode_context_parallel=2)).candidate(
        "vllm-int4-tp8"
    )
    one = plan(load_profile("h200x8"), PlanRequest(engine="vllm")).candidate("vllm-int4-tp8")
    assert two.decode_context_parallel == 2
    assert two.kv_cache_tokens == pytest.approx(2 * one.kv_cache_tokens, rel=1e-3)
    bad = plan(load_profile("h200x8"), PlanRequest(engine="vllm", decode_context_parallel=3)).candidate(
        "vllm-int4-tp8"
    )
    assert bad.status == INCOMPATIBLE and "must divide TP 8" in bad.reasons[0]


def test_gpu_memory_utilization_sets_the_budget():
    low = plan(load_profile("h200x8"), PlanRequest(engine="vllm", gpu_memory_utilization=0.8)).candidate(
        "vllm-int4-tp8"
    )
    high = plan(load_profile("h200x8"), PlanRequest(engine="vllm", gpu_memory_utilization=0.95)).candidate(
        "vllm-int4-tp8"
    )
    assert (low.gpu_memory_utilization, high.gpu_memory_utilization) == (0.8, 0.95)
    # the same weights and overheads, so the extra budget all goes to the KV cache
    extra = (high.memory.budget - low.memory.budget) * GIB
    assert (high.kv_cache_tokens - low.kv_cache_tokens) * 70_272 == pytest.approx(extra, rel=1e-3)


# ---- llama.cpp over RPC (a GGUF over several CPU nodes' RAM) -----------------------------------------


def _cpu_nodes(tmp_path, ram_gib: float = 24, cores: int = 2, count: int = 2) -> HardwareProfile:
    addresses = [f"10.213.0.{i}" for i in range(1, count + 1)]
    return load_profile(
        write_cpu_profile(tmp_path / f"cpu{count}x{ram_gib:g}.yaml", addresses, ram_gib, cores)
    )


@pytest.mark.parametrize(
    ("layers", "ngl", "split"),
    [(18, 9, [22.0]), (61, 30, [1.0, 3.0]), (61, 62, [2.0, 1.0, 1.0]), (5, 0, [1.0]), (7, 3, [0.3, 0.7])],
)
def test_layer_devices_follow_n_gpu_layers_and_the_split(layers, ngl, split):
    devices = llama_layer_devices(layers, ngl, split)
    units = layers + 1
    assert len(devices) == units
    # the first layers stay on the local CPU: exactly units - ngl of them
    cpu = max(units - ngl, 0)
    assert devices[:cpu] == [-1] * cpu and -1 not in devices[cpu:]
    # the rest go to the devices in order, each a contiguous run of about its fraction of the offloaded ones
    assert devices[cpu:] == sorted(devices[cpu:])
    offloaded = units - cpu
    for d, w in enumerate(split):
        assert abs(devices.count(d) - offloaded * w / sum(split)) <= 1


def test_rpc_split_weights_the_layers_by_usable_ram():
    usable = [40.0, 120.0]
    ngl, split = rpc_split(61, usable)
    assert split == usable[1:]
    # 62 units (61 layers + output): the head keeps its share of them, the worker takes the rest
    assert 62 - ngl == round(62 * usable[0] / sum(usable))


def test_demo_on_two_cpu_nodes_with_nodes_2_runs_over_rpc(tmp_path):
    profile = _cpu_nodes(tmp_path)
    demo = load_model("demo")
    p = plan(profile, PlanRequest(model="demo", nodes=2))
    assert {c.nodes for c in p.candidates} == {2}
    c = p.chosen_candidate
    variant = c.variant
    assert (c.id, c.placement, c.status, c.layout) == (
        f"llama.cpp-{variant}-rpc2",
        "rpc",
        RUNNABLE,
        "RPC over 2 nodes",
    )
    assert c.max_model_len == demo.expected["context_length"]
    a = c.engine_args
    worker = profile.nodes[1]
    assert a["rpc_servers"] == [f"{worker.address}:50052"] and a["multinode"] == {
        "backend": "rpc",
        "rpc_port": 50052,
    }
    assert a["tensor_split"] == [round(host_available(worker), 2)]
    assert a["threads"] == 1 and a["rpc_threads"] == [1]  # the demo's one thread, on every node
    arch = architecture_for(demo, demo.variant(variant))
    devices = llama_layer_devices(arch.num_layers, a["n_gpu_layers"], a["tensor_split"])
    # n_gpu_layers = the layers (counting the output layer) on the RPC device
    assert a["n_gpu_layers"] == sum(1 for d in devices if d == 0)
    head_layers = devices[: arch.num_layers].count(-1)
    worker_layers = devices[: arch.num_layers].count(0)
    assert head_layers + worker_layers == arch.num_layers
    # equal nodes: the head keeps half of the layers + output, rounded
    assert head_layers == round((arch.num_layers + 1) / 2)
    t = c.memory.terms
    per_layer = {g.name: g.bytes_per_layer for g in arch.groups if g.layers}
    stack = sum(per_layer.values())
    embed = next(g.bytes for g in arch.groups if g.name == "embed")
    last = sum(g.bytes for g in arch.groups if g.stage == "last")
    tied = 0 if any(g.name == "lm_head" for g in arch.groups) else embed
    assert t["host_node1_weights"] == pytest.approx((head_layers * stack + embed) / GIB, abs=2e-3)
    assert t["host_node2_weights"] == pytest.approx((worker_layers * stack + last + tied) / GIB, abs=2e-3)
    # the shares hold the whole model (and, with tied embeddings, one more copy of token_embd for the output)
    assert (t["host_node1_weights"] + t["host_node2_weights"]) * GIB == pytest.approx(
        arch.total_bytes + tied, abs=0.005 * GIB
    )
    kv_layer = c.max_model_len * arch.kv_values_per_layer * 2  # F16 cache
    assert t["host_node1_kv_cache"] == pytest.approx(head_layers * kv_layer / GIB, abs=2e-3)
    assert t["host_node2_kv_cache"] == pytest.approx(worker_layers * kv_layer / GIB, abs=2e-3)
    for node in ("node1", "node2"):
        total = sum(
            t[f"host_{node}_{k}"] for k in ("weights", "kv_cache", "compute_buffer", "engine_process")
        )
        assert total <= host_available(profile.nodes[0])
    assert c.memory.host == pytest.approx(
        max(sum(v for k, v in t.items() if k.startswith(f"host_{n}_")) for n in ("node1", "node2")), abs=2e-3
    )
    assert any("RPC" in line for line in p.explanation)


def test_rpc_ranks_after_every_single_node_candidate_that_runs(tmp_path):
    p = plan(_cpu_nodes(tmp_path), PlanRequest(model="demo"))
    kinds = [(c.runs, c.placement == "rpc") for c in p.candidates]
    assert kinds == sorted(kinds, key=lambda k: (not k[0], k[1]))
    assert p.chosen_candidate.nodes == 1 and any(c.placement == "rpc" and c.runs for c in p.candidates)


def test_kimi_gguf_over_two_nodes_when_no_single_node_fits(tmp_path):
    kimi = load_model("kimi-k2.5")
    # nodes with RAM for half of the smallest GGUF's weights + a little: no single node holds it, two do
    smallest = min((v for v in kimi.variants if v.format == "gguf"), key=lambda v: v.file_bytes)
    arch = architecture_for(kimi, smallest)
    ram = math.ceil((arch.total_bytes / 2 / GIB + 16) / (1 - 0.05))
    profile = _cpu_nodes(tmp_path, ram_gib=ram, cores=32)
    p = plan(profile, PlanRequest(engine="llama.cpp", variant=smallest.id))
    single = p.candidate(f"llama.cpp-{smallest.id}-cpu")
    assert single.status == INCOMPATIBLE
    assert "llama.cpp RPC over 2 nodes: plan --nodes 2" in single.remediation
    c = p.chosen_candidate
    assert c.id == f"llama.cpp-{smallest.id}-rpc2" and c.runs
    assert c.engine_args["threads"] == 32 and c.engine_args["rpc_threads"] == [32]


def test_rpc_names_the_node_that_runs_short(tmp_path):
    p = plan(_cpu_nodes(tmp_path), PlanRequest(engine="llama.cpp", nodes=2))
    assert p.chosen is None
    for c in p.candidates:
        assert c.placement == "rpc" and c.status == INCOMPATIBLE
        assert any("node1" in r and "GiB short" in r for r in c.reasons), c.reasons
        assert any(r.startswith(">= ") and "GB RAM on node" in r for r in c.remediation)


def test_nodes_filter_and_bad_values(tmp_path):
    profile = _cpu_nodes(tmp_path)
    assert {c.nodes for c in plan(profile, PlanRequest(model="demo", nodes=1)).candidates} == {1}
    with pytest.raises(InputError, match="--nodes 3: the profile has 2 nodes"):
        plan(profile, PlanRequest(model="demo", nodes=3))
    with pytest.raises(InputError, match="--nodes 0"):
        plan(profile, PlanRequest(model="demo", nodes=0))
    # GPU profiles get no RPC layout (it sizes host RAM only); --nodes 2 keeps their multi-node layouts
    gpu = plan(load_profile("h100x8-2nodes"), PlanRequest(nodes=2))
    assert gpu.candidates and all(c.nodes == 2 and c.placement != "rpc" for c in gpu.candidates)


def _two_node_cpu(ram: float) -> HardwareProfile:
    base = load_profile("cpu-512g")
    head = dataclasses.replace(base.head, ram_gib=ram)
    worker = dataclasses.replace(head, name="cpu1", address="192.0.2.7")
    return dataclasses.replace(base, name="cpu-2nodes", nodes=(head, worker))


@FEW
@given(
    ram=st.floats(64, 600),
    factor=st.floats(1.0, 3.0),
    short=st.integers(1, FULL),
    longer=st.integers(0, FULL),
)
def test_rpc_more_ram_never_worse_longer_context_never_needs_less(ram, factor, short, longer):
    small, big = _two_node_cpu(ram), _two_node_cpu(ram * factor)
    before, after = (
        _statuses(plan(small, PlanRequest(engine="llama.cpp"))),
        _statuses(plan(big, PlanRequest(engine="llama.cpp"))),
    )
    for cid, status in before.items():
        assert after[cid] <= status, cid
    a = plan(small, PlanRequest(engine="llama.cpp", nodes=2, context=short))
    b = plan(small, PlanRequest(engine="llama.cpp", nodes=2, context=min(FULL, short + longer)))
    for c in a.candidates:
        assert ORDER[c.status] <= ORDER[b.candidate(c.id).status], c.id
