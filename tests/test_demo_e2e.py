"""`kimi-deploy demo` end to end as `make demo` runs it: real llama-server, mirror and huggingface_hub.

Slow (a minute or two once the engine is cached; the first engine build takes about 15 minutes). The
assertions are on the check report the demo writes, against what the catalog declares for the demo model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from deploy.catalog import load_model
from deploy.planning.contract import load_plan
from deploy.serving import launch, readiness

# any free port: the catalog's (8001) may be taken by another deployment on a shared CI machine
PORT = ["--port", "0"]
STAGES = [
    "set-up",
    "engine",
    "stage",
    "mirror",
    "inventory",
    "plan",
    "download",
    "verify",
    "render",
    "up",
    "check",
    "report",
    "down",
]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / ".demo"
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_TOKEN", "KIMI_DEPLOY_STATE_DIR")
    }
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "demo", "--workdir", str(workdir), *PORT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]

    # every stage was announced, in order, with the command it ran
    positions = [out.find(f"] {name}: ") for name in STAGES]
    assert all(p >= 0 for p in positions), [n for n, p in zip(STAGES, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    assert "$ HF_ENDPOINT=http://127.0.0.1:" in out and "kimi-deploy download --plan" in out

    report = json.loads((workdir / "check.json").read_text())
    assert report["ok"] is True
    status = {r["name"]: r["status"] for r in report["results"]}
    caps = load_model("demo").capabilities
    for name in ("liveness", "models", "instant", "streaming"):
        assert status[name] == "pass", (name, report["results"])
    # what the catalog declares must be exercised, not skipped; what it does not declare is skipped
    assert status["thinking"] == ("pass" if caps["reasoning"] else "skip")
    assert status["tool_call"] == ("pass" if caps["tools"] else "skip")
    assert status["vision"] == ("pass" if caps["vision"] else "skip")
    plan = load_plan(workdir / "plan.json")
    cand = plan.chosen_candidate
    assert cand.engine == "llama.cpp" and cand.engine_args["threads"] == 1
    assert status["metrics"] == ("pass" if cand.engine_args.get("metrics") else "skip")

    # the demo cleaned up: engine and mirror stopped, no pidfile left
    served_port = launch.read_manifest(workdir / "rendered")["port"]
    url = readiness.health_url(cand.engine, cand.engine_args["host"], served_port)
    assert readiness.probe(url, cand.engine).state == readiness.REFUSED
    assert not list((workdir / "state" / "run").glob("*.json"))
    assert launch.status(workdir / "state") == []
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and str(workdir) in " ".join(p.info["cmdline"])
    ]
    assert leftovers == []


@pytest.mark.slow
def test_demo_cleans_up_when_cancelled(tmp_path: Path) -> None:
    """SIGTERM (a cancelled CI job) once the engine is up: the demo stops engine and mirror, exits 130."""
    workdir = tmp_path / ".demo"
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_TOKEN", "KIMI_DEPLOY_STATE_DIR")
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy", "demo", "--workdir", str(workdir), *PORT],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    assert proc.stdout is not None
    end = time.monotonic() + 3600
    for line in proc.stdout:
        seen.append(line)
        if "] check: " in line or time.monotonic() > end:
            break
    assert any("] check: " in ln for ln in seen), "".join(seen[-40:])
    pidfile = json.loads(next((workdir / "state" / "run").glob("*.json")).read_text())
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest[-3000:]
    assert "cleaning up" in rest and "stopped pid" in rest
    assert (
        not psutil.pid_exists(pidfile["pid"])
        or psutil.Process(pidfile["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and str(workdir) in " ".join(p.info["cmdline"])
    ]
    assert leftovers == []
