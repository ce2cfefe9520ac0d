"""`kimi-deploy capacity`: the leave-one-out fit on the published points, the order of sources (measured,
published, modelled), the fleet it sizes, and one clear line for bad input."""

from __future__ import annotations

import json
import math

import pytest

from deploy import constants
from deploy.calibration.bench_store import load_bench_records
from deploy.cli import main
from deploy.hardware.profiles import profile_from_gpus
from deploy.planning import capacity_points as cp
from deploy.planning.capacity import WORKLOADS, Load, Slo, capacity, replica_of
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "CALIBRATION_DIR", tmp_path / "calibration")
    return tmp_path / "calibration"


def test_each_point_alone_fixes_an_efficiency_that_reproduces_it():
    for p in cp.load_points():
        eff = cp.point_efficiency(p)
        assert 0 < eff < 1, p.id
        assert cp.predict_point(p, eff) == pytest.approx(p.output_tok_s_per_gpu, rel=0.02), p.id


def test_leave_one_out_errors_are_the_band_and_each_point_falls_in_it():
    points = cp.load_points()
    fit = cp.fit_efficiency(points)
    low, high = fit.band
    for p in points:
        others = [q for q in points if q.id != p.id]
        eff = math.exp(sum(math.log(cp.point_efficiency(q)) for q in others) / len(others))
        predicted = cp.predict_point(p, eff)
        err = predicted / p.output_tok_s_per_gpu - 1.0
        assert err == pytest.approx(fit.held_out[p.id], abs=1e-6)
        # reproduced within the stated band: the published figure lies in [v/(1+high), v/(1+low)]
        assert predicted / (1 + high) <= p.output_tok_s_per_gpu * (1 + 1e-9)
        assert p.output_tok_s_per_gpu <= predicted / (1 + low) * (1 + 1e-9)
    assert low == min(fit.held_out.values()) and high == max(fit.held_out.values())


def test_modelled_output_states_the_computed_band(capsys, store):
    code, out, err = run(
        capsys,
        "capacity",
        "--gpus",
        "8xH200",
        "--workload",
        "chat",
        "--users",
        "500",
        "--tokens-per-user",
        "20",
        "--gpu-hour-price",
        "3.5",
    )
    assert code == 0, err
    low, high = cp.bundled_fit().band
    assert "source MODELLED" in out and f"{low:+.0%}..{high:+.0%}" in out
    code, out, err = run(
        capsys,
        "capacity",
        "--gpus",
        "8xH200",
        "--workload",
        "chat",
        "--users",
        "500",
        "--tokens-per-user",
        "20",
        "--gpu-hour-price",
        "3.5",
        "--json",
    )
    doc = json.loads(out)
    per = doc["per_replica"]
    assert per["source"] == "modelled"
    for key in ("requests_s", "output_tok_s", "output_tok_s_per_gpu", "concurrency"):
        assert per[key]["low"] < per[key]["value"] < per[key]["high"], key
    assert doc["replicas"]["value"] == math.ceil(500 / per["concurrency"]["value"])
    assert doc["gpus"]["value"] == doc["replicas"]["value"] * 8
    assert doc["gpu_hours_month"]["value"] == doc["gpus"]["value"] * 730
    served = 500 * per["output_tok_s"]["value"] / per["concurrency"]["value"]
    assert doc["cost_per_million_output_tokens"]["value"] == pytest.approx(
        3.5 * doc["gpus"]["value"] * 1e6 / (served * 3600)
    )


def _k26_replica():
    p = plan(profile_from_gpus("8xH200"), PlanRequest(model="kimi-k2.6", engine="vllm", variant="int4"))
    return p, replica_of(p, p.chosen_candidate)


def test_a_published_point_is_used_only_under_its_conditions():
    _, r = _k26_replica()
    point = next(p for p in cp.load_points() if p.id == "dynamo-k2.6-chat")
    same = WORKLOADS["chat"].__class__(
        "chat", point.isl, point.osl, point.prefix_hit, "eagle3", point.acceptance
    )
    looser = Slo(tokens_per_user=point.tok_s_per_user * 0.9)
    cap = capacity(r, same, looser, Load(users=100), bench_records=[])
    assert cap.per_replica.source == "published" and "dynamo-k2.6-chat" in cap.per_replica.basis
    assert cap.per_replica.output_tok_s_per_gpu.value == pytest.approx(point.output_tok_s_per_gpu)
    assert cap.per_replica.output_tok_s.high >= cap.per_replica.output_tok_s.value
    stricter = Slo(tokens_per_user=point.tok_s_per_user * 1.1)
    assert capacity(r, same, stricter, Load(users=100), bench_records=[]).per_replica.source == "modelled"
    no_cache = same.__class__("chat", point.isl, point.osl, 0.0, "eagle3", point.acceptance)
    assert capacity(r, no_cache, looser, Load(users=100), bench_records=[]).per_replica.source == "modelled"
    with_ttft = Slo(ttft_p95_s=5.0, tokens_per_user=point.tok_s_per_user * 0.9)
    assert capacity(r, same, with_ttft, Load(users=100), bench_records=[]).per_replica.source == "modelled"


def _report(points):
    return {"points": [{"isl": 128, "osl": 32, "errors": 0, "requests": 8, **p} for p in points]}


def test_measured_points_come_first(capsys, store, tmp_path):
    p, r = _k26_replica()
    plan_file = tmp_path / "plan.json"
    save_plan(p, plan_file)
    bench = tmp_path / "bench.json"
    pts = [
        {
            "concurrency": c,
            "output_tokens_per_s": 40.0 * c**0.8,
            "requests_per_s": 40.0 * c**0.8 / 32,
            "ttft_ms": {"p95": 100.0 * c},
            "itl_ms": {"p95": 10.0 * c},
        }
        for c in (1, 4, 16)
    ]
    bench.write_text(json.dumps(_report(pts)))
    code, out, err = run(capsys, "calibrate", "import", str(bench), "--plan", str(plan_file))
    assert code == 0, err
    assert len(load_bench_records()) == 1
    code, out, err = run(
        capsys,
        "capacity",
        "--plan",
        str(plan_file),
        "--isl",
        "128",
        "--osl",
        "32",
        "--users",
        "100",
        "--itl-p95",
        "50ms",
        "--json",
    )
    assert code == 0, err
    per = json.loads(out)["per_replica"]
    assert per["source"] == "measured"
    assert per["concurrency"]["value"] == 4 and per["concurrency"]["high"] == 16  # 16 misses 50 ms
    assert per["output_tok_s"]["value"] == pytest.approx(pts[1]["output_tokens_per_s"])
    assert json.loads(out)["replicas"]["value"] == 25
    # another shape was not measured: the roofline answers, and says so
    code, out, err = run(capsys, "capacity", "--plan", str(plan_file), "--workload", "chat", "--users", "100")
    assert code == 0 and "source MODELLED" in out


def test_bench_store_rejects_a_report_without_served_points(capsys, store, tmp_path):
    p, _ = _k26_replica()
    plan_file = tmp_path / "plan.json"
    save_plan(p, plan_file)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_report([{"concurrency": 1, "output_tokens_per_s": 0, "requests_per_s": 0}])))
    code, out, err = run(capsys, "calibrate", "import", str(bench), "--plan", str(plan_file))
    assert code == 2 and "no point that served" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, words",
    [
        (["--users", "0"], "--users"),
        (["--users", "-3"], "--users"),
        (["--users", "2.5"], "whole number"),
        (["--users", "10", "--gpu-hour-price", "three"], "--gpu-hour-price"),
        (["--users", "10", "--gpu-hour-price", "nan"], "--gpu-hour-price"),
        (["--users", "10", "--itl-p95", "0.01ms"], "below what one token takes"),
        (["--users", "10", "--tokens-per-user", "100000"], "below what one token takes"),
        (["--users", "10", "--ttft-p95", "0.1ms"], "below what one"),
        (["--users", "10", "--itl-p95", "fast"], "--itl-p95"),
        ([], "--users U"),
        (["--users", "1", "--rate", "2"], "one of them"),
        (["--users", "1", "--isl", "100"], "--isl and --osl"),
        (["--users", "1", "--prefix-hit", "1"], "--prefix-hit"),
        (["--users", "1", "--speculative", "eagle3"], "--acceptance"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, store, args, words):
    code, out, err = run(capsys, "capacity", "--gpus", "8xH200", *args)
    assert code == 2, (out, err)
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_trace_sets_the_shape(capsys, store, tmp_path):
    trace = tmp_path / "trace.jsonl"
    trace.write_text(
        "\n".join(json.dumps({"input_length": i, "output_length": o}) for i, o in [(900, 90), (1100, 110)])
    )
    code, out, err = run(capsys, "capacity", "--gpus", "8xH200", "--trace", str(trace), "--users", "10")
    assert code == 0, err
    assert "1000/100 tokens" in out
    trace.write_text('{"input_length": "long"}\n')
    code, out, err = run(capsys, "capacity", "--gpus", "8xH200", "--trace", str(trace), "--users", "10")
    assert code == 2 and err.count("\n") == 1


def test_plan_users_sets_the_replicas_from_capacity(capsys, store, tmp_path):
    code, out, err = run(
        capsys, "capacity", "--gpus", "4x8xH200", "--users", "60", "--tokens-per-user", "20", "--json"
    )
    assert code == 0, err
    wanted = json.loads(out)["replicas"]["value"]
    assert 1 < wanted <= 4  # the check below needs a count the profile holds
    out_file = tmp_path / "plan.json"
    code, out, err = run(
        capsys, "plan", "--gpus", "4x8xH200", "--users", "60", "--tokens-per-user", "20", "-o", str(out_file)
    )
    assert code == 0, err
    assert f"capacity: {wanted} replica(s) for 60 users (modelled" in err
    from deploy.planning.contract import load_plan

    assert len(load_plan(out_file).fleet.replicas) == wanted
    code, out, err = run(capsys, "plan", "--gpus", "4x8xH200", "--users", "60", "--replicas", "2")
    assert code == 2 and "not both" in err
    code, out, err = run(capsys, "plan", "--gpus", "4x8xH200", "--tokens-per-user", "20")
    assert code == 2 and "--users" in err
    # without --users an ITL ranks the fleet options (deploy.planning.disaggregation) and sizes nothing
    code, out, err = run(capsys, "plan", "--gpus", "4x8xH200", "--itl-p95", "80ms", "--json")
    assert code == 0, err
    fleet = json.loads(out)["fleet"]
    assert {o["itl_s"] for o in fleet["options"]} == {0.08} and len(fleet["replicas"]) == 4


def test_a_rate_sizes_by_requests_per_second(capsys, store):
    code, out, err = run(
        capsys,
        "capacity",
        "--gpus",
        "8xH200",
        "--workload",
        "chat",
        "--rate",
        "12.5",
        "--itl-p95",
        "60ms",
        "--gpu-hour-price",
        "2",
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == doc["per_replica"]["source"] == "modelled"
    assert doc["replica"]["gpu"] == "H200" and doc["replica"]["gpus"] == 8
    per = doc["per_replica"]
    assert doc["replicas"]["value"] == math.ceil(12.5 / per["requests_s"]["value"])
    assert doc["replicas"]["low"] <= doc["replicas"]["value"] <= doc["replicas"]["high"]
    served = 12.5 * 1024
    assert doc["cost_per_million_output_tokens"]["value"] == pytest.approx(
        2 * doc["gpus"]["value"] * 1e6 / (served * 3600)
    )


def test_a_cpu_layout_without_a_measurement_says_how_to_get_one(capsys, store):
    code, out, err = run(capsys, "capacity", "--hardware", "cpu-512g", "--users", "4")
    assert code == 2 and "bench --plan" in err and err.count("\n") == 1
