"""`upgrade`, `rollback` and `gc` for real on the demo left running by `demo --keep-running`.

Slow: llama-server from the engine cache on the demo GGUF, the weights through `mirror serve` with the real
huggingface_hub client, `check` against the server. One demo serves the whole module (about 40 s), then:
an upgrade to another revision of the weights staged in the mirror; an upgrade to a release whose flag the
engine rejects (rolled back by itself); an upgrade killed with SIGKILL half-way, then run again; a rollback
on demand and `gc`. Each step is bounded (subprocess timeouts of a few minutes at most).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.catalog import load_model
from deploy.planning import architecture
from deploy.releases import journal
from deploy.serving import launch, release_dir

pytestmark = pytest.mark.slow

REPO = next(v.repo for v in load_model("demo").variants if "llama.cpp" in v.engines)


def _env(state: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_TOKEN", "KIMI_DEPLOY_STATE_DIR")
    }
    env["KIMI_DEPLOY_STATE_DIR"] = str(state)
    return env


def kd(work: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        cwd=work,
        env=_env(work / "state"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    work = tmp_path_factory.mktemp("upgrade") / ".demo"
    done = kd(work.parent, "demo", "--workdir", str(work), "--port", "0", "--keep-running", timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    mirror = None
    try:
        # revision v2 of the demo repo: the same GGUF plus a changed file, staged under its own name
        src = work / "src-v2"
        src.mkdir()
        name = architecture.demo_gguf_path(load_model("demo")).name
        # the GGUF the demo staged for revision 1 (work/src/<repo name>/), linked: the same file
        os.link(work / "src" / REPO.split("/")[1] / name, src / name)
        (src / "README.md").write_text("revision 2 of the demo weights\n")
        staged = kd(work, "mirror", "stage", str(src), "--repo", REPO, "--into", str(work / "mirror"),
                    "--revision", "v2")  # fmt: skip
        assert staged.returncode == 0, staged.stderr
        mirror = subprocess.Popen(
            [sys.executable, "-m", "deploy", "mirror", "serve", str(work / "mirror"), "--port", "0"],
            env=_env(work / "state"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        url = ""
        deadline = time.monotonic() + 60
        assert mirror.stdout is not None
        while time.monotonic() < deadline and not url:
            line = mirror.stdout.readline()
            if not line:
                break
            if line.startswith("mirror-ready "):
                url = json.loads(line[len("mirror-ready ") :])["url"]
        assert url, "the mirror did not report ready"
        yield {"work": work, "url": url, "first": release_dir.current_id(work / "rendered")}
    finally:
        if mirror is not None:
            os.killpg(mirror.pid, signal.SIGTERM)
            mirror.wait(timeout=20)
        launch.down(state_dir=work / "state", grace_s=10)


def _plan(work: Path, name: str, *extra: str) -> Path:
    out = work / f"plan-{name}.json"
    args = ["plan", "--model", "demo", "--engine", "llama.cpp", "--hardware", str(work / "this-node.yaml")]
    r = kd(work, *args, *extra, "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _current(work: Path) -> tuple[str, dict]:
    rid = release_dir.current_id(work / "rendered")
    assert rid is not None
    return rid, release_dir.read_release(release_dir.release_path(work / "rendered", rid))


def _check_report(work: Path, rid: str) -> dict:
    report = release_dir.read_report(release_dir.release_path(work / "rendered", rid), "check")
    assert report is not None, f"no check report in release {rid}"
    return report


def _serving(work: Path) -> list[launch.NodeStatus]:
    nodes = launch.status(work / "state")
    assert nodes and all(n.ready for n in nodes), nodes
    return nodes


def test_upgrade_to_another_revision_is_checked(demo: dict) -> None:
    work, url = demo["work"], demo["url"]
    old_rid, old = _current(work)
    plan = _plan(work, "v2", "--revision", "v2")
    r = kd(work, "upgrade", "--plan", str(plan), "--endpoint", url)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rid, meta = _current(work)
    assert rid != old_rid
    assert meta["weights"]["revision"] == "v2" and meta["weights"]["commit"] != old["weights"]["commit"]
    # beside the old weights, which stay; the unchanged GGUF is the same file (hard link), not a copy
    new_dir, old_dir = Path(meta["weights"]["dir"]), Path(old["weights"]["dir"])
    assert new_dir.name == f"{old_dir.name}@v2" and old_dir.is_dir()
    gguf = architecture.demo_gguf_path(load_model("demo")).name
    assert (new_dir / gguf).stat().st_size == load_model("demo").expected["file_bytes"]
    assert os.path.samefile(new_dir / gguf, old_dir / gguf)
    assert _check_report(work, rid)["ok"] is True
    j = journal.load(work / "state")
    assert j is not None and j.status == journal.DONE and j.to_release == rid
    assert [s["step"] for s in j.steps][1:] == [
        "weights", "engine", "render", "stop-old", "switch", "start-new", "check", "done",
    ]  # fmt: skip
    _serving(work)


def test_a_flag_the_engine_rejects_rolls_back_by_itself(demo: dict) -> None:
    work = demo["work"]
    good, _ = _current(work)
    plan = _plan(work, "broken", "--revision", "v2")
    data = json.loads(plan.read_text())
    cand = next(c for c in data["candidates"] if c["id"] == data["chosen"])
    cand["engine_args"]["cache_type_k"] = "q9_bogus"  # not a KV cache type llama-server knows
    plan.write_text(json.dumps(data))
    r = kd(work, "upgrade", "--plan", str(plan), "--endpoint", demo["url"])
    assert r.returncode == 6, (r.stdout + r.stderr)[-4000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "rolled back" in line and good in line
    assert "Unsupported cache type" in r.stdout + r.stderr
    assert release_dir.current_id(work / "rendered") == good
    j = journal.load(work / "state")
    assert j is not None and j.status == journal.ROLLED_BACK and j.exit_code == 6
    _serving(work)
    # the old release answers `check` again, on its own
    broken = j.to_release
    assert broken and release_dir.failed(release_dir.release_path(work / "rendered", broken))
    assert release_dir.previous_id(work / "rendered") != broken  # `rollback` passes the failed one over
    c = kd(work, "check", "--plan", str(release_dir.release_path(work / "rendered", good) / "plan.json"),
           "--rendered", str(work / "rendered"))  # fmt: skip
    assert c.returncode == 0, c.stdout[-3000:]


def test_a_release_that_starts_but_breaks_the_contract_fails_check_and_rolls_back(demo: dict) -> None:
    """The engine starts, but with `--reasoning-format none` llama-server hands the model's thinking back
    inside the answer instead of in reasoning_content: `check` catches it (exit 7) and the old release is
    put back."""
    work = demo["work"]
    good, _ = _current(work)
    plan = _plan(work, "no-reasoning", "--revision", "v2")
    data = json.loads(plan.read_text())
    next(c for c in data["candidates"] if c["id"] == data["chosen"])["engine_args"]["reasoning_format"] = (
        "none"
    )
    plan.write_text(json.dumps(data))
    r = kd(work, "upgrade", "--plan", str(plan))
    assert r.returncode == 7, (r.stdout + r.stderr)[-4000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "rolled back" in last and "thinking" in last
    assert release_dir.current_id(work / "rendered") == good
    failed = journal.load(work / "state").to_release
    report = _check_report(work, failed)  # the failed release keeps the report of its start
    assert report["ok"] is False and "thinking" in [
        x["name"] for x in report["results"] if x["status"] == "fail"
    ]
    assert _check_report(work, good)["ok"] is True
    _serving(work)


def test_kill_9_mid_upgrade_then_a_rerun_ends_checked_and_recorded(demo: dict) -> None:
    work = demo["work"]
    before, _ = _current(work)
    plan = _plan(work, "8k", "--revision", "v2", "--context", "8192")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy", "upgrade", "--plan", str(plan)],
        cwd=work,
        env=_env(work / "state"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    step = ""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        j = journal.load(work / "state")
        step = j.step if j is not None and j.pid == proc.pid else ""
        if step in ("start-new", "check"):
            break
        time.sleep(0.05)
    assert step in ("start-new", "check"), f"the upgrade never reached start-new (last step {step!r})"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    j = journal.load(work / "state")
    assert j is not None and j.status == journal.RUNNING and j.interrupted
    # the next `up` finishes it first: back to the release that ran, checked, recorded as rolled back
    old_plan = release_dir.release_path(work / "rendered", before) / "plan.json"
    u = kd(work, "up", "--plan", str(old_plan), "--rendered", str(work / "rendered"))
    assert u.returncode == 0, (u.stdout + u.stderr)[-4000:]
    assert "recovering an interrupted upgrade" in u.stderr and "already running" in u.stdout + u.stderr
    assert release_dir.current_id(work / "rendered") == before
    assert journal.load(work / "state").status == journal.ROLLED_BACK
    _serving(work)
    # and the upgrade, run again, goes through (its weights and release are already there)
    r = kd(work, "upgrade", "--plan", str(plan))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rid, meta = _current(work)
    assert rid != before
    data = json.loads((release_dir.release_path(work / "rendered", rid) / "plan.json").read_text())
    assert next(c for c in data["candidates"] if c["id"] == data["chosen"])["max_model_len"] == 8192
    assert _check_report(work, rid)["ok"] is True
    done = journal.finished(work / "state")
    assert [d["status"] for d in done[-2:]] == [journal.ROLLED_BACK, journal.DONE]
    assert done[-2]["cause"] in (
        "interrupted at step start-new; rolled back",
        "interrupted at step check; rolled back",
    )
    _serving(work)


def test_rollback_on_demand_then_gc_keeps_what_releases_use(demo: dict) -> None:
    work = demo["work"]
    now, _ = _current(work)
    previous = release_dir.previous_id(work / "rendered")
    r = kd(work, "rollback")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert release_dir.current_id(work / "rendered") == previous != now
    assert _check_report(work, previous)["ok"] is True
    _serving(work)
    g = kd(work, "gc", "--keep", "2")
    assert g.returncode == 0, g.stderr
    v2_weights = release_dir.read_release(release_dir.release_path(work / "rendered", now))["weights"]["dir"]
    kept = {
        release_dir.read_release(release_dir.release_path(work / "rendered", rid))["weights"]["dir"]
        for rid in release_dir.list_releases(work / "rendered")
    }
    assert v2_weights in kept and all(Path(d).is_dir() for d in kept)
    # the revision-1 folder is referenced by no kept release any more: removed
    v1 = Path(v2_weights).with_name(Path(v2_weights).name.split("@")[0])
    assert not v1.exists() and f"weights {v1}" in g.stdout
    _serving(work)


def _playbook(work: Path, inventory: dict, plan: Path) -> subprocess.CompletedProcess[str]:
    import yaml

    inv = work / "replicas.yml"
    inv.write_text(yaml.safe_dump(inventory))
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "KIMI_DEPLOY_STATE_DIR")}
    env["ANSIBLE_NOCOLOR"] = "1"
    return subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inv),
         str(repo / "playbooks" / "upgrade.yml"), "-e", f"kimi_upgrade_plan={plan}"],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def test_ansible_rolls_replicas_one_by_one_and_stops_at_the_first_failure(demo: dict, tmp_path: Path) -> None:
    """Two independent replicas on this machine (the module's demo and a second one): a good plan upgrades
    both, node by node; a plan the engine rejects fails on the first, which rolls itself back, and the
    second is never touched."""
    work = demo["work"]
    second = tmp_path / ".demo2"
    done = kd(tmp_path, "demo", "--workdir", str(second), "--port", "0", "--keep-running", timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    try:
        local = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "kimi_bin": str(Path(sys.executable).with_name("kimi-deploy")),
            "kimi_upgrade_by_node": False,
            "kimi_hf_endpoint": demo["url"],
        }
        inventory = {"all": {"vars": local, "children": {"kimi_replicas": {"hosts": {
            "r1": {"kimi_state_dir": str(work / "state")},
            "r2": {"kimi_state_dir": str(second / "state")},
        }}}}}  # fmt: skip
        # a good plan: the demo at 16k context on revision v2 (a replica still on revision 1 fetches it)
        good = _plan(work, "16k", "--revision", "v2", "--context", "16384")
        r = _playbook(work, inventory, good)
        assert r.returncode == 0, r.stdout[-4000:]
        for w in (work, second):
            rid, _ = _current(w)
            data = json.loads((release_dir.release_path(w / "rendered", rid) / "plan.json").read_text())
            assert next(c for c in data["candidates"] if c["id"] == data["chosen"])["max_model_len"] == 16384
            assert _check_report(w, rid)["ok"] is True
            _serving(w)
        # a broken plan: r1 fails and rolls itself back; the roll stops there, r2 keeps its release
        before = {w: _current(w)[0] for w in (work, second)}
        bad = _plan(work, "bad", "--revision", "v2", "--context", "16384")
        data = json.loads(bad.read_text())
        next(c for c in data["candidates"] if c["id"] == data["chosen"])["engine_args"]["cache_type_k"] = (
            "q9_x"
        )
        bad.write_text(json.dumps(data))
        r = _playbook(work, inventory, bad)
        assert r.returncode != 0
        assert "r1" in r.stdout and "Upgrade the node" in r.stdout
        assert "r2" not in r.stdout.split("PLAY RECAP")[0], r.stdout[-3000:]
        assert {w: _current(w)[0] for w in (work, second)} == before
        assert journal.load(work / "state").status == journal.ROLLED_BACK
        assert journal.load(second / "state").status == journal.DONE
        for w in (work, second):
            _serving(w)
    finally:
        launch.down(state_dir=second / "state", grace_s=10)


def test_ansible_deployment_mode_fails_on_the_head_and_rolls_back(demo: dict) -> None:
    """The head+workers path of playbooks/upgrade.yml (here a head alone): a release the engine rejects fails
    on the head, which rolls itself back; the play fails with the head's cause and the old release serves."""
    work = demo["work"]
    before, _ = _current(work)
    node = json.loads((work / "rendered" / "manifest.json").read_text())["nodes"][0]["name"]
    bad = _plan(work, "bad-head", "--revision", "v2", "--context", "12288")
    data = json.loads(bad.read_text())
    next(c for c in data["candidates"] if c["id"] == data["chosen"])["engine_args"]["cache_type_k"] = "q9_x"
    bad.write_text(json.dumps(data))
    local = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "kimi_bin": str(Path(sys.executable).with_name("kimi-deploy")),
        "kimi_hf_endpoint": demo["url"],
    }
    head = {"hosts": {node: {"kimi_state_dir": str(work / "state")}}}
    inventory = {"all": {"vars": local, "children": {"kimi_head": head, "kimi_workers": {"hosts": {}}}}}
    r = _playbook(work, inventory, bad)
    assert r.returncode != 0
    assert "the upgrade failed on the head and every node was rolled back" in r.stdout, r.stdout[-3000:]
    assert release_dir.current_id(work / "rendered") == before
    assert journal.load(work / "state").status == journal.ROLLED_BACK
    _serving(work)
