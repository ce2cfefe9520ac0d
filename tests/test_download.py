"""`kimi-deploy download` end to end: the real huggingface_hub client against a real mirror process.

Faults the mirror cannot produce by itself (a flipped byte, a cut connection, a silent server, a slow link)
come from its fault-injection options; a tiny disk comes from ``KIMI_DEPLOY_FREE_BYTES`` (fault injection:
the destination reports that many free bytes). Everything else is real: processes, sockets, files, signals.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers.fake_repos import (
    GGUF_QUANTS,
    KD,
    SAFETENSORS_SHARDS,
    MirrorProcess,
    kd_env,
    make_gguf_repo,
    make_safetensors_repo,
    run_kd,
    stage,
    write_plan,
)

from deploy.weights.download import CLIENT_CHUNK_BYTES, DISK_MARGIN_MIN_BYTES, pattern_regex, select_files
from deploy.weights.lockfile import QUARANTINE_DIR, is_verified, read_lock
from deploy.weights.progress import PLAIN, TTY, Progress, pick_mode

GGUF = "unsloth/Kimi-K2.5-GGUF"
NATIVE = "moonshotai/Kimi-K2.5"
QUANT = "UD-TQ1_0"
DRAFT = "lightseekorg/kimi-k2.5-eagle3"
PART = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("repos")
    stage(make_gguf_repo(base / "src-gguf", part_bytes=PART), GGUF, base / "root")
    stage(make_safetensors_repo(base / "src-native", shard_bytes=32 * 1024), NATIVE, base / "root")
    draft = base / "src-draft"
    draft.mkdir()
    (draft / "model.safetensors").write_bytes(random.Random(7).randbytes(96 * 1024))
    (draft / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle3"]}))
    (draft / "README.md").write_text("# draft\n")
    stage(draft, DRAFT, base / "root")
    return base / "root"


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "hf-home").mkdir()
    return kd_env(hf_home=tmp_path / "hf-home")


def _gguf_plan(tmp_path: Path) -> tuple[Path, Path]:
    dest = tmp_path / "weights" / GGUF
    return write_plan(tmp_path / "plan.json", GGUF, [f"{QUANT}/*"], dest), dest


def _quant_files(root: Path) -> dict[str, int]:
    return {p.relative_to(root / GGUF).as_posix(): p.stat().st_size for p in (root / GGUF / QUANT).iterdir()}


def _weight_files(dest: Path) -> set[str]:
    return {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file()
        and not p.relative_to(dest).as_posix().startswith((".cache/", QUARANTINE_DIR + "/"))
        and p.name not in ("weights.lock", ".kimi-deploy-verified.json")
    }


# ---------------------------------------------------------------- selection (pure functions)


def test_star_stays_within_a_folder() -> None:
    paths = [
        f"{QUANT}/a-00001-of-00002.gguf",
        f"{QUANT}-imatrix/b.gguf",
        "UD-Q2_K_XL/c.gguf",
        "README.md",
        "docs/x.md",
        "config.json",
    ]
    assert select_files(paths, [f"{QUANT}/*"]) == [paths[0]]
    assert select_files(paths, ["*.json", "*.md"]) == ["README.md", "config.json"]
    assert select_files(paths, ["**/*.md"]) == ["README.md", "docs/x.md"]
    assert select_files(paths, ["docs/"]) == ["docs/x.md"]
    assert pattern_regex("model-000??-of-000064.safetensors").fullmatch("model-00007-of-000064.safetensors")


# ---------------------------------------------------------------- happy paths


def test_gguf_pattern_downloads_only_the_chosen_quant(
    root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    plan, dest = _gguf_plan(tmp_path)
    with MirrorProcess(root, env=env) as m:
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--json", env=env)
        assert r.returncode == 0, r.stderr
    expected = _quant_files(root)
    assert len(expected) == GGUF_QUANTS[QUANT]
    assert _weight_files(dest) == set(expected)
    summary = json.loads(r.stdout)
    assert summary["files"] == len(expected) and summary["bytes_fetched"] == sum(expected.values())
    assert summary["verified"] is True and is_verified(dest)
    lock = read_lock(dest)
    assert lock.commit == read_lock(root / GGUF).commit
    assert {f.path: f.size for f in lock.files} == expected
    assert {f.sha256 for f in lock.files} == {
        f.sha256 for f in read_lock(root / GGUF).files if f.path in expected
    }
    assert "download " in r.stderr  # plain progress lines when stderr is not a terminal
    assert not list((dest / ".cache").rglob("*.incomplete"))
    # A second run fetches nothing and stays verified.
    with MirrorProcess(root, env=env) as m:
        again = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--json", env=env)
        assert again.returncode == 0, again.stderr
        assert not [e for e in m.log_entries() if e.get("origin") == "lfs"]
    assert json.loads(again.stdout)["bytes_fetched"] == 0
    v = run_kd("verify", str(dest), env=env)
    assert v.returncode == 0 and "verified" in v.stdout


def test_safetensors_layout_and_hf_endpoint_with_path_prefix(
    root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    dest = tmp_path / "native"
    plan = write_plan(
        tmp_path / "plan.json", NATIVE, ["*.safetensors", "*.json", "chat_template.jinja"], dest
    )
    with MirrorProcess(root, "--path-prefix", "/artifactory/api/huggingface", env=env) as m:
        r = run_kd("download", "--plan", str(plan), env={**env, "HF_ENDPOINT": m.url})
        assert r.returncode == 0, r.stderr
    files = _weight_files(dest)
    shards = {f for f in files if f.endswith(".safetensors")}
    assert len(shards) == SAFETENSORS_SHARDS
    assert f"model-{SAFETENSORS_SHARDS:05d}-of-{SAFETENSORS_SHARDS:06d}.safetensors" in shards
    assert files - shards == {
        "config.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }  # docs/ not pulled
    assert is_verified(dest)


def _plan_with_draft(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A plan for the native repo's json files whose launch loads the EAGLE3 draft (as `plan --speculative`
    writes it); returns the plan, the weights folder and the draft's folder."""
    dest = tmp_path / "weights" / NATIVE
    draft_dir = tmp_path / "weights" / DRAFT
    plan = write_plan(tmp_path / "plan.json", NATIVE, ["*.json"], dest)
    data = json.loads(plan.read_text())
    data["candidates"][0]["engine_args"]["speculative"] = {
        "method": "eagle3",
        "draft_repo": DRAFT,
        "draft_model_path": str(draft_dir),
        "num_steps": 3,
        "eagle_topk": 1,
        "num_draft_tokens": 4,
    }
    plan.write_text(json.dumps(data))
    return plan, dest, draft_dir


def test_speculative_draft_model_is_downloaded_and_verified_beside_the_weights(
    root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """A plan with `--speculative eagle3` launches with a draft model: `download` fetches it into the folder
    the launch names, with its own weights.lock, and `verify --plan` checks both folders."""
    plan, dest, draft_dir = _plan_with_draft(tmp_path)
    with MirrorProcess(root, env=env) as m:
        r = run_kd("download", "--plan", str(plan), "--json", env={**env, "HF_ENDPOINT": m.url})
        assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["repo"] == NATIVE and out["draft"]["repo"] == DRAFT and out["draft"]["verified"]
    assert _weight_files(draft_dir) == {"model.safetensors", "config.json"}  # no README
    assert read_lock(draft_dir).repo == DRAFT and is_verified(draft_dir) and is_verified(dest)
    v = run_kd("verify", "--plan", str(plan), env=env)
    assert v.returncode == 0 and DRAFT in v.stdout and NATIVE in v.stdout, v.stdout + v.stderr
    # a flipped byte in the draft fails `verify --plan` (exit 5), naming the file
    shard = draft_dir / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    bad = run_kd("verify", "--plan", str(plan), env=env)
    assert bad.returncode == 5 and "model.safetensors" in bad.stderr, bad.stderr


def test_fan_out_from_a_downloaded_folder(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """The head downloads once, serves its weights folder; a worker downloads from the head."""
    plan, dest = _gguf_plan(tmp_path)
    with MirrorProcess(root, env=env) as hub:
        assert run_kd("download", "--plan", str(plan), "--endpoint", hub.url, env=env).returncode == 0
    worker_dest = tmp_path / "worker" / GGUF
    worker_plan = write_plan(tmp_path / "worker-plan.json", GGUF, [f"{QUANT}/*"], worker_dest)
    with MirrorProcess(tmp_path / "weights", env=env) as head:
        assert head.ready["repos"] == [GGUF]
        r = run_kd("download", "--plan", str(worker_plan), env={**env, "HF_ENDPOINT": head.url})
        assert r.returncode == 0, r.stderr
        served = {e["file"] for e in head.log_entries() if e.get("origin") == "lfs"}
    assert served == set(_quant_files(root))
    assert read_lock(worker_dest).commit == read_lock(dest).commit == read_lock(root / GGUF).commit
    assert _weight_files(worker_dest) == set(_quant_files(root)) and is_verified(worker_dest)


# ---------------------------------------------------------------- faults


def test_corrupt_byte_is_detected_and_set_aside(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    plan, dest = _gguf_plan(tmp_path)
    victim = sorted(_quant_files(root))[1]
    with MirrorProcess(root, "--fault-corrupt", victim, env=env) as m:
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, env=env)
    assert r.returncode == 5, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1 and victim in errors[0] and "quarantine" in errors[0] and "Traceback" not in r.stderr
    )
    assert not (dest / victim).exists()
    assert list((dest / QUARANTINE_DIR).rglob(Path(victim).name + ".*"))
    assert not is_verified(dest)
    with MirrorProcess(root, env=env) as m:
        fixed = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--json", env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["bytes_fetched"] == _quant_files(root)[victim]
    assert is_verified(dest)


def test_connection_dropped_mid_file_resumes(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    plan, dest = _gguf_plan(tmp_path)
    drop = PART * 3 // 4
    with MirrorProcess(root, "--fault-drop-after", str(drop), env=env) as m:
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, env=env)
        assert r.returncode == 0, r.stderr
        gets = [e for e in m.log_entries() if e.get("origin") == "lfs" and e["method"] == "GET"]
    assert is_verified(dest)
    cut = [e for e in gets if e["bytes"] == drop]
    resumed = [e for e in gets if e["status"] == 206]
    assert len(cut) == GGUF_QUANTS[QUANT]
    # Each cut file continued by Range from what it had kept (at least one client chunk), not from zero.
    assert {e["file"] for e in resumed} == {e["file"] for e in cut}
    assert all(CLIENT_CHUNK_BYTES <= e["start"] <= drop for e in resumed)


def test_stalled_server_is_retried(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    plan, dest = _gguf_plan(tmp_path)
    with MirrorProcess(root, "--fault-stall-after", str(PART // 2 + CLIENT_CHUNK_BYTES), env=env) as m:
        t0 = time.monotonic()
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--stall-seconds", "2", env=env)
        elapsed = time.monotonic() - t0
        resumed = [e for e in m.log_entries() if e.get("status") == 206]
    assert r.returncode == 0, r.stderr
    assert elapsed < 20  # the server stays silent for 20 s; the watchdog moved on long before
    assert len({e["file"] for e in resumed}) == GGUF_QUANTS[QUANT]
    assert is_verified(dest)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_then_rerun_refetches_little(sig: signal.Signals, tmp_path: Path, env: dict[str, str]) -> None:
    size = 64 * 1024 * 1024
    src = tmp_path / "src"
    (src / "big").mkdir(parents=True)
    (src / "big" / "model-00001-of-000001.safetensors").write_bytes(random.Random(7).randbytes(size))
    (src / "config.json").write_text("{}")
    stage(src, "acme/big", tmp_path / "root")
    name = "big/model-00001-of-000001.safetensors"
    dest = tmp_path / "dest"
    plan = write_plan(tmp_path / "plan.json", "acme/big", ["**"], dest)
    with MirrorProcess(tmp_path / "root", "--throttle", str(16 * 1024 * 1024), env=env) as m:
        proc = subprocess.Popen(
            [KD, "download", "--plan", str(plan), "--endpoint", m.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline, have = time.monotonic() + 60, 0
        while time.monotonic() < deadline and have < 0.6 * size:
            parts = list((dest / ".cache").rglob("*.incomplete")) if (dest / ".cache").exists() else []
            have = max((p.stat().st_size for p in parts), default=0)
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) != 0
        assert 0.6 * size <= have < size, "the kill did not land mid-file"
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--json", env=env)
        assert r.returncode == 0, r.stderr
    gets = [e for e in m.log_entries() if e.get("file") == name and e["method"] == "GET"]
    first_run, second = gets[0], gets[-1]
    refetched = sum(e["bytes"] for e in gets) - size
    print(
        f"killed at {have} of {size} bytes; first run served {first_run['bytes']}, rerun asked from "
        f"{second['start']}; re-fetched {refetched} bytes = {100 * refetched / size:.2f}%"
    )
    assert len(gets) == 2 and first_run["bytes"] >= 0.6 * size
    assert second["status"] == 206 and second["start"] >= 0.5 * size
    assert refetched <= 0.15 * size, f"re-fetched {refetched} of {size} bytes"
    assert json.loads(r.stdout)["bytes_resumed"] >= 0.5 * size
    assert not list((dest / ".cache").rglob("*.incomplete"))
    assert is_verified(dest)


@pytest.mark.slow
def test_server_down_longer_than_the_client_retries(tmp_path: Path, env: dict[str, str]) -> None:
    """The mirror dies mid-file and comes back on the same port only after the library has given up on
    its in-process retries (5 x 1 s): our retry with backoff resumes from the bytes kept, not from zero."""
    size = 32 * 1024 * 1024
    src = tmp_path / "src"
    src.mkdir()
    (src / "model-00001-of-000001.safetensors").write_bytes(random.Random(3).randbytes(size))
    stage(src, "acme/restart", tmp_path / "root")
    name = "model-00001-of-000001.safetensors"
    dest = tmp_path / "dest"
    plan = write_plan(tmp_path / "plan.json", "acme/restart", ["*.safetensors"], dest)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = ("--port", port, "--throttle", str(8 * 1024 * 1024))
    first = MirrorProcess(tmp_path / "root", *args, env=env)
    first.cmd.remove("0")
    first.cmd.remove("--port")
    with first:
        proc = subprocess.Popen(
            [KD, "download", "--plan", str(plan), "--endpoint", first.url],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        have, deadline = 0, time.monotonic() + 60
        while have < size // 2 and time.monotonic() < deadline:
            parts = list((dest / ".cache").rglob("*.incomplete")) if (dest / ".cache").exists() else []
            have = max((p.stat().st_size for p in parts), default=0)
            time.sleep(0.05)
    time.sleep(9)  # past the library's own retries: its temp file is gone now
    second = MirrorProcess(tmp_path / "root", *args, env=env)
    second.cmd.remove("0")
    second.cmd.remove("--port")
    with second:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    served = first.bytes_served(name) + second.bytes_served(name)
    resumed = [e for e in second.log_entries() if e.get("file") == name and e["method"] == "GET"]
    print(
        f"mirror down at {have} of {size}; resumed from {resumed[0]['start']}; "
        f"re-fetched {served - size} bytes = {100 * (served - size) / size:.2f}%"
    )
    assert "retrying" in err
    assert resumed and resumed[0]["status"] == 206 and resumed[0]["start"] >= size // 3
    assert served - size <= 0.15 * size
    assert is_verified(dest) and not list((dest / ".cache").rglob("*.incomplete*"))


def test_disk_too_small_refused_before_any_byte(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    plan, dest = _gguf_plan(tmp_path)
    need = sum(_quant_files(root).values())
    with MirrorProcess(root, env=env) as m:
        r = run_kd(
            "download",
            "--plan",
            str(plan),
            "--endpoint",
            m.url,
            env={**env, "KIMI_DEPLOY_FREE_BYTES": str(need + DISK_MARGIN_MIN_BYTES - 1)},
        )
        served = [e for e in m.log_entries() if "file" in e]
    assert r.returncode == 4, r.stderr
    assert str(need) in r.stderr and str(need + DISK_MARGIN_MIN_BYTES - 1) in r.stderr
    assert served == [] and not _weight_files(dest) if dest.exists() else served == []
    with MirrorProcess(root, env=env) as m:
        ok = run_kd(
            "download",
            "--plan",
            str(plan),
            "--endpoint",
            m.url,
            env={**env, "KIMI_DEPLOY_FREE_BYTES": str(need + DISK_MARGIN_MIN_BYTES)},
        )
    assert ok.returncode == 0, ok.stderr


def test_offline_complete_and_incomplete(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    plan, dest = _gguf_plan(tmp_path)
    with MirrorProcess(root, env=env) as m:
        assert run_kd("download", "--plan", str(plan), "--endpoint", m.url, env=env).returncode == 0
    # The mirror is gone: offline mode must not need it.
    for extra, args in (({}, ["--offline"]), ({"HF_HUB_OFFLINE": "1"}, [])):
        r = run_kd("download", "--plan", str(plan), *args, env={**env, **extra})
        assert r.returncode == 0, r.stderr
        assert "offline" in r.stdout
    gone = sorted(_quant_files(root))[-1]
    (dest / gone).unlink()
    r = run_kd("download", "--plan", str(plan), "--offline", env=env)
    assert r.returncode == 5
    assert gone in r.stderr and f"1 of {GGUF_QUANTS[QUANT]} files" in r.stderr
    nolock = write_plan(tmp_path / "plan2.json", GGUF, [f"{QUANT}/*"], tmp_path / "empty")
    r = run_kd("download", "--plan", str(nolock), "--offline", env=env)
    assert r.returncode == 2 and "weights.lock" in r.stderr


def test_token_protected_mirror_and_canary(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    canary = "hf_kdcanary" + os.urandom(12).hex()
    plan, dest = _gguf_plan(tmp_path)
    outputs = []
    with MirrorProcess(root, "--token-env", "MIRROR_TOKEN", env={**env, "MIRROR_TOKEN": canary}) as m:
        denied = run_kd("download", "--plan", str(plan), "--endpoint", m.url, env=env)
        outputs += [denied.stdout, denied.stderr]
        assert denied.returncode == 1
        assert GGUF in denied.stderr and "HF_TOKEN" in denied.stderr and "401" in denied.stderr
        assert "Traceback" not in denied.stderr
        ok = run_kd(
            "download", "--plan", str(plan), "--endpoint", m.url, "--json", env={**env, "HF_TOKEN": canary}
        )
        outputs += [ok.stdout, ok.stderr]
        assert ok.returncode == 0, ok.stderr
        # The usual token file (what `hf auth login` writes under HF_HOME) works as well as HF_TOKEN.
        (tmp_path / "hf-home" / "token").write_text(canary)
        (tmp_path / "hf-home" / "token").chmod(0o600)
        shutil.rmtree(dest)
        from_file = run_kd("download", "--plan", str(plan), "--endpoint", m.url, env=env)
        outputs += [from_file.stdout, from_file.stderr]
        assert from_file.returncode == 0, from_file.stderr
        (tmp_path / "hf-home" / "token").unlink()
        outputs.append(m.stop())
        outputs.append(m.log_path.read_text())
    assert is_verified(dest)
    for text in outputs:
        assert canary not in text
    for p in dest.rglob("*"):
        if p.is_file():
            assert canary.encode() not in p.read_bytes(), p


# ---------------------------------------------------------------- input errors and progress


def test_bad_inputs_are_one_line_errors(tmp_path: Path, env: dict[str, str]) -> None:
    r = run_kd("download", "--plan", str(tmp_path / "missing.json"), env=env)
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    plan, _ = _gguf_plan(tmp_path)
    r = run_kd("download", "--plan", str(plan), "--candidate", "nope", env=env)
    assert r.returncode == 2 and "nope" in r.stderr
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_kd(
        "download",
        "--plan",
        str(plan),
        "--endpoint",
        f"http://user:pw@127.0.0.1:{port}",
        "--retries",
        "0",
        env=env,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and GGUF in r.stderr
    assert "pw" not in r.stderr.replace("pw@", "") and "user:pw" not in r.stderr


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    assert pick_mode(_Tty()) == TTY and pick_mode(io.StringIO()) == PLAIN
    total = 4 * 10**9
    tty = _Tty()
    p = Progress(total, 2, stream=tty, mode=TTY)
    p.update(10**9, {"UD-TQ1_0/a.gguf": (10**9, 2 * 10**9)}, 0)
    time.sleep(0.01)
    p.update(2 * 10**9, {"UD-TQ1_0/a.gguf": (2 * 10**9, 2 * 10**9)}, 1)
    out = tty.getvalue()
    assert "\x1b[1A" in out and "UD-TQ1_0/a.gguf" in out and "50.0%" in out and "ETA" in out
    plain = io.StringIO()
    q = Progress(total, 2, stream=plain, mode=PLAIN, interval=3600)
    q.update(10**9, {}, 0)
    q.update(2 * 10**9, {}, 1)  # within the interval: no second line
    assert plain.getvalue().count("\n") == 1 and "\x1b" not in plain.getvalue()
    monkeypatch.setenv("TERM", "dumb")  # a terminal that cannot move the cursor gets the plain lines
    assert pick_mode(_Tty()) == PLAIN


def test_upgrade_weights_step_fetches_a_new_plans_draft_model(
    root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """`upgrade` to a plan with `--speculative`: its weights step brings the draft model too (into the folder
    the launch names, verified), and a second upgrade reuses the verified draft without fetching."""
    import io

    from deploy.planning.contract import load_plan
    from deploy.releases import upgrade

    plan, dest, draft_dir = _plan_with_draft(tmp_path)
    cand = load_plan(plan).chosen_candidate
    lines: list[str] = []
    with MirrorProcess(root, env=env) as m:
        opts = upgrade.UpgradeOptions(plan_path=plan, endpoint=m.url, out=io.StringIO())
        assert upgrade._weights(cand, {}, opts, lines.append) == dest
        assert is_verified(dest) and is_verified(draft_dir) and read_lock(draft_dir).repo == DRAFT
        assert any(line.startswith(f"  draft model: {DRAFT}@") for line in lines), lines
        lines.clear()
        upgrade._weights(cand, {"dir": str(dest)}, opts, lines.append)
    assert f"  draft model: {DRAFT} already in {draft_dir} (verified)" in lines, lines
