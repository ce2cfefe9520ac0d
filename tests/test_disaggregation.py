"""Prefill/decode (xPyD) fleets: the planner's options, the split it picks, plan.json, and the CLI.

The figures are the roofline's (deploy/planning/roofline.py) at the efficiency fitted to the published
points; the tests check the split against the same roofline computed here from the architecture and the
GPU, and properties that follow from it (a prefill-heavy workload takes more prefill nodes), never a number
copied from a run.
"""

from __future__ import annotations

import json

import pytest

from deploy.catalog import load_model
from deploy.cli import main
from deploy.errors import InputError, PlanError
from deploy.hardware.profiles import load_profile, profile_from_gpus
from deploy.planning import capacity_points as published
from deploy.planning.architecture import architecture_for
from deploy.planning.capacity import setup_of
from deploy.planning.contract import plan_from_dict
from deploy.planning.disaggregation import AUTO_MARGIN, DEFAULT_ITL_S, MIN_NODES
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.planning.roofline import at_itl, max_batch, prefill_seconds

PROFILE = "h200x8-4nodes"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _split(engine: str, workload: str = "chat", **kw):
    return plan(
        load_profile(PROFILE), PlanRequest(engine=engine, workload=workload, fleet_mode="disaggregated", **kw)
    )


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_the_four_node_h200_profile_offers_a_ranked_split_with_its_reason(engine: str) -> None:
    p = plan(load_profile(PROFILE), PlanRequest(engine=engine))
    options = p.fleet.options
    assert [o["rank"] for o in options] == list(range(1, len(options) + 1))
    per_gpu = [o["output_tok_s_per_gpu"] for o in options]
    assert per_gpu == sorted(per_gpu, reverse=True)
    splits = [o for o in options if o["mode"] == "disaggregated"]
    assert splits and all(o["prefill"] >= 1 and o["decode"] >= 1 for o in splits)
    for o in splits:
        assert o["prefill"] + o["decode"] == len(load_profile(PROFILE).nodes)
        assert o["low"] < o["output_tok_s_per_gpu"] < o["high"] and o["source"] == "modelled"
        assert "prefill instance" in o["reason"] and "decode instance" in o["reason"]
    assert any(o["mode"] == "aggregated" for o in options)


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_the_split_serves_the_most_the_roofline_allows(engine: str) -> None:
    """x prefill + (N - x) decode instances: the planner's x maximises min(x * prefill, (N - x) * decode),
    each rate the roofline's for the chosen candidates on this GPU at the default ITL."""
    for workload in ("chat", "agentic", "long"):
        p = _split(engine, workload)
        split = p.fleet.disaggregation
        pre, dec = p.candidate(split["prefill"]["candidate"]), p.candidate(split["decode"]["candidate"])
        m = load_model("kimi-k2.5")
        arch = architecture_for(m, m.variant(pre.variant))
        rates = published.gpu_rates("H200")
        eff = published.bundled_fit().efficiency
        shape = PlanRequest(workload=workload).workload_shape().shape
        prefill = 1.0 / prefill_seconds(
            arch, setup_of(pre, "H200"), shape, rates["gpu_tflops"], rates["prefill_efficiency"]
        )
        decode = at_itl(arch, setup_of(dec, "H200", decode_only=True), shape, DEFAULT_ITL_S, eff, **rates)
        n = split["prefill"]["instances"] + split["decode"]["instances"]
        served = {x: min(x * prefill, (n - x) * decode["requests_s"]) for x in range(1, n)}
        assert served[split["prefill"]["instances"]] == max(served.values()), (workload, served)
        per_gpu = served[split["prefill"]["instances"]] * shape.osl / (n * pre.nodes * pre.gpus_per_node)
        assert split["predicted"]["output_tok_s_per_gpu"] == pytest.approx(per_gpu, rel=0.01)


def test_a_prefill_heavy_workload_takes_more_prefill_nodes() -> None:
    """LMSYS ran Kimi-K2 at ISL 2000 / OSL 100 with 4 prefill nodes to 12 decode: long prompts and short
    answers shift nodes to prefill, long answers to decode."""
    profile = profile_from_gpus("16x8xH200")

    def prefill_share(isl: int, osl: int) -> float:
        req = PlanRequest(engine="sglang", isl=isl, osl=osl, fleet_mode="disaggregated")
        split = plan(profile, req).fleet.disaggregation
        return split["prefill"]["instances"] / (split["prefill"]["instances"] + split["decode"]["instances"])

    assert prefill_share(65536, 100) > prefill_share(2000, 100) >= prefill_share(1024, 4096)


def test_auto_takes_the_split_where_it_wins_and_every_node_names_rdma() -> None:
    long = plan(load_profile(PROFILE), PlanRequest(engine="sglang", workload="long"))
    best = long.fleet.options[0]
    agg = next(o for o in long.fleet.options if o["mode"] == "aggregated")
    if best["mode"] == "disaggregated" and best["output_tok_s_per_gpu"] >= agg["output_tok_s_per_gpu"] * (
        1 + AUTO_MARGIN
    ):
        assert long.fleet.mode == "disaggregated"
        assert best["label"] in long.fleet.reason
    else:
        assert long.fleet.mode == "aggregated"
    # the same hardware from --gpus names no RDMA device: auto stays aggregated and says why
    hypothetical = plan(profile_from_gpus("4x8xH200"), PlanRequest(engine="sglang", workload="long"))
    assert hypothetical.fleet.mode == "aggregated"
    if long.fleet.mode == "disaggregated":
        assert "RDMA devices on every node" in hypothetical.fleet.reason
    assert plan(load_profile(PROFILE), PlanRequest(engine="sglang", fleet_mode="aggregated")).fleet.mode == (
        "aggregated"
    )


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_each_role_runs_its_candidate_with_the_engines_role_settings(engine: str) -> None:
    p = _split(engine, "long")
    f = p.fleet
    roles = [r.role for r in f.replicas]
    split = f.disaggregation
    assert roles == ["prefill"] * split["prefill"]["instances"] + ["decode"] * split["decode"]["instances"]
    assert len({n for r in f.replicas for n in r.nodes}) == len(f.replicas) * p.chosen_candidate.nodes
    assert split["rdma_devices"] == list(load_profile(PROFILE).nodes[0].network["rdma_devices"])
    assert f.router["pd"]["prefill_policy"] and f.router["pd"]["decode_policy"]
    decode = p.candidate(split["decode"]["candidate"])
    m = load_model("kimi-k2.5")
    kv_batch = max_batch(
        architecture_for(m, m.variant(decode.variant)),
        setup_of(decode, "H200", decode_only=True),
        PlanRequest(workload="long").workload_shape().shape,
    )
    args = split["decode"]["engine_args"]
    if engine == "sglang":
        assert f.router["pd"]["kv_connector"] is None and split["bootstrap_port"]
        assert split["prefill"]["engine_args"]["disaggregation_mode"] == "prefill"
        assert (
            args["disaggregation_mode"] == "decode" and args["disaggregation_transfer_backend"] == "mooncake"
        )
        assert args["disaggregation_ib_device"] == ",".join(split["rdma_devices"])
        assert args["max_running_requests"] == kv_batch
    else:
        assert f.router["pd"]["kv_connector"] == "nixl" and split["side_channel_port"]
        assert args["kv_transfer_config"]["kv_connector"] == "NixlConnector"
        assert args["max_num_seqs"] == kv_batch
    # expert parallelism on decode rebalances its experts
    assert args["enable_eplb"] == decode.expert_parallel


def test_a_split_round_trips_through_plan_json_and_a_bad_edit_is_refused() -> None:
    p = _split("sglang", "long")
    data = json.loads(json.dumps(p.to_dict()))
    again = plan_from_dict(data, "plan.json")
    assert again.fleet.mode == "disaggregated"
    assert [r.role for r in again.fleet.replicas] == [r.role for r in p.fleet.replicas]
    bad = json.loads(json.dumps(data))
    bad["fleet"]["disaggregation"]["decode"]["instances"] += 1
    with pytest.raises(PlanError, match="decode replica"):
        plan_from_dict(bad, "plan.json")
    bad = json.loads(json.dumps(data))
    bad["fleet"]["disaggregation"]["prefill"]["candidate"] = "no-such"
    with pytest.raises(PlanError, match="not a candidate"):
        plan_from_dict(bad, "plan.json")
    bad = json.loads(json.dumps(data))
    bad["fleet"]["mode"] = "aggregated"
    with pytest.raises(PlanError, match="aggregated fleet has no roles"):
        plan_from_dict(bad, "plan.json")
    bad = json.loads(json.dumps(data))
    bad["fleet"]["disaggregation"]["decode"]["engine_args"]["disaggregation_ib_device"] = "mlx5_0;reboot"
    with pytest.raises(PlanError):
        plan_from_dict(bad, "plan.json")


def test_where_there_is_no_split_a_request_for_one_gets_one_line() -> None:
    with pytest.raises(InputError, match=f"{MIN_NODES}\\+ nodes"):
        plan(profile_from_gpus("2x8xH200"), PlanRequest(engine="sglang", fleet_mode="disaggregated"))
    with pytest.raises(InputError, match="no prefill/decode mode"):
        plan(profile_from_gpus("4x8xH200"), PlanRequest(engine="llama.cpp", fleet_mode="disaggregated"))
    with pytest.raises(InputError, match="moves KV with nixl"):
        plan(
            load_profile(PROFILE),
            PlanRequest(engine="vllm", fleet_mode="disaggregated", transfer_backend="mooncake"),
        )
    with pytest.raises(InputError, match="--replicas"):
        plan(load_profile(PROFILE), PlanRequest(engine="sglang", fleet_mode="disaggregated", replicas=2))
    for bad in (dict(isl=100), dict(isl=0, osl=10), dict(workload="batch"), dict(fleet_mode="split")):
        with pytest.raises(InputError):
            PlanRequest(**bad)


def test_the_cli_prints_the_options_and_writes_the_split(capsys, tmp_path) -> None:
    out_file = tmp_path / "plan.json"
    code, out, err = run(
        capsys,
        "plan",
        "--hardware",
        PROFILE,
        "--engine",
        "sglang",
        "--fleet-mode",
        "disaggregated",
        "--isl",
        "2000",
        "--osl",
        "100",
        "--transfer-backend",
        "nixl",
        "-o",
        str(out_file),
    )
    assert code == 0, err
    assert "Fleet options (2000/100 tokens" in out and "tok/s per GPU" in out
    written = json.loads(out_file.read_text())
    assert written["fleet"]["mode"] == "disaggregated"
    assert written["fleet"]["disaggregation"]["transfer_backend"] == "nixl"
    assert written["request"]["isl"] == 2000 and written["request"]["fleet_mode"] == "disaggregated"
    code, out, err = run(capsys, "plan", "--gpus", "2x8xH200", "--fleet-mode", "disaggregated")
    assert code == 2 and "error:" in err and "Traceback" not in err + out
    code, out, err = run(capsys, "plan", "--gpus", "4x8xH200", "--isl", "2000")
    assert code == 2 and "--osl" in err


def test_make_plan_passes_the_fleet_mode_and_workload() -> None:
    """`make plan FLEET_MODE=... WORKLOAD=...` hands both to `kimi-deploy plan` (make -n: not run)."""
    import subprocess

    from deploy import constants

    proc = subprocess.run(
        [
            "make",
            "-n",
            "plan",
            f"HARDWARE=hardware/{PROFILE}.yaml",
            "FLEET_MODE=disaggregated",
            "WORKLOAD=long",
        ],
        cwd=constants.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        f"plan --hardware hardware/{PROFILE}.yaml --fleet-mode disaggregated --workload long -o"
        in proc.stdout
    )
