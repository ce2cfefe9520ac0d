"""`kimi-deploy demo` end to end as `make demo` runs it: real llama-server, mirror and huggingface_hub.

Slow (a minute or two once the engine is cached; the first engine build takes about 15 minutes). The
assertions are on the check report the demo writes, against what the catalog declares for the demo model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from deploy import launch, readiness
from deploy.catalog import load_model
from deploy.plan import load_plan

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
        [sys.executable, "-m", "deploy", "demo", "--workdir", str(workdir)],
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
    url = readiness.health_url(cand.engine, cand.engine_args["host"], cand.engine_args["port"])
    assert readiness.probe(url, cand.engine).state == readiness.REFUSED
    assert not list((workdir / "state" / "run").glob("*.json"))
    assert launch.status(workdir / "state") == []
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and str(workdir) in " ".join(p.info["cmdline"])
    ]
    assert leftovers == []
