"""`check --plan` on a prefill/decode split: each role replica's KV transfer counter must grow while the
suite runs through the router (deploy/checking/transfer.py).

A fake is acceptable here, and only here: no engine runs a split on CPU (SGLang's and vLLM's prefill/decode
modes need GPUs and an RDMA or NIXL transfer engine), so each role is deploy/fakes/faultserver.py with
``--pd-role`` (the recorded Kimi answers, and on ``/metrics`` the transfer counters under the names the
engine's data gives, which the first test holds to the pinned engine's source), and the router is
tests/helpers/pd_front.py (one prefill then one decode per request). All are real processes on loopback;
what is under test is `check` reading each role's counters before and after the suite. Real RDMA transfer
is not exercised.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.plans import four_node_plan

from deploy import constants, pins
from deploy.checking import transfer
from deploy.engines import registry
from deploy.engines.base import TransferCounter
from deploy.fakes import faultserver
from deploy.planning.contract import load_plan

REPO = Path(__file__).resolve().parent.parent
KD = [sys.executable, "-m", "deploy"]
FRONT = REPO / "tests" / "helpers" / "pd_front.py"
#: where the pinned engines register and observe the transfer metrics (the parser venv's copies)
SOURCES = {
    "sglang": [
        "sglang/srt/observability/metrics_collector.py",
        "sglang/srt/observability/req_time_stats.py",
    ],
    "vllm": ["vllm/distributed/kv_transfer/kv_connector/v1/nixl/stats.py"],
}


def _site_packages() -> Path | None:
    root = constants.CACHE_DIR / "venvs" / f"parsers-vllm{pins.VLLM_VERSION}-sglang{pins.SGLANG_VERSION}"
    found = sorted(root.glob("lib/python3*/site-packages"))
    return found[0] if found else None


def _registered(source: str, sample: str) -> bool:
    """prometheus_client adds ``_total`` to a Counter and ``_count`` to a Histogram's series."""
    base = re.sub(r"_(total|count)$", "", sample)
    return f'"{base}"' in source or f'"{sample}"' in source


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_transfer_metric_names_are_the_pinned_engines(engine: str) -> None:
    site = _site_packages()
    if site is None:
        pytest.skip("the parser venv (kimi-deploy engine install parsers) is not in the cache")
    source = "\n".join((site / f).read_text() for f in SOURCES[engine])
    spec = registry.get(engine).metrics.kv_transfer
    assert spec is not None
    counters = [c for c in (spec.sent, spec.received) if c is not None]
    assert counters and spec.failed
    for sample in [c.sample for c in counters] + list(spec.failed):
        assert _registered(source, sample), f"{sample} is not registered in {SOURCES[engine]}"
    for c in counters:
        for value in c.labels.values():  # a label value the engine observes (SGLang's stage name)
            assert f'"{value}"' in source, value
    # a side without a counter says why, and a name that is not there is caught
    assert all(spec.missing.get(role) for role in ("prefill", "decode") if spec.counter(role) is None)
    assert not _registered(source, f"{engine}:kv_transfer_bogus_total")


def test_counter_value_reads_only_its_labels() -> None:
    text = (
        'sglang:per_stage_req_latency_seconds_count{stage="decode_prepare",tp_rank="0"} 7.0\n'
        'sglang:per_stage_req_latency_seconds_count{stage="decode_transferred",tp_rank="0"} 3.0\n'
        'sglang:per_stage_req_latency_seconds_count{stage="decode_transferred",tp_rank="1"} 3.0\n'
    )
    received = registry.get("sglang").metrics.kv_transfer.received  # type: ignore[union-attr]
    assert received is not None
    samples = transfer.parse_metrics(text)
    assert transfer.counter_value(samples, received) == 6.0
    assert transfer.counter_value(samples, TransferCounter(received.sample, "x")) == 13.0


# ------------------------------------------------------------------------------- a split on loopback


def _plan(tmp: Path, engine: str, mode: str) -> Path:
    return four_node_plan(tmp, engine, mode)


@pytest.fixture
def start() -> Iterator[Callable[[list[str], str], str]]:
    """Start a process that prints ``... listening on URL`` first; returns that URL (stopped after)."""
    procs: list[subprocess.Popen[str]] = []

    def run(argv: list[str], banner: str) -> str:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert banner in line, line
        return line.rsplit(" ", 1)[-1].strip()

    yield run
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _split_on_loopback(
    tmp: Path, engine: str, start: Callable[[list[str], str], str], transfers: dict[str, str]
) -> Path:
    """The planner's split for hardware/h200x8-4nodes, each replica a fake role server on loopback (its
    transfer as ``transfers`` says, by replica id, else ``moves``) behind the PD front."""
    data = json.loads(_plan(tmp, engine, "disaggregated").read_text())
    fleet = data["fleet"]
    urls: dict[str, list[str]] = {"prefill": [], "decode": []}
    for r in fleet["replicas"]:
        argv = [*KD[:1], "-m", "deploy.fakes.faultserver", "--mode", "ok-kimi", "--engine", engine]
        argv += ["--model", data["model"]["served_model_name"], "--port", "0", "--pd-role", r["role"]]
        argv += ["--pd-transfer", transfers.get(r["id"], "moves")]
        url = start(argv, faultserver.BANNER)
        port = int(url.rsplit(":", 1)[1])
        r.update(host="127.0.0.1", port=port, url=url)
        urls[r["role"]].append(url)
    argv = [sys.executable, str(FRONT)]
    for role in ("prefill", "decode"):
        argv += [arg for u in urls[role] for arg in (f"--{role}", u)]
    front = start(argv, "PD FRONT")
    port = int(front.rsplit(":", 1)[1])
    fleet["router"].update(host="127.0.0.1", port=port, url=front)
    chosen = next(c for c in data["candidates"] if c["id"] == data["chosen"])
    chosen["engine_args"]["port"] = port  # users reach the router on the candidate's own port
    out = tmp / f"split-{engine}.json"
    out.write_text(json.dumps(data))
    load_plan(out)  # still a valid plan.json
    return out


def _check(plan: Path) -> tuple[int, dict[str, dict], str]:
    p = subprocess.run(
        [*KD, "check", "--plan", str(plan), "--json"], capture_output=True, text=True, timeout=180
    )
    report = json.loads(p.stdout) if p.stdout.strip().startswith("{") else {"results": []}
    return p.returncode, {r["name"]: r for r in report["results"]}, p.stderr


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_the_transfer_moves_on_every_role_replica(tmp_path: Path, start, engine: str) -> None:
    plan = _split_on_loopback(tmp_path, engine, start, {})
    rc, results, err = _check(plan)
    assert rc == 0, (err, {k: (v["status"], v["reason"]) for k, v in results.items()})
    roles = {r.id: r.role for r in load_plan(plan).fleet.replicas}
    spec = registry.get(engine).metrics.kv_transfer
    assert spec is not None
    for rid, role in roles.items():
        row = results[f"kv_transfer_{rid}"]
        counter = spec.counter(role)
        if counter is None:  # vLLM's prefill: NIXL pulls, the decode counts
            assert row["status"] == "skip" and spec.missing[role] in row["reason"], row
            continue
        assert row["status"] == "pass", row
        assert row["details"]["metric"] == counter.sample and row["details"]["before"] == 0
        assert row["details"]["after"] >= 1 and f"{counter.sample}" in row["reason"]
        assert results[f"replica_{rid}"]["status"] == "pass"


@pytest.mark.parametrize(
    ("engine", "faults", "failing", "reason"),
    [
        # the decode's other stage keeps growing: a reader that ignored the stage label would pass
        ("sglang", {"r2": "stuck"}, "kv_transfer_r2", "stayed at 0 through the suite"),
        ("sglang", {"r0": "stuck"}, "kv_transfer_r0", "no KV transfers sent"),
        ("vllm", {"r1": "fails"}, "kv_transfer_r1", "KV transfer(s) failed during the suite"),
    ],
)
def test_a_transfer_that_does_not_move_fails_its_replica(
    tmp_path: Path, start, engine: str, faults: dict[str, str], failing: str, reason: str
) -> None:
    plan = _split_on_loopback(tmp_path, engine, start, faults)
    rc, results, err = _check(plan)
    assert rc == 7
    failed = {name for name, r in results.items() if r["status"] == "fail"}
    assert failed == {failing}, {k: (v["status"], v["reason"]) for k, v in results.items()}
    assert reason in results[failing]["reason"]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: 1 check(s) failed: " + failing) and "Traceback" not in err


def test_aggregated_replicas_have_no_transfer_check(tmp_path: Path) -> None:
    """The aggregated fleet of the same hardware: nothing to watch, the report is as before."""
    plan = load_plan(_plan(tmp_path, "sglang", "aggregated"))
    assert plan.fleet.mode == "aggregated"
    from deploy.checking import fleet
    from deploy.checking.target import target_from_plan

    replicas = fleet.replica_targets(plan, target_from_plan(plan))
    assert len(replicas) == 4 and transfer.role_replicas(plan, replicas) == []
    assert transfer.TransferWatch.start(plan, replicas).results(requests_sent=5) == []
