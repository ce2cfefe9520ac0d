"""Launches as the engines' current guides run them (issue 24): hardware facts and node shape, honest
hypothetical plans, sampling defaults on every engine, the speculative draft, NVFP4, systemd limits.

Each test names the guide or fact its rule comes from; expected values are read from the GPU table, the
catalog and the plan, never typed in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.catalog import load_model
from deploy.hardware.profiles import load_gpu_table, load_profile, profile_from_gpus
from deploy.planning.contract import RUNNABLE
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving.argv import Endpoint, node_commands

ROOT = Path(__file__).resolve().parent.parent


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


# ------------------------------------------------------------------------------- hypothetical plans


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, timeout=300
    )


def _rendered_texts(out: Path) -> dict[str, str]:
    cur = out / "current"
    return {str(p.relative_to(cur)): p.read_text() for p in cur.rglob("*") if p.is_file()}


def test_a_multinode_plan_from_gpus_is_refused_with_the_missing_facts(tmp_path: Path) -> None:
    """A --gpus plan has no node addresses or interfaces: the ranks' --master-addr and NCCL/Gloo's interface
    would be guesses (vLLM's multi-node guide: the head's reachable address, NCCL/GLOO_SOCKET_IFNAME)."""
    plan_path = tmp_path / "plan.json"
    assert _cli("plan", "--gpus", "16xH200", "--nodes", "2", "-o", str(plan_path)).returncode == 0
    chosen = json.loads(plan_path.read_text())["chosen"]
    res = _cli("render", "--plan", str(plan_path), "--out", str(tmp_path / "r"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr
    for fact in ("address", "network interface", "--hardware", "--gpus 16xH200", chosen):
        assert fact in lines[0]
    assert not (tmp_path / "r" / "current").exists()


@pytest.mark.parametrize("hardware", [["--gpus", "8xH200"], ["--hardware", "h200x8"]])
def test_a_single_node_render_names_no_interface_and_no_guessed_host(tmp_path: Path, hardware) -> None:
    """One node needs no interface name (NCCL and Gloo choose one); a named one that the host lacks fails
    Gloo's init, so a single-node launch sets none, and a --gpus plan writes no invented host."""
    plan_path = tmp_path / "plan.json"
    assert _cli("plan", *hardware, "-o", str(plan_path)).returncode == 0
    hw = json.loads(plan_path.read_text())["hardware"]
    res = _cli("render", "--plan", str(plan_path), "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    texts = _rendered_texts(tmp_path / "r")
    for name, text in texts.items():
        if name == "plan.json":
            continue
        assert "SOCKET_IFNAME" not in text, name
        for node in hw["nodes"]:
            if node.get("network_interface"):
                assert f"={node['network_interface']}" not in text, name
            if hw.get("hypothetical"):
                # a node's name may label a file or a metric, never stand where a host goes
                assert f"//{node['name']}" not in text and f"{node['name']}:" not in text, name
    assert hardware[0] != "--gpus" or hw.get("hypothetical") is True


# ---------------------------------------------------------------------------------- sampling defaults

#: where each engine takes a default sampling as JSON (vLLM 0.33.0 --override-generation-config; SGLang
#: 0.5.23 and sglang-kt 0.7.2 --preferred-sampling-params); llama-server takes --temp/--top-p/--min-p
SAMPLING_FLAG = {
    "vllm": "--override-generation-config",
    "sglang": "--preferred-sampling-params",
    "ktransformers": "--preferred-sampling-params",
}


def _runnable_launches(profile, **request):
    p = plan(profile, PlanRequest(**request))
    for cand in p.candidates:
        if cand.runs:
            yield p, cand, node_commands(p, cand, cand.weights.local_dir, Endpoint())


@pytest.mark.parametrize("hardware", ["h200x8", "h100x8-2nodes", "kt-4x4090-768g", "b200x8"])
def test_every_gpu_engine_serves_the_thinking_defaults(hardware: str, kimi) -> None:
    """Moonshot's card: thinking temperature 1.0, top_p 0.95 (catalog modes.sampling.thinking); a client that
    sends none must get them from every engine, not only from llama.cpp."""
    want = kimi.modes["sampling"]["thinking"]
    seen = set()
    for _p, cand, nodes in _runnable_launches(load_profile(hardware)):
        head = [str(x) for x in nodes[0].argv]
        if cand.engine == "llama.cpp":
            assert float(head[head.index("--temp") + 1]) == want["temperature"]
            assert float(head[head.index("--top-p") + 1]) == want["top_p"]
            continue
        flag = SAMPLING_FLAG[cand.engine]
        assert json.loads(head[head.index(flag) + 1]) == want, cand.id
        seen.add(cand.engine)
    assert seen, f"no vLLM/SGLang/KTransformers launch on {hardware}"


def test_instant_mode_sampling_is_documented_as_the_clients() -> None:
    text = (ROOT / "docs" / "reference" / "engines-and-variants.md").read_text()
    section = text.split("## Sampling defaults", 1)[1].split("\n## ", 1)[0]
    instant = load_model("kimi-k2.5").modes["sampling"]["instant"]["temperature"]
    assert f"{instant}" in section and "client" in section and "chat_template_kwargs" in section


# ---------------------------------------------------------------------------------- speculative draft


def test_the_draft_is_the_mla_one_with_its_own_sizes(kimi) -> None:
    """vLLM's Kimi-K2.5 recipe and SGLang's cookbook run lightseekorg/kimi-k2.5-eagle3-mla: one decoder layer
    with the target's MLA, so its KV per token is one layer of the target's latent (not 64 K/V heads / TP),
    and its weights hold a full-vocab embedding and lm_head (about 2.9e9 parameters, "~6 GB" published)."""
    spec = kimi.speculative["eagle3"]
    assert spec["draft_repo"] == "lightseekorg/kimi-k2.5-eagle3-mla"
    a = kimi.architecture
    latent = a["kv_lora_rank"] + a["qk_rope_head_dim"]
    assert spec["draft_kv_lora_rank"] + spec["draft_qk_rope_head_dim"] == latent
    embed_and_head = 2 * a["vocab_size"] * a["hidden_size"]
    assert embed_and_head < spec["draft_params"] < embed_and_head * 1.5
    assert 5.5e9 < spec["draft_params"] * 2 < 6.5e9
    base = plan(load_profile("h200x8"), PlanRequest(engine="vllm"))
    eagle = plan(load_profile("h200x8"), PlanRequest(engine="vllm", speculative="eagle3"))
    b = next(c for c in base.candidates if c.tensor_parallel == 8 and c.data_parallel <= 1)
    e = next(c for c in eagle.candidates if c.tensor_parallel == 8 and c.data_parallel <= 1)
    target = b.memory.kv_cache * 2**30 / b.kv_cache_tokens
    per_token = e.memory.kv_cache * 2**30 / e.kv_cache_tokens
    # one more layer's latent per token, whole on each rank: (L + 1) / L of the target's
    layers = a["num_hidden_layers"]
    assert per_token / target == pytest.approx((layers + spec["draft_layers"]) / layers, rel=2e-3)
    argv = [str(x) for x in node_commands(eagle, e, "/m", Endpoint())[0].argv]
    config = json.loads(argv[argv.index("--speculative-config") + 1])
    assert config["model"].endswith(spec["draft_repo"]) and config["method"] == "eagle3"


@pytest.mark.parametrize("gpu", ["H200", "B200", "B300", "GB200"])
def test_sglang_gets_the_draft_only_on_the_gpus_its_cookbook_lists(gpu: str, kimi) -> None:
    """SGLang's Kimi-K2.5 cookbook: "Speculative decoding is only supported on H200 and B300" (sgl-cookbook
    KimiK25ConfigGenerator, and docs/cookbook/autoregressive/Moonshotai/Kimi-K2.5.mdx in sgl-project/sglang);
    vLLM's recipe runs the draft on every GPU of the catalog's list. Elsewhere SGLang runs without it."""
    spec = kimi.speculative["eagle3"]
    only = spec["engine_gpus"]["sglang"]["gpus"]
    assert set(only) < set(spec["gpus"])
    for engine, listed in (("sglang", only), ("vllm", spec["gpus"])):
        p = plan(profile_from_gpus(f"8x{gpu}"), PlanRequest(engine=engine, speculative="eagle3"))
        cands = [c for c in p.candidates if c.engine == engine]
        assert cands, engine
        for c in cands:
            assert bool(c.engine_args.get("speculative")) == (gpu in listed), (engine, c.id)
            if c.runs and c.nodes == 1:
                argv = _argv(p, c)
                assert ("--speculative-algorithm" in argv or "--speculative-config" in argv) == (
                    gpu in listed
                )


# ---------------------------------------------------------------------------------------------- NVFP4


def _argv(p, cand) -> list[str]:
    return [str(x) for x in node_commands(p, cand, "/m", Endpoint())[0].argv]


def test_vllm_nvfp4_runs_the_recipes_fp8_kv_and_fp4_moe_kernels(kimi) -> None:
    """vLLM's Kimi-K2.5 NVFP4 recipe: --kv-cache-dtype fp8 and FlashInfer's FP4 MoE kernels
    (VLLM_USE_FLASHINFER_MOE_FP4=1, which the pinned vLLM 0.33.0 takes as --moe-backend); the plan sizes the
    KV pool for FP8, twice the tokens a BF16 cache would hold in the same memory."""
    p = plan(profile_from_gpus("8xB200"), PlanRequest(engine="vllm", variant="nvfp4"))
    tp8 = next(c for c in p.candidates if c.tensor_parallel == 8 and c.data_parallel <= 1)
    argv = _argv(p, tp8)
    assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
    assert argv[argv.index("--moe-backend") + 1] == kimi.variant("nvfp4").engine_args["vllm"]["moe_backend"]
    arch_kv = tp8.memory.kv_cache * 2**30 / tp8.kv_cache_tokens
    int4 = next(
        c
        for c in plan(profile_from_gpus("8xB200"), PlanRequest(engine="vllm", variant="int4")).candidates
        if c.tensor_parallel == 8 and c.data_parallel <= 1
    )
    assert int4.memory.kv_cache * 2**30 / int4.kv_cache_tokens == pytest.approx(2 * arch_kv, rel=1e-3)


@pytest.mark.parametrize("gpu", ["B200", "GB200", "B300"])
def test_sglang_nvfp4_only_where_its_cookbook_runs_it(gpu: str, kimi) -> None:
    only = kimi.variant("nvfp4").engine_gpus["sglang"]
    p = plan(profile_from_gpus(f"8x{gpu}"), PlanRequest(engine="sglang", variant="nvfp4"))
    for c in p.candidates:
        if gpu in only["gpus"]:
            if c.runs:
                argv = _argv(p, c)
                assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8_e4m3"
                assert "--attention-backend" in argv and "--quantization" in argv
        else:
            assert not c.runs and any(only["source"] in r for r in c.reasons), c.reasons
    assert gpu not in only["gpus"] or any(c.runs for c in p.candidates)


def test_sglang_dp_attention_uses_attn_dp_size() -> None:
    """SGLang 0.5.23 deprecates `--dp-size N --enable-dp-attention` for `--attn-dp-size N`; the
    KTransformers fork (sglang-kt 0.7.2) has only the old pair."""
    p = plan(load_profile("h200x8"), PlanRequest(engine="sglang"))
    dp = next(c for c in p.candidates if c.data_parallel > 1 and c.engine_args.get("enable_dp_attention"))
    argv = _argv(p, dp)
    assert argv[argv.index("--attn-dp-size") + 1] == str(dp.data_parallel)
    assert "--enable-dp-attention" not in argv and "--dp-size" not in argv
    assert int(argv[argv.index("--tp-size") + 1]) == dp.tensor_parallel * dp.data_parallel


@pytest.mark.slow
def test_the_guides_flags_pass_the_pinned_parsers() -> None:
    """The flags these rules add (sampling JSON, --attn-dp-size, --moe-backend, SGLang's NVFP4 backend and KV
    dtype on B300, the MLA draft) through the pinned engines' own parsers, on hardware no profile file has."""
    from deploy.engines import builds as engines
    from deploy.serving import parser_check

    batch = []
    for spec, req in [
        ("8xB300", PlanRequest(variant="nvfp4")),
        ("4xGB200", PlanRequest(variant="int4")),
        # H200: both engines' guides run the draft there (SGLang's cookbook: H200 and B300 only)
        ("8xH200", PlanRequest(variant="int4", speculative="eagle3")),
    ]:
        p = plan(profile_from_gpus(spec), req)
        for c in p.candidates:
            if c.runs and c.engine in parser_check.CHECKED:
                node = node_commands(p, c, c.weights.local_dir, Endpoint())[0]
                batch.append((f"{spec}/{c.id}", node.program, node.argv))
    assert any("8xB300/sglang-nvfp4" in label for label, _, _ in batch)
    python = engines.parser_python()
    assert python.is_file(), f"parser venv missing at {python}: run `make setup`"
    report = parser_check.check_argvs([(prog, argv) for _, prog, argv in batch], python=python)
    bad = [
        f"{label}: {r.summary()}" for (label, _, _), r in zip(batch, report.results, strict=True) if not r.ok
    ]
    assert not bad, bad


# -------------------------------------------------------------------------------------------- systemd


def _unit_sections(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections[current] = {}
        elif "=" in line and current:
            key, value = line.split("=", 1)
            sections[current][key] = value
    return sections


def _render_units(tmp_path: Path, *plan_args: str) -> tuple[list[dict[str, dict[str, str]]], list[str]]:
    plan_path = tmp_path / "plan.json"
    assert _cli("plan", *plan_args, "-o", str(plan_path)).returncode == 0
    data = json.loads(plan_path.read_text())
    cand = next(c for c in data["candidates"] if c["id"] == data["chosen"])
    weights = []
    if cand["weights"]["format"] == "gguf":
        # render needs only the shards' names (empty files laid out like the repo)
        folder = cand["weights"]["allow_patterns"][0].split("/")[0]
        shard = tmp_path / "w" / folder / f"Kimi-K2.5-{folder}-00001-of-00001.gguf"
        shard.parent.mkdir(parents=True)
        shard.touch()
        weights = ["--weights-dir", str(tmp_path / "w")]
    res = _cli("render", "--plan", str(plan_path), "--out", str(tmp_path / "r"), *weights)
    assert res.returncode == 0, res.stderr
    cur = tmp_path / "r" / "current"
    units = sorted(cur.glob("kimi-deploy-*.service"))
    launches = [(cur / u.name.replace("kimi-deploy-", "launch-").replace(".service", ".sh")) for u in units]
    return [_unit_sections(u.read_text()) for u in units], [p.read_text() for p in launches]


@pytest.mark.parametrize(
    "plan_args",
    [
        ("--hardware", "h200x8"),
        ("--hardware", "rtx4090-256g", "--engine", "llama.cpp"),
        ("--hardware", "h100x8-2nodes", "--nodes", "2", "--engine", "vllm"),
    ],
)
def test_units_stop_retrying_and_lock_memory_only_where_used(tmp_path: Path, plan_args) -> None:
    """systemd.unit(5): StartLimitBurst starts within StartLimitIntervalSec, then no more restarts, so a start
    that always fails does not reload 595 GB forever; the window must hold that many full start attempts.
    NoNewPrivileges: nothing the engines run needs setuid. LimitMEMLOCK=infinity only beside --mlock or a GPU
    engine (NCCL over InfiniBand registers pinned buffers); llama.cpp's mmap'd experts lock nothing."""
    units, launches = _render_units(tmp_path, *plan_args)
    assert units
    for unit, launch in zip(units, launches, strict=True):
        u, s = unit["Unit"], unit["Service"]
        burst, window = int(u["StartLimitBurst"]), int(u["StartLimitIntervalSec"])
        start, restart = int(s["TimeoutStartSec"]), int(s["RestartSec"])
        assert burst >= 2 and window >= burst * (start + restart)
        assert s["NoNewPrivileges"] == "yes" and s["Restart"] == "on-failure"
        gpu_engine = "llama-server" not in launch and "rpc-server" not in launch
        assert ("LimitMEMLOCK" in s) == ("--mlock" in launch or gpu_engine), launch[-400:]


# -------------------------------------------------------------------------------------- pins, catalog


def test_catalog_min_versions_agree_with_the_pins(tmp_path: Path) -> None:
    """deploy/pins.py: KTransformers' Kimi-K2.5 launch needs kt-kernel/sglang-kt 0.7.2 (the model and
    --kt-gpu-prefill-token-threshold); a catalog claiming an older minimum is refused, and the real one
    claims no less than that floor and no more than the pin."""
    from deploy import pins
    from deploy.constants import CATALOG_DIR
    from deploy.errors import CatalogError

    engines = load_model("kimi-k2.5").engines
    for name, floor in pins.ENGINE_MIN_VERSIONS.items():
        claimed = engines[name]["min_version"]
        assert _v(floor) <= _v(claimed) <= _v(pins.ENGINE_PINS[name])
    stale = (
        (CATALOG_DIR / "kimi-k2.5.yaml")
        .read_text()
        .replace(
            f'ktransformers: {{min_version: "{engines["ktransformers"]["min_version"]}"',
            'ktransformers: {min_version: "0.5.0"',
        )
    )
    (tmp_path / "kimi-k2.5.yaml").write_text(stale)
    with pytest.raises(CatalogError, match=r"min_version 0\.5\.0 is older than"):
        load_model("kimi-k2.5", catalog_dir=tmp_path)


def _v(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


# ---------------------------------------------------------------------------------------- throughput


def test_vllm_decode_context_parallel_is_a_ranked_candidate() -> None:
    """vLLM's Kimi-K2.5 recipe lists TP8 + DCP8 (8x the KV cache, +43% output tok/s on 8x H200): a
    candidate of its own with its trade-off stated, ranked after plain TP, not only a rescue."""
    p = plan(load_profile("h200x8"), PlanRequest(engine="vllm"))
    tp = next(c for c in p.candidates if c.tensor_parallel == 8 and c.decode_context_parallel == 1 and c.runs)
    dcp = next(c for c in p.candidates if c.decode_context_parallel == tp.tensor_parallel)
    assert dcp.runs and dcp.rank == tp.rank + 1 and p.chosen == tp.id
    assert dcp.kv_cache_tokens == pytest.approx(tp.kv_cache_tokens * dcp.decode_context_parallel, rel=0.01)
    assert "decode context parallel" in dcp.reasons[0] and "all-gathers" in dcp.reasons[0]
    argv = _argv(p, dcp)
    assert argv[argv.index("--decode-context-parallel-size") + 1] == str(dcp.decode_context_parallel)


def test_ktransformers_keeps_sglangs_reserve_not_the_guides_094() -> None:
    """KTransformers' guide runs 30 GPU experts at --mem-fraction-static 0.94 on 4x RTX 4090; SGLang's own
    rule keeps the activations and CUDA graphs outside the pool, which 0.94 does not leave room for."""
    req = PlanRequest(engine="ktransformers", gpu_memory_utilization=0.94)
    guide = plan(load_profile("kt-4x4090-768g"), req)
    (c,) = guide.candidates
    assert not c.runs and "0.94" in c.reasons[0] and "outside the pool" in c.reasons[0]
    ours = plan(load_profile("kt-4x4090-768g"), PlanRequest(engine="ktransformers")).candidates[0]
    total = ours.memory.total
    outside = total * (1 - ours.engine_args["mem_fraction_static"])
    assert ours.runs and ours.engine_args["kt"]["num_gpu_experts"] > 0
    assert outside >= ours.memory.terms["activation_reserve"] + ours.memory.terms["cuda_graph_reserve"]
    # and the reference says why the plan departs from the guide
    doc = (ROOT / "docs" / "reference" / "engines-and-variants.md").read_text()
    section = doc.split("## KTransformers (CPU/GPU hybrid)", 1)[1]
    assert "0.94" in section and f"runs {ours.engine_args['kt']['num_gpu_experts']} at" in section


# ------------------------------------------------------------------------------ multi-node restarts


def test_a_broken_group_reforms_or_stops_together(tmp_path: Path) -> None:
    """The procedure in docs/reference/engines-and-variants.md ("When a rank dies"): every vLLM rank times out
    of a collective at the same --distributed-timeout-seconds and restarts (Restart=on-failure); the units
    share one start-limit window that holds StartLimitBurst cycles of timeout + restart, so a group that
    cannot form stops on every node after the same number of tries."""
    units, launches = _render_units(
        tmp_path, "--hardware", "h100x8-2nodes", "--nodes", "2", "--engine", "vllm"
    )
    assert len(units) == 2
    timeouts = {int(sh.split("--distributed-timeout-seconds ", 1)[1].split()[0]) for sh in launches}
    (timeout,) = timeouts
    windows = {int(u["Unit"]["StartLimitIntervalSec"]) for u in units}
    (window,) = windows
    for u in units:
        burst, restart = int(u["Unit"]["StartLimitBurst"]), int(u["Service"]["RestartSec"])
        assert u["Service"]["Restart"] == "on-failure"
        assert burst * (timeout + restart) <= window
    # the head's launch script states the order the procedure uses
    head = next(sh for sh in launches if "--headless" not in sh)
    assert "Start every worker first" in head
    doc = (ROOT / "docs" / "reference" / "engines-and-variants.md").read_text()
    section = doc.split("### When a rank dies", 1)[1].split("\n## ", 1)[0]
    for step in ("--distributed-timeout-seconds", "Restart=on-failure", "systemctl reset-failed", "head"):
        assert step in section
