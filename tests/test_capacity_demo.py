"""The capacity loop on the demo's real numbers: `bench` a one-replica demo at three concurrencies, which
records its points in the bench store; `capacity` for a two-replica plan of the same candidate, at twice the
concurrency one replica held within the demo's SLO, says "measured" and predicts the output tok/s of two from
exactly that recorded point; `bench` through that fleet's router at that concurrency measures it, in the same
run, with no failed request, and the test prints predicted / measured.

It does not gate on predicted / measured within +-25% (the capacity issue's wish): on this 2-core machine the
two replicas share the cores with the router and AIPerf, and eight runs measured 1.02 to 1.36 (see
docs/how-to/capacity.md), so such a gate would pass or fail by the machine's noise. `make bench-fleet`
prints the same comparison as a benchmark.

Slow (about three minutes once the engine and the router are cached). Both deployments go through the demo's
own stages (`prepare_deployment`: mirror, download, verify, plan, render); nothing else serves beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deploy.demo.run import free_port, prepare_deployment
from deploy.serving import fleet_launch
from tests.helpers.fake_repos import run_kd

pytestmark = pytest.mark.slow

#: the demo's chat shape (bench's demo default) and the TTFT p95 the demo alerts on
ISL, OSL, SLO_S = 64, 16, 2.0
REQUESTS = 8


def _sweep(workdir: Path, env: dict[str, str], concurrency: str) -> dict:
    """`up` the deployment in ``workdir``, `bench` it through its front door at the demo's shape and SLO
    (no request may fail), `down`; the JSON report, with bench's stderr under ``"stderr"``."""
    env = {**env, "KIMI_DEPLOY_STATE_DIR": str(workdir / "state")}
    deployment = ["--plan", str(workdir / "plan.json"), "--rendered", str(workdir / "rendered")]
    out = workdir / "bench.json"
    try:
        started = run_kd("up", *deployment, env=env, timeout=300)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        done = run_kd(
            "bench", *deployment, "--concurrency", concurrency, "--requests", str(REQUESTS),
            "--isl", str(ISL), "--osl", str(OSL), "--slo", f"ttft_p95={SLO_S:g}s", "-o", str(out),
            env=env, timeout=900,
        )  # fmt: skip
    finally:
        fleet_launch.down(state_dir=workdir / "state", grace_s=10)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == 0, [p.get("error_summary") for p in report["points"]]
    return {**report, "stderr": done.stderr}


def test_capacity_predicts_two_replicas_from_one_replicas_recorded_bench_and_the_router_serves_them(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "KIMI_DEPLOY_CALIBRATION_DIR": str(tmp_path / "calibration")}
    with (tmp_path / "prepare.log").open("w") as log:
        single = prepare_deployment(tmp_path / "single", out=log, port=free_port())
        fleet = prepare_deployment(tmp_path / "fleet", out=log, replicas=2)

    alone = _sweep(single, env, "1,2,3")
    assert "recorded for capacity" in alone["stderr"], alone["stderr"][-2000:]
    per_replica = alone["capacity"]["concurrency"]
    assert per_replica, f"one replica met ttft_p95 <= {SLO_S:g}s at no concurrency: {alone['capacity']}"

    users = 2 * per_replica
    done = run_kd(
        "capacity", "--plan", str(fleet / "plan.json"), "--isl", str(ISL), "--osl", str(OSL),
        "--users", str(users), "--ttft-p95", f"{SLO_S:g}s", "--json", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    cap = json.loads(done.stdout)
    assert cap["source"] == "measured" and cap["replicas"]["value"] == 2, cap
    assert any("2 replicas share a node" in n for n in cap["notes"]), cap["notes"]
    predicted = cap["replicas"]["value"] * cap["per_replica"]["output_tok_s"]["value"]
    table = run_kd(*done.args[1:-1], env=env)
    assert table.returncode == 0 and "source MEASURED" in table.stdout, table.stdout + table.stderr

    recorded = next(p for p in alone["points"] if p["concurrency"] == per_replica)
    assert predicted == pytest.approx(2 * recorded["output_tokens_per_s"], rel=1e-6), (cap, recorded)

    (point,) = _sweep(fleet, env, str(users))["points"]
    measured = point["output_tokens_per_s"]
    assert point["requests"] == REQUESTS and measured > 0, point
    one = {p["concurrency"]: round(p["output_tokens_per_s"], 2) for p in alone["points"]}
    print(
        f"capacity (measured) for {users} users: predicted {predicted:.2f} output tok/s, the router measured "
        f"{measured:.2f} (TTFT p95 {point['ttft_ms']['p95']:.0f} ms): predicted / measured "
        f"{predicted / measured:.3f}; one replica: {one}"
    )
