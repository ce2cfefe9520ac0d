"""Releases on disk (render's release folders, `current`, history, pruning) and `plan diff`.

Fast: plans from the real planner on the shipped hardware profiles, files rendered for real; nothing starts.
The numbers compared come from the catalog (weights bytes) and the planner's inputs (the context asked for).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.catalog import load_model
from deploy.hardware.profiles import load_profile
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.releases import diff
from deploy.serving import release_dir
from deploy.serving.render import RenderOptions, render
from deploy.weights.lockfile import Lock, LockedFile, write_lock


def _plan(tmp_path: Path, name: str, **kw) -> Path:
    path = tmp_path / f"{name}.json"
    save_plan(plan(load_profile("h200x8"), PlanRequest(**kw)), path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, timeout=120, check=False
    )


# ------------------------------------------------------------------------------------------- plan diff


def test_plan_diff_k25_to_k26_names_model_weights_and_flags(tmp_path: Path) -> None:
    old = _plan(tmp_path, "k25", variant="int4")
    new = _plan(tmp_path, "k26", model="kimi-k2.6", variant="int4")
    d = diff.diff(diff.load_side(old), diff.load_side(new))
    changed = {w: (o, n) for w, o, n in d.changes}
    assert changed["weights repo"] == ("moonshotai/Kimi-K2.5", "moonshotai/Kimi-K2.6")
    assert changed["served as"] == ("kimi-k2.5", "kimi-k2.6")
    k26 = next(v for v in load_model("kimi-k2.6").variants if v.id == "int4")
    # a different repo: the whole variant, as the catalog lists it, must be downloaded
    assert d.download_bytes == k26.file_bytes
    flags = d.flags["node0"]
    assert flags["changed"]["--served-model-name"] == ["kimi-k2.5", "kimi-k2.6"]
    assert any("kimi-k2.6" in n for n in d.notes)
    text = diff.render_diff(d)
    assert "~ --served-model-name  kimi-k2.5  ->  kimi-k2.6" in text
    assert "engine" in d.unchanged and "context (max_model_len)" in d.unchanged


def test_plan_diff_two_context_sizes_changes_only_the_context(tmp_path: Path) -> None:
    old = _plan(tmp_path, "full", variant="int4")
    new = _plan(tmp_path, "64k", variant="int4", context=65536)
    r = _cli("plan", "diff", str(old), str(new), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    full = load_model("kimi-k2.5")
    fields = {c["field"]: c for c in d["changes"]}
    assert fields["context (max_model_len)"]["new"] == "65,536"
    assert fields["context (max_model_len)"]["old"] == f"{262144:,}"
    assert d["download_bytes"] == 0
    assert d["flags"]["node0"]["changed"] == {"--max-model-len": ["262144", "65536"]}
    assert not d["flags"]["node0"]["added"] and not d["flags"]["node0"]["removed"]
    assert any("65,536" in n for n in d["notes"]), full.name


def test_plan_diff_of_a_plan_with_itself_is_no_change(tmp_path: Path) -> None:
    p = _plan(tmp_path, "same", variant="int4")
    r = _cli("plan", "diff", str(p), str(p))
    assert r.returncode == 0, r.stderr
    assert "no change" in r.stdout


def test_plan_diff_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = _cli("plan", "diff", str(bad), str(bad))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_parse_flags_keeps_repeated_flags_and_python_m() -> None:
    prog, flags = diff.parse_flags(["/venv/bin/python3", "-m", "sglang.launch_server", "--tp", "8", "--x"])
    assert prog == ["/venv/bin/python3", "-m", "sglang.launch_server"]
    assert flags == {"--tp": "8", "--x": ""}
    assert diff.flag_changes(["s", "--a", "1", "--b"], ["s", "--a", "2", "--c", "3"]) == {
        "program": None,
        "added": {"--c": "3"},
        "removed": {"--b": ""},
        "changed": {"--a": ["1", "2"]},
    }


# ------------------------------------------------------------------------------------------- releases


def _weights(tmp_path: Path, name: str, files: dict[str, bytes], revision: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    locked = []
    for rel, data in files.items():
        (d / rel).write_bytes(data)
        locked.append(LockedFile(path=rel, size=len(data), git_oid=f"{hash(data) & 0xFFFFFFFF:040x}"))
    write_lock(
        d, Lock(repo="moonshotai/Kimi-K2.5", commit=f"{revision:0<40}"[:40], files=locked, revision=revision)
    )
    return d


def test_render_writes_releases_switches_current_and_keeps_history(tmp_path: Path) -> None:
    p = _plan(tmp_path, "k25", variant="int4")
    out = tmp_path / "rendered"
    w1 = _weights(tmp_path, "w1", {"a.safetensors": b"1" * 10, "config.json": b"{}"}, "aaaa")
    w2 = _weights(tmp_path, "w2", {"a.safetensors": b"1" * 10, "b.safetensors": b"2" * 7}, "bbbb")
    first = render(p, RenderOptions(out_dir=out, weights_dir=w1))
    again = render(p, RenderOptions(out_dir=out, weights_dir=w1))
    assert again.release_id == first.release_id  # the same inputs are the same release
    second = render(p, RenderOptions(out_dir=out, weights_dir=w2))
    assert second.release_id != first.release_id
    assert release_dir.current_id(out) == second.release_id
    assert release_dir.previous_id(out) == first.release_id
    assert [h["release"] for h in release_dir.read_history(out)] == [first.release_id, second.release_id]
    # the stable names follow current, and the unit starts the script through them
    assert os.readlink(out / "current") == f"releases/{second.release_id}"
    assert json.loads((out / "manifest.json").read_text())["model_path"] == str(w2)
    assert str(out / "launch-node0.sh") in (out / "kimi-deploy-node0.service").read_text()
    meta = release_dir.read_release(second.release_dir)
    assert meta["weights"]["dir"] == str(w2) and meta["weights"]["revision"] == "bbbb"
    assert meta["weights"]["bytes"] == 17
    assert (second.release_dir / "plan.json").is_file()
    # two releases with locks: only the file the old lock lacks is to download
    d = diff.diff(diff.load_side(first.release_dir), diff.load_side(out))
    assert d.download_bytes == 7
    assert {w for w, _, _ in d.changes} >= {"weights revision", "weights folder"}


def test_prune_keeps_current_and_previous(tmp_path: Path) -> None:
    p = _plan(tmp_path, "k25", variant="int4")
    out = tmp_path / "rendered"
    ids = [render(p, RenderOptions(out_dir=out, port=9000 + i, keep=1)).release_id for i in range(4)]
    assert sorted(release_dir.list_releases(out)) == sorted(ids[-2:])
    assert release_dir.current_id(out) == ids[-1] and release_dir.previous_id(out) == ids[-2]


def test_render_without_switch_leaves_current(tmp_path: Path) -> None:
    p = _plan(tmp_path, "k25", variant="int4")
    out = tmp_path / "rendered"
    first = render(p, RenderOptions(out_dir=out))
    staged = render(p, RenderOptions(out_dir=out, port=9100, switch_current=False))
    assert release_dir.current_id(out) == first.release_id
    assert json.loads((out / "manifest.json").read_text())["port"] != 9100
    release_dir.switch_current(out, staged.release_id, reason="test")
    assert json.loads((out / "manifest.json").read_text())["port"] == 9100


@pytest.mark.parametrize("bad", ["../x", "", "a/b", "."])
def test_release_names_are_checked(bad: str, tmp_path: Path) -> None:
    from deploy.errors import InputError

    with pytest.raises(InputError):
        release_dir.release_path(tmp_path, bad)


def test_rollback_target_passes_over_a_release_that_failed(tmp_path: Path) -> None:
    p = _plan(tmp_path, "k25", variant="int4")
    out = tmp_path / "rendered"
    ids = [render(p, RenderOptions(out_dir=out, port=9200 + i)).release_id for i in range(3)]
    assert release_dir.previous_id(out) == ids[1]
    release_dir.write_report(release_dir.release_path(out, ids[1]), "outcome", {"ok": False, "cause": "test"})
    assert release_dir.previous_id(out) == ids[0]


@pytest.mark.parametrize(
    "switches",
    [[{"release": "../../etc"}], [{"release": "a\n"}], [{"release": 7}], "not a list"],
    ids=["escape", "newline", "number", "not-a-list"],
)
def test_history_is_read_through_its_schema(switches: object, tmp_path: Path) -> None:
    (tmp_path / release_dir.HISTORY).write_text(json.dumps({"switches": switches}))
    with pytest.raises(Exception) as info:
        release_dir.read_history(tmp_path)
    assert info.type.__name__ == "PlanError" and "history.json" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("to_release", "../../victim"), ("op", "rm -rf"), ("pid", -1), ("schema", 2)],
)
def test_a_tampered_upgrade_journal_is_refused_in_one_line(field: str, value: object, tmp_path: Path) -> None:
    from deploy.releases import journal

    j = journal.begin(tmp_path, "upgrade", root=tmp_path / "rendered", from_release="a-1", to_release="b-2")
    data = json.loads((tmp_path / journal.JOURNAL).read_text())
    assert journal.load(tmp_path).id == j.id
    data[field] = value
    (tmp_path / journal.JOURNAL).write_text(json.dumps(data))
    with pytest.raises(Exception) as info:
        journal.load(tmp_path)
    assert info.type.__name__ == "PlanError" and field in str(info.value)
