"""Replicas in the plan (issue 21): how many replicas of which layout, on which nodes and ports, behind which
router, and why; refused counts, RAM and port clashes; plan.json's ``fleet`` through the schema and back.

Every expectation is derived from the profile (its nodes, cores, RAM), the candidate's own figures (layout
nodes, engine port and threads, host memory) or the router registry, never typed in."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cpu_nodes import write_cpu_profile

from deploy import constants
from deploy.catalog import load_model
from deploy.cli import main
from deploy.engines import registry as engines
from deploy.errors import InputError, PlanError
from deploy.hardware.profiles import HardwareProfile, load_profile, profile_from_gpus
from deploy.planning.contract import REDUCED, RUNNABLE, Candidate, Plan, load_plan, plan_from_dict, save_plan
from deploy.planning.fleet import build_fleet, is_loopback, node_groups
from deploy.planning.memory import host_available
from deploy.planning.plan_schema import plan_schema
from deploy.planning.planner import multinode_spans, plan
from deploy.planning.request import MAX_REPLICAS, PlanRequest
from deploy.routers import registry as routers
from deploy.schema import validate

KD = Path(sys.executable).with_name("kimi-deploy")
FOUR_H100 = constants.HARDWARE_DIR / "h100x8-4nodes.yaml"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def expected_router(c: Candidate) -> dict:
    return routers.for_engine(engines.get(c.engine)).settings_for(engines.get(c.engine)).to_dict()


def with_gpu_gib(profile: HardwareProfile, gib: int) -> HardwareProfile:
    nodes = tuple(dataclasses.replace(n, gpu_memory_mib=gib * 1024) for n in profile.nodes)
    return dataclasses.replace(profile, nodes=nodes)


# ---- GPU fleets ------------------------------------------------------------------------------------


def test_two_h200_nodes_are_two_tp8_replicas_behind_the_router(capsys):
    profile = profile_from_gpus("2x8xH200")
    code, out, err = run(capsys, "plan", "--gpus", "2x8xH200", "--json")
    assert code == 0, err
    data = json.loads(out)
    p = plan_from_dict(data)
    c = p.chosen_candidate
    gpus = profile.head.gpu_count
    assert (c.nodes, c.tensor_parallel, c.pipeline_parallel) == (1, gpus, 1) and c.status == RUNNABLE
    fleet = p.fleet
    assert c.replicas == fleet.size == len(profile.nodes) // c.nodes == 2
    # GPU replicas take whole nodes, each its own, in profile order
    assert [r.nodes for r in fleet.replicas] == [(n.name,) for n in profile.nodes]
    port = c.engine_args["port"]
    assert fleet.router is not None and fleet.router["port"] == port
    assert [r.port for r in fleet.replicas] == [port + 1 + i for i in range(fleet.size)]
    router = routers.for_engine(engines.get(c.engine))
    assert fleet.router["metrics_port"] == router.metrics_port
    assert {k: fleet.router[k] for k in expected_router(c)} == expected_router(c)
    assert (fleet.router["program"], fleet.router["version"]) == (router.name, router.version)
    # the reason names the router and why this engine gets it
    assert f"{router.name} {router.version} fronts them" in fleet.reason
    assert engines.get(c.engine).router_reason in fleet.reason
    # --gpus: hardware nobody has yet, so no addresses: hosts and URLs stay empty
    assert all(r.host == "" and r.url == "" for r in fleet.replicas)
    assert fleet.router["host"] == fleet.router["url"] == "" and fleet.router["node"] == profile.head.name
    assert all(r.threads is None for r in fleet.replicas)
    # the table says how many replicas each candidate gives
    code, out, _ = run(capsys, "plan", "--gpus", "2x8xH200")
    assert code == 0 and "REPLICAS" in out and f"Fleet: {fleet.reason}" in out


def test_four_h100_nodes_offer_two_pp2_replicas_beside_one_pp4_and_say_why(capsys):
    profile = load_profile(FOUR_H100)
    n = len(profile.nodes)
    assert multinode_spans(n) == [k for k in range(2, n + 1) if n % k == 0]
    code, out, err = run(capsys, "plan", "--hardware", str(FOUR_H100), "--json")
    assert code == 0, err
    p = plan_from_dict(json.loads(out))
    ids = [c.id for c in p.candidates]
    assert len(ids) == len(set(ids))
    gpus = profile.head.gpu_count
    pp = {c.pipeline_parallel: c for c in p.candidates if c.engine == "vllm" and c.variant == "int4"
          and c.tensor_parallel == gpus and c.data_parallel == 1 and c.nodes > 1}  # fmt: skip
    assert sorted(pp) == multinode_spans(n)
    small, big = pp[min(pp)], pp[max(pp)]
    assert small.runs and big.runs and small.status == big.status
    assert (small.replicas, big.replicas) == (n // small.nodes, n // big.nodes)
    assert small.replicas > big.replicas
    # the same context on both: more replicas win over a layout spanning more nodes
    assert p.chosen == small.id and p.fleet.size == small.replicas
    assert [r.nodes for r in p.fleet.replicas] == [
        tuple(x.name for x in profile.nodes[i * small.nodes : (i + 1) * small.nodes])
        for i in range(small.replicas)
    ]
    line = next(x for x in p.explanation if x.startswith("Fleet: "))
    assert line == f"Fleet: {p.fleet.reason}"
    assert f"chosen over {big.layout}" in line and "throughput scales with replicas" in line
    # the engine binds loopback (the plan's default): replicas are reached there, and the plan warns that
    # those on other nodes than the router need a wider bind
    host = small.engine_args["host"]
    assert is_loopback(host) and all(r.host == host for r in p.fleet.replicas)
    assert any(x.startswith("Warning: r1 runs on other nodes than the router") for x in p.explanation)
    # the printed table: a REPLICAS column with each layout's count, and the reason line
    code, out, _ = run(capsys, "plan", "--hardware", str(FOUR_H100))
    header = out.splitlines()[1].split()
    col = header.index("REPLICAS")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:] if ln[:1].isdigit()}
    at = header.index("LAYOUT")
    for c in (small, big):
        row, words = rows[str(c.rank)], c.layout.split()
        assert row[at : at + len(words)] == words and row[col + len(words) - 1] == str(c.replicas)
    assert f"Fleet: {p.fleet.reason}" in out


def test_the_bigger_layout_wins_only_when_the_smaller_misses_the_context():
    """Bisect the per-GPU memory to the least at which TP8 x PP2 runs at all: there it runs only with a
    reduced context while TP8 x PP4 serves the full one, so the single PP4 replica is chosen and the reason
    says why; asked for the context PP2 reaches there, two PP2 replicas win again."""
    base = profile_from_gpus("4x8xH100")
    req = PlanRequest(engine="vllm", variant="int4")
    pp2 = "vllm-int4-tp8-pp2"

    def status(gib: int) -> str:
        return plan(with_gpu_gib(base, gib), req).candidate(pp2).status

    lo, hi = 1, base.head.gpu_memory_mib // 1024
    assert status(hi) == RUNNABLE
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if status(mid) != "incompatible" else (mid + 1, hi)
    profile = with_gpu_gib(base, lo)
    p = plan(profile, req)
    small, big = p.candidate(pp2), p.candidate("vllm-int4-tp8-pp4")
    assert small.status == REDUCED and big.status == RUNNABLE
    assert p.chosen == big.id and p.fleet.size == 1 and p.fleet.router is None
    assert f"{small.layout} would give {small.replicas} replicas but reaches only" in p.fleet.reason
    asked = plan(profile, dataclasses.replace(req, context=small.max_model_len))
    assert asked.chosen == pp2 and asked.fleet.size == len(profile.nodes) // small.nodes


def test_a_count_the_hardware_cannot_hold_is_one_line_and_exit_2(capsys, tmp_path):
    profile = profile_from_gpus("2x8xH200")
    c = plan(profile).chosen_candidate
    too_many = node_groups(c, profile) + 1
    code, out, err = run(capsys, "plan", "--gpus", "2x8xH200", "--replicas", str(too_many))
    assert code == 2 and out == ""
    line = one_error_line(err)
    assert line.startswith(f"error: --replicas {too_many}:") and f"hold {node_groups(c, profile)}" in line
    # the console script, as a user runs it
    proc = subprocess.run(
        [str(KD), "plan", "--gpus", "2x8xH200", "--replicas", str(too_many), "-o", str(tmp_path / "p.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and one_error_line(proc.stderr) == line
    assert not (tmp_path / "p.json").exists()
    # asked for fewer than the nodes hold: that many, the rest of the nodes idle
    one = plan(profile, PlanRequest(replicas=1))
    assert one.fleet.size == 1 and one.fleet.router is None


@pytest.mark.parametrize("value", ["0", "-1", "two", str(MAX_REPLICAS + 1)])
def test_bad_replica_counts(capsys, value):
    code, _, err = run(capsys, "plan", "--gpus", "2x8xH200", "--replicas", value)
    assert code == 2 and "--replicas" in one_error_line(err)


# ---- CPU nodes: replicas sharing a node only when asked --------------------------------------------


def test_demo_on_one_cpu_node_is_one_replica_by_default(capsys):
    code, out, _ = run(capsys, "plan", "--hardware", "ci-24g", "--model", "demo", "--json")
    assert code == 0
    p = plan_from_dict(json.loads(out))
    c, fleet = p.chosen_candidate, p.fleet
    # exactly today's single endpoint: the candidate's own host and port, no router
    assert fleet.size == 1 and fleet.router is None
    r0 = fleet.replicas[0]
    assert (r0.id, r0.port, r0.host, r0.threads) == ("r0", c.engine_args["port"], c.engine_args["host"], None)
    assert r0.url == f"http://{c.engine_args['host']}:{c.engine_args['port']}"


def test_demo_with_two_replicas_shares_the_node_threads_and_distinct_ports(capsys, tmp_path):
    out_file = tmp_path / "plan.json"
    code, out, err = run(
        capsys, "plan", "--hardware", "ci-24g", "--model", "demo", "--replicas", "2", "-o", str(out_file)
    )
    assert code == 0, err
    p = load_plan(out_file)
    c, fleet = p.chosen_candidate, p.fleet
    node = load_profile("ci-24g").head
    assert fleet.size == 2 and c.placement == "cpu"
    assert [r.nodes for r in fleet.replicas] == [(node.name,), (node.name,)]
    per = max(1, int(c.engine_args.get("threads") or node.cpu.physical_cores) // 2)
    assert [r.threads for r in fleet.replicas] == [per, per]
    ports = [fleet.router["port"], fleet.router["metrics_port"], *(r.port for r in fleet.replicas)]
    assert len(set(ports)) == len(ports) and fleet.router["port"] == c.engine_args["port"]
    host = c.engine_args["host"]
    assert all(r.host == host and r.url == f"http://{host}:{r.port}" for r in fleet.replicas)
    assert (fleet.router["host"], fleet.router["node"]) == (host, node.name)
    assert "REPLICAS" in out and "as asked (--replicas 2)" in fleet.reason


def test_replicas_split_the_threads_the_engine_would_get():
    """A node with more cores than the demo's one thread: Kimi's smallest GGUF on the CPU box, threads =
    the engine's (its physical cores) over the replicas, as many as its RAM holds."""
    profile = load_profile("cpu-512g")
    smallest = min((v for v in load_model(constants.DEFAULT_MODEL).variants if v.format == "gguf"),
                   key=lambda v: v.file_bytes)  # fmt: skip
    req = PlanRequest(engine="llama.cpp", variant=smallest.id)
    c = plan(profile, req).chosen_candidate
    node = profile.head
    fit = math.floor(host_available(node) / c.memory.host)
    assert fit >= 2 and c.engine_args["threads"] == node.cpu.physical_cores
    p = plan(profile, dataclasses.replace(req, replicas=fit))
    assert [r.threads for r in p.fleet.replicas] == [max(1, c.engine_args["threads"] // fit)] * fit
    assert {r.nodes for r in p.fleet.replicas} == {(node.name,)}


def test_replicas_sharing_a_node_need_its_ram():
    profile = load_profile("ci-24g")
    c = plan(profile, PlanRequest(model="demo")).chosen_candidate
    have = host_available(profile.head)
    fits = math.floor(have / c.memory.host)
    assert 2 <= fits < MAX_REPLICAS
    # as many as the RAM holds plan; one more is refused with the numbers of the candidate's own figures
    assert plan(profile, PlanRequest(model="demo", replicas=fits)).fleet.size == fits
    with pytest.raises(InputError) as exc:
        plan(profile, PlanRequest(model="demo", replicas=fits + 1))
    assert str(exc.value) == (
        f"{fits + 1} replicas of {c.layout} need {c.memory.host * (fits + 1):.1f} GiB of RAM on "
        f"{profile.head.name}, it has {have:.1f} GiB usable ({c.memory.host:.2f} GiB each)"
    )


def test_two_cpu_nodes_give_a_replica_each_by_default(tmp_path):
    profile = load_profile(write_cpu_profile(tmp_path / "two.yaml", ["10.213.0.1", "10.213.0.2"]))
    p = plan(profile, PlanRequest(model="demo"))
    c = p.chosen_candidate
    assert c.nodes == 1 and p.fleet.size == len(profile.nodes)
    assert [r.nodes for r in p.fleet.replicas] == [(n.name,) for n in profile.nodes]
    assert all(r.threads is None for r in p.fleet.replicas)
    # three on two nodes: round robin, threads split only where two share a node
    three = plan(profile, PlanRequest(model="demo", replicas=3)).fleet
    assert [r.nodes[0] for r in three.replicas] == [profile.nodes[i % 2].name for i in range(3)]
    assert [r.threads is None for r in three.replicas] == [False, True, False]


def test_a_wider_bind_reaches_replicas_at_their_nodes_addresses(tmp_path):
    profile = load_profile(write_cpu_profile(tmp_path / "two.yaml", ["10.213.0.1", "10.213.0.2"]))
    c = plan(profile, PlanRequest(model="demo")).chosen_candidate
    wide = dataclasses.replace(c, engine_args={**c.engine_args, "host": "0.0.0.0"})
    fleet = build_fleet(wide, profile, PlanRequest(model="demo"), [wide])
    assert [r.host for r in fleet.replicas] == [n.address for n in profile.nodes]
    assert fleet.router["host"] == profile.head.address


# ---- ports -----------------------------------------------------------------------------------------


def test_port_clashes_are_one_line(capsys):
    c = plan(load_profile("ci-24g"), PlanRequest(model="demo")).chosen_candidate
    base = ["plan", "--hardware", "ci-24g", "--model", "demo", "--replicas", "2"]
    replica_port = c.engine_args["port"] + 1
    code, _, err = run(capsys, *base, "--router-port", str(replica_port))
    assert code == 2 and f"both use port {replica_port}" in one_error_line(err)
    metrics = routers.for_engine(engines.get(c.engine)).metrics_port
    code, _, err = run(capsys, *base, "--router-port", str(metrics))
    assert code == 2 and f"both use port {metrics}" in one_error_line(err)
    code, _, err = run(capsys, *base, "--router-port", "70000")
    assert code == 2 and "--router-port" in one_error_line(err)
    # a router port of its own: the replicas keep theirs
    free = replica_port + 10
    code, out, _ = run(capsys, *base, "--router-port", str(free), "--json")
    fleet = plan_from_dict(json.loads(out)).fleet
    assert code == 0 and fleet.router["port"] == free and fleet.replicas[0].port == replica_port
    # one replica has no router to put on a port
    code, _, err = run(capsys, "plan", "--hardware", "ci-24g", "--model", "demo", "--router-port", str(free))
    assert code == 2 and "no router" in one_error_line(err)


def test_a_candidates_own_ports_are_checked_too():
    """The multi-node rendezvous ports of engine_args count: a router put on one is refused."""
    p = plan(load_profile(FOUR_H100))
    master = p.chosen_candidate.engine_args["multinode"]["master_port"]
    with pytest.raises(InputError, match=f"both use port {master}"):
        plan(load_profile(FOUR_H100), PlanRequest(router_port=master))


# ---- plan.json -------------------------------------------------------------------------------------


def test_fleet_round_trips_through_plan_json_and_the_schema(tmp_path):
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo", replicas=2))
    path = tmp_path / "plan.json"
    save_plan(p, path)
    data = json.loads(path.read_text())
    validate(data, plan_schema(), str(path))
    assert list(data)[: list(data).index("fleet") + 1][-2:] == ["chosen", "fleet"]
    assert data["fleet"] == p.fleet.to_dict()
    assert set(data["fleet"]["replicas"][0]) == {"id", "nodes", "layout", "host", "port", "url", "threads"}
    back = load_plan(path)
    assert back.fleet == p.fleet and back.chosen_candidate.replicas == 2
    assert back.to_dict() == data


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda f: f["replicas"][1].update(port=f["replicas"][0]["port"]), "both use port"),
        (lambda f: f["replicas"][0].update(host="$(touch x)"), "host"),
        (lambda f: f["replicas"][0].update(url="http://a b:1"), "url"),
        (lambda f: f["replicas"][0].update(id="r7"), "not r0, r1"),
        (lambda f: f["replicas"][0].update(nodes=["elsewhere"]), "not in the hardware"),
        (lambda f: f.update(router=None), "without a router"),
        (lambda f: f["router"].update(port=0), "port"),
        (lambda f: f["replicas"][0].update(threads=0), "threads"),
    ],
)
def test_a_broken_fleet_is_refused_in_one_line(tmp_path, edit, says):
    data = plan(load_profile("ci-24g"), PlanRequest(model="demo", replicas=2)).to_dict()
    edit(data["fleet"])
    with pytest.raises(PlanError, match=says):
        plan_from_dict(json.loads(json.dumps(data)), "plan.json")


def test_a_plan_from_before_fleets_reads_as_one_replica(tmp_path):
    for profile in (load_profile("ci-24g"), load_profile("h100x8-2nodes")):
        model = "demo" if profile.head.gpu_count == 0 else constants.DEFAULT_MODEL
        data = plan(profile, PlanRequest(model=model)).to_dict()
        del data["fleet"]
        for c in data["candidates"]:
            del c["replicas"]
        path = tmp_path / "old.json"
        path.write_text(json.dumps(data))
        old = load_plan(path)
        c = old.chosen_candidate
        assert c.replicas == 1 and old.fleet.size == 1 and old.fleet.router is None
        r0 = old.fleet.replicas[0]
        assert r0.nodes == tuple(n.name for n in profile.nodes[: c.nodes])
        assert (r0.host, r0.port) == (c.engine_args["host"], c.engine_args["port"])
        assert "fleet" not in old.to_dict()


def test_nothing_runnable_has_an_empty_fleet(tmp_path):
    p = plan(load_profile("ci-24g"))
    assert p.chosen is None and p.fleet.size == 0 and p.fleet.router is None
    save_plan(p, tmp_path / "p.json")
    assert load_plan(tmp_path / "p.json").fleet.size == 0


def test_make_plan_passes_replicas():
    """`make plan REPLICAS=N` hands N to `kimi-deploy plan` (make -n: the command, not run)."""
    proc = subprocess.run(
        ["make", "-n", "plan", "HARDWARE=hardware/h200x8.yaml", "REPLICAS=2", "PLAN=p.json"],
        cwd=constants.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "plan --hardware hardware/h200x8.yaml --replicas 2 -o p.json" in proc.stdout
    none = subprocess.run(
        ["make", "-n", "plan", "HARDWARE=hardware/h200x8.yaml", "PLAN=p.json"],
        cwd=constants.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--replicas" not in none.stdout


def test_a_plan_built_in_code_derives_its_fleet():
    """Plan.fleet on a plan built in code (no fleet written) derives one replica too."""
    p = plan(load_profile("h200x8"))
    bare = Plan(p.model, p.hardware, p.candidates, p.chosen, p.request, p.explanation)
    assert bare.fleet.size == 1 and bare.fleet.replicas[0].port == p.chosen_candidate.engine_args["port"]
