"""The upgrade machinery without an engine: journal, bench gate, where new weights go, gc, bad input.

The end-to-end proof (a real llama-server upgraded, rolled back, killed) is tests/test_upgrade_demo.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.hardware.profiles import load_profile
from deploy.planning.contract import Weights, save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.releases import gc, journal
from deploy.releases.upgrade import bench_gate, find_deployment, weights_dest
from deploy.serving import release_dir
from deploy.serving.render import RenderOptions, render
from deploy.weights.lockfile import Lock, LockedFile, write_lock


def _lock(d: Path, revision: str, repo: str = "o/r") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "a.gguf").write_bytes(b"x" * 10)
    commit = hashlib.sha1(revision.encode()).hexdigest()
    files = [LockedFile("a.gguf", 10, git_oid=hashlib.sha1(b"x" * 10).hexdigest())]
    write_lock(d, Lock(repo=repo, commit=commit, files=files, revision=revision))
    return d


def _cand(local_dir: Path, revision: str) -> object:
    w = Weights("v", "o/r", revision, ["*.gguf"], 10, "gguf", local_dir=str(local_dir))
    return type("Cand", (), {"weights": w})()


def test_new_weights_go_beside_the_old(tmp_path: Path) -> None:
    base = _lock(tmp_path / "o" / "r", "main")
    old = {"dir": str(base), "repo": "o/r", "revision": "main"}
    assert weights_dest(_cand(base, "main"), old) == base  # the same revision: the same folder
    assert weights_dest(_cand(base, "v2"), old) == base.with_name("r@v2")
    assert weights_dest(_cand(tmp_path / "o" / "other", "v2"), old) == tmp_path / "o" / "other"
    assert weights_dest(_cand(base, "v2"), old, override=tmp_path / "x") == (tmp_path / "x").resolve()


def test_bench_gate_tolerates_noise_and_fails_a_regression() -> None:
    before = {"points": [{"concurrency": 1, "isl": 128, "osl": 64, "errors": 0, "output_tokens_per_s": 50.0,
                          "ttft_ms": {"p50": 200.0}}]}  # fmt: skip
    slower = {"points": [{**before["points"][0], "output_tokens_per_s": 40.0}]}
    laggier = {"points": [{**before["points"][0], "ttft_ms": {"p50": 260.0}}]}
    noisy = {"points": [{**before["points"][0], "output_tokens_per_s": 47.0, "ttft_ms": {"p50": 210.0}}]}
    assert "20.0% worse" in (bench_gate(before, slower, 0.10) or "")
    assert "TTFT p50" in (bench_gate(before, laggier, 0.10) or "")
    assert bench_gate(before, noisy, 0.10) is None
    assert bench_gate(None, slower, 0.10) is None  # nothing to compare with: recorded, not gated


def test_journal_records_steps_and_sees_a_dead_process(tmp_path: Path) -> None:
    j = journal.begin(tmp_path, "upgrade", root=tmp_path, from_release="a", to_release=None)
    journal.step(tmp_path, j, "weights")
    loaded = journal.load(tmp_path)
    assert loaded is not None and loaded.step == "weights" and not loaded.interrupted
    assert (tmp_path / journal.JOURNAL).stat().st_mode & 0o077 == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    loaded.pid = dead.pid
    journal.save(tmp_path, loaded)
    assert journal.load(tmp_path).interrupted
    journal.finish(tmp_path, loaded, journal.ROLLED_BACK, "test", 7)
    assert [d["status"] for d in journal.finished(tmp_path)] == [journal.ROLLED_BACK]


def test_one_operation_at_a_time(tmp_path: Path) -> None:
    with journal.exclusive(tmp_path), pytest.raises(journal.UpgradeBusy), journal.exclusive(tmp_path):
        pass


def test_upgrade_without_a_deployment_is_one_line_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "plan.json"
    save_plan(plan(load_profile("h200x8"), PlanRequest(variant="int4")), p)
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(tmp_path / "state")}
    for verb in (["upgrade", "--plan", str(p)], ["rollback"], ["gc"]):
        r = subprocess.run([sys.executable, "-m", "deploy", *verb], env=env, capture_output=True, text=True,
                           timeout=120, check=False)  # fmt: skip
        assert r.returncode == 2, (verb, r.stderr)
        assert r.stderr.startswith("error: no deployment found") and "Traceback" not in r.stderr


def test_gc_removes_only_weights_no_kept_release_uses(tmp_path: Path) -> None:
    p = tmp_path / "plan.json"
    save_plan(plan(load_profile("h200x8"), PlanRequest(variant="int4")), p)
    w = tmp_path / "models" / "o"
    v1, v2, v3 = _lock(w / "r", "main"), _lock(w / "r@v2", "v2"), _lock(w / "r@v3", "v3")
    unrelated = _lock(w / "r@x", "x", repo="someone/else")
    out = tmp_path / "rendered"
    ids = [render(p, RenderOptions(out_dir=out, weights_dir=d)).release_id for d in (v1, v2, v3)]
    assert find_deployment(tmp_path / "state", out).current == ids[-1]
    plan_ = gc.collect(out, keep=2)
    assert plan_.kept_releases == [ids[2], ids[1]] and plan_.releases == [ids[0]]
    assert plan_.weights == [v1]
    gc.run_gc(out, keep=2)
    assert not v1.exists() and v2.is_dir() and v3.is_dir() and unrelated.is_dir()
    assert not release_dir.release_path(out, ids[0]).exists()
