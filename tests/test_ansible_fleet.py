"""site.yml with a fleet, through ansible-runner against this machine (connection local): the demo model
planned as two replicas (`kimi_replicas: 2`, which share this CPU box) behind vllm-router on the head.

What is proved, from the real processes: the first run starts both replicas (llama-server) and then the
router, which sees both healthy; `status --json` lists the router and two healthy replicas; a chat request
through the router's URL (kimi_port, the front door) is answered; the check stage ran through the router; a
second run and a `--check` run change nothing; `kimi-deploy down` stops the router and both replicas.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import ansible_support as support
import psutil
import pytest
import requests

pytestmark = pytest.mark.slow

REPLICAS = 2


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "KIMI_DEPLOY_STATE_DIR": str(home / "state")}


def _status(home: Path) -> list[dict[str, object]]:
    out = subprocess.run(
        [support.KD, "status", "--json"], env=_env(home), capture_output=True, text=True, timeout=60
    )
    return json.loads(out.stdout)


def _taken(ports: list[int]) -> list[int]:
    """The ports among ``ports`` something already listens on (loopback)."""
    import socket

    taken = []
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    return taken


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("ansible-fleet")
    support.stage_demo(root / "upstream")
    home = root / "kimi"
    mirror = subprocess.Popen(
        [support.KD, "mirror", "serve", str(root / "upstream"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(home),
    )
    assert mirror.stdout is not None
    url = ""
    for line in mirror.stdout:
        if line.startswith("mirror-ready "):
            url = json.loads(line.split(" ", 1)[1])["url"]
            break
    assert url, "the upstream mirror did not start"
    inventory = support.write_inventory(
        root / "inventory.yml",
        {"localhost": {}},
        {},
        {
            "ansible_connection": "local",
            "ansible_python_interpreter": support.SYSTEM_PYTHON,
            "kimi_model": "demo",
            "kimi_venv": support.VENV,
            "kimi_home": str(home),
            "kimi_weights_dir": str(root / "models"),
            "kimi_hf_endpoint": url,
            # everything serves on loopback: no route to resolve (the test may run in a private netns)
            "kimi_network_interface": "lo",
            "kimi_replicas": REPLICAS,
            # with a router, kimi_port is the router's (plan --router-port): the URL users reach
            "kimi_port": support.free_port(),
        },
    )
    # the replicas' ports (the catalog's engine port + 1 + i) and the router's metrics port are the plan's,
    # not the test's: another fleet on this machine's loopback would be found instead of this one
    probe = root / "ports-plan.json"
    subprocess.run(
        [support.KD, "plan", "--model", "demo", "--replicas", str(REPLICAS), "-o", str(probe)],
        capture_output=True,
        check=True,
    )
    fleet = support.read_json(probe)["fleet"]
    ports = [int(r["port"]) for r in fleet["replicas"]] + [int(fleet["router"].get("metrics_port", 0))]
    assert not _taken(ports), f"ports {_taken(ports)} of the demo fleet are in use on loopback"
    try:
        yield {"inventory": inventory, "home": home}
    finally:
        subprocess.run([support.KD, "down"], env=_env(home), capture_output=True, timeout=180)
        mirror.terminate()
        mirror.wait(timeout=30)


@pytest.fixture(scope="module")
def first(site: dict[str, Path]) -> support.Run:
    return support.run(site["inventory"])


def _manifest(site: dict[str, Path]) -> dict[str, object]:
    return support.read_json(site["home"] / "state" / "rendered" / "manifest.json")


def test_first_run_starts_the_replicas_then_the_router(site: dict[str, Path], first: support.Run) -> None:
    assert first.result.ok, "\n".join(first.result.failed_tasks) or first.text[-4000:]
    assert first.result.changed.get("localhost", 0) > 0
    plan = support.read_json(site["home"] / "state" / "plan.json")
    assert len(plan["fleet"]["replicas"]) == REPLICAS
    assert plan["fleet"]["router"]["node"] == "localhost"
    views = {v["node"]: v for v in _status(site["home"])}
    replicas = [f"r{i}-localhost" for i in range(REPLICAS)]
    assert sorted(views) == sorted([*replicas, "router"]), views
    assert all(views[n]["running"] and views[n]["ready"] for n in views), views
    assert [views[n]["healthy_in_router"] for n in replicas] == [True] * REPLICAS, views
    assert views["router"]["program"] == plan["fleet"]["router"]["program"]
    # the router started after every replica was ready
    created = {n: psutil.Process(int(views[n]["pid"])).create_time() for n in views}
    assert max(created[n] for n in replicas) <= created["router"]
    # the check stage went through the router (the manifest's front door is the router's)
    assert "localhost" in first.task_order("Run the conformance check against the head's server")
    manifest = _manifest(site)
    assert manifest["fleet"]["router"]["url"].endswith(f":{manifest['port']}")


def test_a_chat_request_through_the_router_is_answered(site: dict[str, Path], first: support.Run) -> None:
    assert first.result.ok
    manifest = _manifest(site)
    reply = requests.post(
        f"{manifest['fleet']['router']['url']}/v1/chat/completions",
        json={
            "model": manifest["served_model_name"],
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 16,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]


def test_second_run_changes_nothing(site: dict[str, Path], first: support.Run) -> None:
    assert first.result.ok
    before = {v["node"]: v["pid"] for v in _status(site["home"])}
    again = support.run(site["inventory"])
    assert again.result.ok, again.text[-4000:]
    assert again.result.total_changed == 0, [line for line in again.lines if "changed" in line]
    assert {v["node"]: v["pid"] for v in _status(site["home"])} == before


def test_check_mode_changes_nothing(site: dict[str, Path], first: support.Run) -> None:
    assert first.result.ok
    state = site["home"] / "state"
    before = {p: p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file() and "run" not in p.parts}
    dry = support.run(site["inventory"], check=True, diff=True)
    assert dry.result.ok, dry.text[-4000:]
    assert dry.result.total_changed == 0, [line for line in dry.lines if "changed" in line]
    after = {p: p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file() and "run" not in p.parts}
    assert after == before


def test_down_stops_the_router_and_every_replica(site: dict[str, Path], first: support.Run) -> None:
    assert first.result.ok
    procs = [psutil.Process(int(v["pid"])) for v in _status(site["home"])]
    assert len(procs) == REPLICAS + 1
    out = subprocess.run(
        [support.KD, "down"], env=_env(site["home"]), capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert alive == [], alive
    assert not any(v["running"] for v in _status(site["home"]))
