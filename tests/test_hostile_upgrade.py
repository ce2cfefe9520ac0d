"""Side effects of a failed step (issue 27): a refused connection during `upgrade`'s weights step fails in
seconds, not after a minute of retries, and leaves no weights folder (nor its parents) behind; `download`
fails as fast. The refused connection is real: a loopback port nothing listens on."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.errors import DownloadError, InputError
from deploy.hardware.profiles import load_profile
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.releases import upgrade


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upgrade_weights_step_fails_fast_on_a_refused_endpoint_and_makes_no_folder(tmp_path: Path) -> None:
    cand = plan(load_profile("ci-24g"), PlanRequest(model="demo")).chosen_candidate
    dest = tmp_path / "models" / "new" / "weights"
    opts = upgrade.UpgradeOptions(
        plan_path=tmp_path / "plan.json",
        endpoint=f"http://127.0.0.1:{_closed_port()}",
        weights_dir=dest,
        out=io.StringIO(),
    )
    started = time.monotonic()
    with pytest.raises(DownloadError, match="connection refused"):
        upgrade._weights(cand, {}, opts, lambda _line: None)
    assert time.monotonic() - started < 15
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://127.0.0.1:notaport"])
def test_upgrade_refuses_a_malformed_endpoint_before_any_folder(tmp_path: Path, endpoint: str) -> None:
    cand = plan(load_profile("ci-24g"), PlanRequest(model="demo")).chosen_candidate
    opts = upgrade.UpgradeOptions(
        plan_path=tmp_path / "p.json", endpoint=endpoint, weights_dir=tmp_path / "w" / "x"
    )
    with pytest.raises(InputError):
        upgrade._weights(cand, {}, opts, lambda _line: None)
    assert not (tmp_path / "w").exists()


def test_download_fails_fast_on_a_refused_endpoint(tmp_path: Path) -> None:
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    weights = replace(p.chosen_candidate.weights, local_dir=str(tmp_path / "models" / "demo"))
    p.chosen_candidate.weights = weights
    save_plan(p, tmp_path / "plan.json")
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "deploy", "download", "--plan", str(tmp_path / "plan.json"),
         "--endpoint", f"http://127.0.0.1:{_closed_port()}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"},
    )  # fmt: skip
    assert time.monotonic() - started < 30, r.stderr
    assert r.returncode != 0 and "Traceback" not in r.stderr and "connection refused" in r.stderr, r.stderr
    assert not (tmp_path / "models").exists()
