"""`render` of a fleet: each replica's node files, the router's launch, env file and unit, the manifest's
``fleet``; the router's command passes the pinned router's own parser; bad fleets are one clear line.

Plans come from the real planner on the profiles in hardware/ (and a CPU profile written here); every
expected value (ports, addresses, replica nodes, the router's program) is read from the plan.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import test_render
from helpers.cpu_nodes import write_cpu_profile
from test_render import flag_value, gguf_weights, plan_file

from deploy.hardware.profiles import load_profile
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.routers import registry as routers
from deploy.routers.check import check_router_argv

KEY = "fleet-canary-key-93b1"
#: the CLI fixture of test_render (the real entry point, in-process)
run_cli = test_render.run_cli


def _release(out: Path) -> Path:
    return (out / "current").resolve()


def test_a_gpu_fleet_renders_every_replica_node_and_the_router_reaching_their_addresses(
    tmp_path: Path, run_cli
) -> None:
    path, p = plan_file(tmp_path, "h100x8-4nodes")
    assert p.fleet.router is not None and p.fleet.size >= 2
    out = tmp_path / "out"
    env = {"KIMI_API_KEY": KEY, routers.get(p.fleet.router["program"]).api_key_env: KEY}
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(out),
            "--bind",
            "0.0.0.0",
            "--api-key-env",
            "KIMI_API_KEY",
        ],
        env,
    )
    assert r.exit_code == 0, r.stderr
    release = _release(out)
    manifest = json.loads((release / "manifest.json").read_text())
    addresses = {n["name"]: n["address"] for n in p.hardware["nodes"]}
    fleet = manifest["fleet"]
    assert [x["id"] for x in fleet["replicas"]] == [r.id for r in p.fleet.replicas]
    for planned, rendered in zip(p.fleet.replicas, fleet["replicas"], strict=True):
        assert rendered["nodes"] == [f"{planned.id}-{n}" for n in planned.nodes]
        # the plan was made for a loopback bind; bound beyond it, the router reaches each replica's head node
        assert rendered["url"] == f"http://{addresses[planned.nodes[0]]}:{planned.port}"
        for name in rendered["nodes"]:
            for f in (f"launch-{name}.sh", f"install-{name}.sh", f"kimi-deploy-{name}.service"):
                assert (release / f).is_file(), f
    router = fleet["router"]
    assert (manifest["bind"], manifest["port"]) == ("0.0.0.0", p.fleet.router["port"])
    argv = router["argv"]
    assert argv[argv.index("--worker-urls") + 1 :] == [x["url"] for x in fleet["replicas"]]
    env_file = release / router["env_file"]
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    for f in release.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="replace"), f
    launch = (release / router["launch"]).read_text()
    assert "require_env KIMI_ROUTER_API_KEY" in launch or routers.get(router["program"]).api_key_env in launch
    # the command the script runs, as the pinned router's own parser reads it
    check_router_argv(routers.get(router["program"]), argv[2:])


def test_a_cpu_fleet_on_one_node_splits_ports_and_the_front_door_is_the_router(
    tmp_path: Path, run_cli
) -> None:
    profile = write_cpu_profile(tmp_path / "box.yaml", ["127.0.0.1"], ram_gib=64, cores=8)
    p = plan(load_profile(str(profile)), PlanRequest(model="demo", engine="llama.cpp", replicas=2))
    path = tmp_path / "plan.json"
    save_plan(p, path)
    weights = gguf_weights(tmp_path, p.chosen_candidate, shards=1)
    out = tmp_path / "out"
    r = run_cli(
        ["render", "--plan", str(path), "--out", str(out), "--weights-dir", str(weights), "--check-parsers"]
    )
    assert r.exit_code == 0, r.stderr
    router = p.fleet.router
    assert f"parser check ({router['program']} {router['version']}): the router command passes" in r.output
    manifest = json.loads((_release(out) / "manifest.json").read_text())
    ports = {n["name"]: n["port"] for n in manifest["nodes"]}
    assert ports == {f"{x.id}-{x.nodes[0]}": x.port for x in p.fleet.replicas}
    assert manifest["port"] == p.fleet.router["port"] not in ports.values()
    for n in manifest["nodes"]:
        threads = n["argv"][n["argv"].index("--threads") + 1]
        replica = p.fleet.replica(n["replica"])
        assert int(threads) == (replica.threads or p.chosen_candidate.engine_args["threads"])
    r = run_cli(
        ["render", "--plan", str(path), "--out", str(out), "--weights-dir", str(weights), "--port", "9000"]
    )
    assert r.exit_code == 2 and "fleet" in r.stderr and "Traceback" not in r.stderr


def test_a_fleet_planned_without_addresses_is_refused_in_one_line(tmp_path: Path, run_cli) -> None:
    path = tmp_path / "plan.json"
    r = run_cli(["plan", "--gpus", "2x8xH200", "--replicas", "2", "-o", str(path)])
    if r.exit_code != 0:
        pytest.fail(r.stderr)
    r = run_cli(["render", "--plan", str(path), "--out", str(tmp_path / "out")])
    assert r.exit_code == 2, r.stderr
    assert "no address" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_a_prefill_decode_split_renders_each_role_and_the_router_in_its_pd_mode(
    tmp_path: Path, run_cli, engine: str
) -> None:
    """The 4-node H200 profile's split (plan --fleet-mode disaggregated, the long preset): each replica runs
    its role's candidate with the role's settings, the router lists prefill and decode servers by the
    addresses it reaches them at, and its command passes the pinned router's own parser."""
    path, p = plan_file(tmp_path, "h200x8-4nodes", engine=engine, workload="long", fleet_mode="disaggregated")
    split = p.fleet.disaggregation
    out = tmp_path / "out"
    env = {"KIMI_API_KEY": KEY, routers.get(p.fleet.router["program"]).api_key_env: KEY}
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(out),
            "--bind",
            "0.0.0.0",
            "--api-key-env",
            "KIMI_API_KEY",
        ],
        env,
    )
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((_release(out) / "manifest.json").read_text())
    fleet = manifest["fleet"]
    assert [x.get("role") for x in fleet["replicas"]] == [x.role for x in p.fleet.replicas]
    by_node = {n["name"]: n for n in manifest["nodes"]}
    for planned, rendered in zip(p.fleet.replicas, fleet["replicas"], strict=True):
        head = by_node[rendered["head"]]
        role_args = split[planned.role]["engine_args"]
        if engine == "sglang":
            assert flag_value(head["argv"], "--disaggregation-mode") == planned.role
            assert (
                flag_value(head["argv"], "--disaggregation-ib-device")
                == role_args["disaggregation_ib_device"]
            )
        else:
            assert (
                json.loads(flag_value(head["argv"], "--kv-transfer-config"))
                == role_args["kv_transfer_config"]
            )
        launch = (_release(out) / f"launch-{rendered['head']}.sh").read_text()
        if engine == "vllm":
            address = next(n["address"] for n in p.hardware["nodes"] if n["name"] == planned.nodes[0])
            assert f"VLLM_NIXL_SIDE_CHANNEL_HOST={address}" in launch.replace("'", "")
    argv = fleet["router"]["argv"]
    program = routers.get(p.fleet.router["program"])
    assert program.pd.flag in argv and "--worker-urls" not in argv
    prefill = [x["url"] for x in fleet["replicas"] if x.get("role") == "prefill"]
    decode = [x["url"] for x in fleet["replicas"] if x.get("role") == "decode"]
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--decode"] == decode
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--prefill"] == prefill
    if split["bootstrap_port"]:
        assert argv[argv.index("--prefill") + 2] == str(split["bootstrap_port"])
    check_router_argv(program, argv[2:])
    r = run_cli(["render", "--target", "k8s", "--plan", str(path), "--out", str(tmp_path / "k8s")], env)
    assert r.exit_code == 2 and "systemd only" in r.stderr and "Traceback" not in r.stderr
