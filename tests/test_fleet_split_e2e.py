"""`up --node router`, a request through the front door, `status` and `down` of a rendered prefill/decode
split: the real CLI and the real pinned router (sglang-router, from the release's own launch script) in its
prefill/decode mode, in front of stand-in prefill and decode servers on the ports the plan gives them.

A stand-in (tests/helpers/pd_engine.py) replaces each engine because no engine here can serve prefill/decode
on CPU (SGLang's PD mode needs GPUs and a KV transfer engine): the KV transfer, over RDMA or otherwise, is NOT
exercised; what is proven is that the release the toolkit renders starts the router in its PD mode, that the
router reaches every role where the plan put it, and that `down --node` refuses to pull one server out of a
running prefill/decode router.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from helpers.processes import process, until

from deploy.hardware.profiles import load_profile
from deploy.planning.contract import load_plan, save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.routers import install, registry

STAND_IN = Path(__file__).parent / "helpers" / "pd_engine.py"
CLI = [sys.executable, "-m", "deploy"]


def _free_block(size: int) -> int:
    """A first port of ``size`` consecutive free ones (the router's port, then one per replica)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + size > 65535:
            continue
        socks = []
        try:
            for p in range(first, first + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    pytest.fail("no block of free ports")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_rendered_split_starts_its_router_in_pd_mode_and_serves_through_the_front_door(
    tmp_path: Path,
) -> None:
    if not install.router_ready(registry.get("sglang-router")):
        pytest.fail(f"sglang-router venv missing: run `{install.INSTALL_HINT}`")
    first = _free_block(5)
    req = PlanRequest(engine="sglang", workload="long", fleet_mode="disaggregated", router_port=first)
    p = plan(load_profile("h200x8-4nodes"), req)
    data = p.to_dict()
    data["fleet"]["router"]["metrics_port"] = _free_port()
    plan_path = tmp_path / "plan.json"
    save_plan(load_plan_from(data, tmp_path), plan_path)
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(tmp_path / "state")}
    out = tmp_path / "rendered"
    r = _run(["render", "--plan", str(plan_path), "--out", str(out)], env)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "current" / "manifest.json").read_text())
    replicas = manifest["fleet"]["replicas"]
    with contextlib.ExitStack() as stack:
        for rep in replicas:
            port = rep["url"].rsplit(":", 1)[1]
            log = tmp_path / f"{rep['id']}.log"
            cmd = [sys.executable, str(STAND_IN), rep["role"], port, str(tmp_path / f"{rep['id']}.jsonl")]
            proc = stack.enter_context(process(cmd, log))
            until(rep["id"], lambda u=rep["url"]: requests.get(f"{u}/health", timeout=2).ok, proc, log)
        stack.callback(_run, ["down", "--rendered", str(out)], env, 60)
        up = _run(["up", "--plan", str(plan_path), "--rendered", str(out), "--node", "router"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"{len(replicas)} of {len(replicas)} replicas healthy" in up.stdout
        front = manifest["fleet"]["router"]["url"]
        reply = requests.post(
            f"{front}/v1/chat/completions",
            json={"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        text = reply.json()["choices"][0]["message"]["content"]
        decode_ports = {rep["url"].rsplit(":", 1)[1] for rep in replicas if rep["role"] == "decode"}
        assert text.startswith("decode@") and text.split("@")[1].split()[0] in decode_ports
        prefill = next(rep for rep in replicas if rep["role"] == "prefill")
        recorded = [
            json.loads(line) for line in (tmp_path / f"{prefill['id']}.jsonl").read_text().splitlines()
        ]
        chats = [x for x in recorded if x["path"] == "/v1/chat/completions"]
        split = p.fleet.disaggregation
        assert chats and chats[-1]["body"]["bootstrap_port"] == split["bootstrap_port"]
        decode_node = next(rep for rep in replicas if rep["role"] == "decode")["head"]
        refused = _run(["down", "--rendered", str(out), "--node", decode_node], env, 60)
        assert refused.returncode != 0 and "prefill/decode router" in refused.stderr
        assert "Traceback" not in refused.stderr
        status = _run(["status", "--json"], env, 60)
        assert status.returncode == 0, status.stderr
        (router,) = [x for x in json.loads(status.stdout) if x["node"] == "router"]
        assert router["ready"] and router["program"] == "sglang-router"


def load_plan_from(data: dict, tmp: Path):
    """The plan ``data`` as plan.json's reader reads it (the edited metrics port checked like any plan)."""
    path = tmp / "edited.json"
    path.write_text(json.dumps(data))
    return load_plan(path)
