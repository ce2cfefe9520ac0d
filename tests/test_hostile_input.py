"""Hostile and broken input (issue 14): every case gives one `error:` line and a documented exit code; no
value the toolkit renders can run a command; no file outside its folder is touched; the API key is in no
process's argv. Each test names the case it pins down. The fuzz suite (tests/test_fuzz.py) covers the rest.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.plans import cpu_candidate
from helpers.systemd import Substitution, command_words

from deploy.hardware.profiles import load_profile
from deploy.planning.contract import Plan, Weights, save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving.quoting import parse_env_file, systemd_word
from deploy.weights import lockfile

REPO = Path(__file__).resolve().parents[1]
KD = [sys.executable, "-m", "deploy"]
KEY = "hostile-canary-key-5e1f"


def kd(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    full = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(cwd / "state"), **(env or {})}
    return subprocess.run(
        [*KD, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout, check=False
    )


def one_error_line(r: subprocess.CompletedProcess[str], code: int) -> str:
    """The run failed with ``code`` and exactly one `error:` line, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def h200_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    save_plan(plan(load_profile("h200x8")), path)
    return path


# ------------------------------------------------------------------------ injection through --bind / port


@pytest.mark.parametrize(
    "bind",
    ["$(touch pwned)", "`touch pwned`", "10.0.0.1; touch pwned", "10.0.0.1\ntouch pwned", "a b", "%n", ""],
)
def test_bind_injection_is_refused_and_nothing_runs(tmp_path: Path, h200_plan: Path, bind: str) -> None:
    r = kd(
        tmp_path,
        "render", "--plan", str(h200_plan), "--out", str(tmp_path / "out"), "--bind", bind,
        "--api-key-env", "KIMI_API_KEY",
        env={"KIMI_API_KEY": KEY},
    )  # fmt: skip
    if bind == "":  # an empty --bind means "the plan's": loopback, rendered fine
        assert r.returncode == 0, r.stderr
        return
    assert "not an IP address or host name" in one_error_line(r, 2)
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("port", ["-5", "0", "70000"])
def test_render_port_out_of_range_is_exit_2(tmp_path: Path, h200_plan: Path, port: str) -> None:
    r = kd(tmp_path, "render", "--plan", str(h200_plan), "--out", str(tmp_path / "o"), f"--port={port}")
    assert "not a port (1-65535)" in one_error_line(r, 2)


def test_playbook_bind_variable_is_refused_by_render(tmp_path: Path, h200_plan: Path) -> None:
    """The kimi_render role passes kimi_bind as an argv word to its own script, which runs render: the
    real script from the role, run as the role runs it, refuses the value and runs nothing."""
    tasks = yaml.safe_load((REPO / "playbooks/roles/kimi_render/tasks/main.yml").read_text())
    script = next(t for t in tasks if "kimi_render_script" in t.get("vars", {}))["vars"]["kimi_render_script"]
    kd_bin = tmp_path / "kd"
    kd_bin.write_text(f'#!/bin/sh\nexec {sys.executable} -m deploy "$@"\n')
    kd_bin.chmod(0o755)
    done = subprocess.run(
        ["sh", "-c", script, "kimi-render", str(kd_bin), str(h200_plan), str(tmp_path / "out"), "apply",
         "--bind", "$(touch pwned)", "--api-key-env", "KIMI_API_KEY"],
        cwd=tmp_path, env={**os.environ, "KIMI_API_KEY": KEY}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "not an IP address or host name" in done.stderr
    assert not (tmp_path / "pwned").exists()


def test_unit_lines_hand_every_value_to_the_program_unchanged(tmp_path: Path, h200_plan: Path) -> None:
    """systemd substitutes $VAR and %x inside quotes too: the rendered unit, read the way systemd reads it,
    gives bash exactly the launch script path and the readiness loop (an IPv6 bind, '%' in the folder)."""
    out = tmp_path / "50%_out"
    r = kd(
        tmp_path, "render", "--plan", str(h200_plan), "--out", str(out), "--bind", "::", "--port", "8123",
        "--api-key-env", "KIMI_API_KEY", env={"KIMI_API_KEY": KEY},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (unit,) = out.glob("*.service")
    lines = dict(line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line)
    assert command_words(lines["ExecStart"]) == ["/bin/bash", str(out.resolve() / "launch-node0.sh")]
    words = command_words(lines["ExecStartPost"])
    assert words[:2] == ["/bin/bash", "-c"] and "http://127.0.0.1:8123/health" in words[2]
    subprocess.run(["bash", "-n", "-c", words[2]], check=True)
    assert lines["WorkingDirectory"] == str(out.resolve()).replace("%", "%%")


def test_systemd_word_survives_every_special_character() -> None:
    for value in ['a"b', "a'b", "a\\b", "$HOME", "${X}", "%n", "50%", "a  b c", "$$", "end\\"]:
        assert command_words(systemd_word(value)) == [value]
    with pytest.raises(Substitution):
        command_words('"$HOME"')
    for bad in ["a\nb", "a\rb", "\x00"]:
        with pytest.raises(Exception, match="control character"):
            systemd_word(bad)


# ------------------------------------------------------------------------------------ the env file


ENV_CASES = {
    "KEY=plain-value_1.2:3@x,y/z+%=": "plain-value_1.2:3@x,y/z+%=",
    "export KEY=abc": "abc",
    "KEY='with spaces'": "with spaces",
    'KEY="double quoted"': "double quoted",
    "KEY=": "",
}
ENV_REFUSED = [
    "KEY='abc'\"'\"'def'",  # shell reads abc'def; a naive reader abc'"'"'def
    'KEY="a$HOME"',
    "KEY=a\\ b",
    "KEY=`id`",
    "KEY=$(id)",
    "KEY=abc # comment",
    "KEY='unterminated",
    "KEY=~/x",
    "1KEY=x",
    "no equals sign",
]


@pytest.mark.parametrize("line,value", list(ENV_CASES.items()))
def test_env_reader_reads_what_bash_reads(tmp_path: Path, line: str, value: str) -> None:
    env = tmp_path / "e.env"
    env.write_text(f"# comment\n\n{line}\n")
    sourced = subprocess.run(
        ["bash", "-c", f'set -a; . {env}; printf %s "$KEY"'], capture_output=True, text=True, check=True
    ).stdout
    assert parse_env_file(env) == {"KEY": value} and sourced == value


@pytest.mark.parametrize("line", ENV_REFUSED)
def test_env_reader_refuses_what_bash_could_read_differently(tmp_path: Path, line: str) -> None:
    from deploy.errors import InputError

    env = tmp_path / "e.env"
    env.write_text(line + "\n")
    with pytest.raises(InputError, match=r"line 1") as exc:
        parse_env_file(env)
    assert "abc'def" not in str(exc.value) and "HOME" not in str(exc.value)


def test_secret_with_a_quote_is_refused_by_render_not_written(tmp_path: Path, h200_plan: Path) -> None:
    r = kd(
        tmp_path, "render", "--plan", str(h200_plan), "--out", str(tmp_path / "o"), "--bind", "0.0.0.0",
        "--secrets-to-env-file", env={"KIMI_API_KEY": "it's-$ecret"},
    )  # fmt: skip
    line = one_error_line(r, 2)
    assert "KIMI_API_KEY" in line and "$ecret" not in r.stdout + r.stderr


def test_up_refuses_an_env_file_it_could_misread_and_never_prints_the_key(tmp_path: Path) -> None:
    """The case from the issue: a key with a quote, written with shell quoting; `up` used to print it."""
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    (rendered / "kimi-deploy.env").write_text("KIMI_API_KEY='abc'\"'\"'defghij'\n")
    (rendered / "kimi-deploy.env").chmod(0o600)
    wdir = tmp_path / "w"
    wdir.mkdir()
    (wdir / "m.gguf").write_bytes(b"GGUF")
    lock_entry = lockfile.LockedFile("m.gguf", 4, sha256=lockfile.sha256_file(wdir / "m.gguf"))
    lockfile.write_lock(wdir, lockfile.Lock("r/x", "0" * 40, [lock_entry]))
    assert lockfile.verify(wdir).ok
    weights = Weights("v", "r/x", "main", ["*.gguf"], 0, "gguf", local_dir=str(wdir))
    cand = cpu_candidate(weights, engine_args={"host": "127.0.0.1", "port": 8999, "served_model_name": "x"})
    save_plan(
        Plan(model={"name": "x"}, hardware={"nodes": [{"name": "n0"}]}, candidates=[cand], chosen=cand.id),
        tmp_path / "plan.json",
    )
    script = rendered / "launch-n0.sh"
    script.write_text('#!/usr/bin/env bash\necho "key=$KIMI_API_KEY"\nexit 1\n')
    script.chmod(0o755)
    r = kd(tmp_path, "up", "--plan", str(tmp_path / "plan.json"), "--rendered", str(rendered))
    assert "abc'defghij" not in r.stdout + r.stderr and "defghij" not in r.stdout + r.stderr
    assert "line 1" in one_error_line(r, 2)


# ------------------------------------------------------------------------------- the key is not in argv


@pytest.mark.parametrize(
    ("engine", "stub", "variable"), [("vllm", "vllm", "VLLM_API_KEY"), ("sglang", "python3", None)]
)
def test_api_key_reaches_the_engine_but_not_its_argv(
    tmp_path: Path, engine: str, stub: str, variable: str | None
) -> None:
    """The rendered launch script runs for real with a stand-in engine (the real ones need GPUs) that records
    its argv and environment: the key is in the engine's variable (vLLM) or its --config YAML (SGLang)."""
    path = tmp_path / "plan.json"
    save_plan(plan(load_profile("h200x8"), PlanRequest(engine=engine)), path)
    out = tmp_path / "out"
    r = kd(tmp_path, "render", "--plan", str(path), "--out", str(out), "--bind", "0.0.0.0",
           env={"KIMI_API_KEY": KEY})  # fmt: skip
    assert r.returncode == 0, r.stderr
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "seen.json"
    (bin_dir / stub).write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "seen = {'argv': open('/proc/self/cmdline').read(), 'env': dict(os.environ)}\n"
        f"json.dump(seen, open({str(record)!r}, 'w'))\n"
    )
    (bin_dir / stub).chmod(0o755)
    env = {**os.environ, "KIMI_API_KEY": KEY}
    text = (out / "launch-node0.sh").read_text().replace("export PATH=", f"export PATH={bin_dir}:", 1)
    (out / "launch-node0.sh").write_text(text)
    subprocess.run(["bash", str(out / "launch-node0.sh")], env={**env, "PATH": f"{bin_dir}:{env['PATH']}"},
                   check=True, timeout=60)  # fmt: skip
    seen = json.loads(record.read_text())
    assert KEY not in seen["argv"]
    if variable:
        assert seen["env"][variable] == KEY
    else:
        args = seen["argv"].split("\0")
        config = Path(args[args.index("--config") + 1])
        assert yaml.safe_load(config.read_text()) == {"api-key": KEY}
        assert stat.S_IMODE(config.stat().st_mode) == 0o600


# ---------------------------------------------------------------------- -o: symlinks, devices, FIFOs


def test_output_through_a_symlink_writes_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real-plan.json"
    target.write_text("old\n")
    link = tmp_path / "plan.json"
    link.symlink_to(target)
    r = kd(tmp_path, "plan", "--hardware", "ci-24g", "--model", "demo", "-o", str(link))
    assert r.returncode in (0, 3), r.stderr
    assert link.is_symlink() and json.loads(target.read_text())["schema"] == 1


@pytest.mark.parametrize("kind", ["fifo", "directory", "chardev"])
def test_output_onto_a_fifo_device_or_directory_is_refused(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        dest = tmp_path / "plan.json"
        os.mkfifo(dest)
    elif kind == "directory":
        dest = tmp_path / "plan.json"
        dest.mkdir()
    else:
        dest = tmp_path / "null-link"
        dest.symlink_to("/dev/null")  # a symlink to a device: written through would be to /dev/null
    r = kd(tmp_path, "plan", "--hardware", "ci-24g", "--model", "demo", "-o", str(dest))
    line = one_error_line(r, 2)
    assert "refusing to replace it" in line or "is a directory" in line
    assert Path("/dev/null").is_char_device()
    if kind == "fifo":
        assert stat.S_ISFIFO(os.stat(dest).st_mode)


@pytest.mark.parametrize("kind", ["fifo", "directory", "binary", "deep", "nan"])
def test_plan_that_is_not_a_json_file_is_one_line_and_never_blocks(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "plan.json"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "directory":
        p.mkdir()
    elif kind == "binary":
        p.write_bytes(b"\xff\xfe\x00garbage")
    elif kind == "deep":
        p.write_text("[" * 100000 + "]" * 100000)
    else:
        p.write_text('{"schema": NaN}')
    for verb in (["render", "--out", str(tmp_path / "o")], ["check"], ["up"]):
        r = kd(tmp_path, verb[0], "--plan", str(p), *verb[1:], timeout=30)
        assert str(p) in one_error_line(r, 2), verb


# -------------------------------------------------------------- verify and the weights folder's paths


def _lock_with(d: Path, path: str, digest: str = "0" * 64) -> None:
    d.mkdir(parents=True, exist_ok=True)
    lock = {
        "schema": 1,
        "repo": "o/n",
        "commit": "a" * 40,
        "files": [{"path": path, "size": 6, "sha256": digest}],
    }
    (d / "weights.lock").write_text(json.dumps(lock))


@pytest.mark.parametrize("entry", ["../victim.txt", "VICTIM_ABS", "a/../../victim.txt", "./x", ""])
def test_verify_refuses_lock_paths_outside_the_folder(tmp_path: Path, entry: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("victim")
    before = victim.stat()
    d = tmp_path / "weights"
    _lock_with(d, str(victim) if entry == "VICTIM_ABS" else entry)
    line = one_error_line(kd(tmp_path, "verify", str(d)), 2)
    assert "weights.lock" in line and "path" in line
    after = victim.stat()
    assert victim.read_text() == "victim" and (after.st_ino, after.st_mtime_ns) == (
        before.st_ino,
        before.st_mtime_ns,
    )
    assert not (d / ".quarantine").exists()


def test_verify_moves_a_mismatching_symlink_not_its_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_text("wrong!")
    d = tmp_path / "weights"
    _lock_with(d, "m.bin")
    (d / "m.bin").symlink_to(outside)
    assert kd(tmp_path, "verify", str(d)).returncode == 5
    assert outside.read_text() == "wrong!" and not (d / "m.bin").is_symlink()
    (moved,) = (d / ".quarantine").iterdir()
    assert moved.is_symlink() and moved.resolve() == outside


def test_verify_refuses_a_symlinked_folder_leading_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("victim")
    d = tmp_path / "weights"
    d.mkdir()
    (d / "sub").symlink_to(outside)
    _lock_with(d, "sub/victim.txt")
    assert "leads outside" in one_error_line(kd(tmp_path, "verify", str(d)), 2)
    assert (outside / "victim.txt").read_text() == "victim"


def test_verify_never_quarantines_through_a_symlinked_quarantine(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    d = tmp_path / "weights"
    d.mkdir()
    (d / "m.bin").write_text("wrong!")
    (d / ".quarantine").symlink_to(outside)
    _lock_with(d, "m.bin")
    assert ".quarantine" in one_error_line(kd(tmp_path, "verify", str(d)), 2)
    assert (d / "m.bin").read_text() == "wrong!" and not any(outside.iterdir())


def test_verify_inside_the_folder_still_quarantines(tmp_path: Path) -> None:
    d = tmp_path / "weights"
    _lock_with(d, "sub/m.bin")
    (d / "sub").mkdir()
    (d / "sub" / "m.bin").write_text("wrong!")
    r = kd(tmp_path, "verify", str(d))
    assert r.returncode == 5 and not (d / "sub" / "m.bin").exists()
    assert [p.name.startswith("m.bin.") for p in (d / ".quarantine" / "sub").iterdir()] == [True]


@pytest.mark.parametrize("repo", ["../x", "a/../../x", "/abs/x", "o/n/extra", "o/..", "$(id)/x"])
def test_mirror_stage_repo_cannot_leave_into(tmp_path: Path, repo: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    into = tmp_path / "deep" / "into"
    r = kd(tmp_path, "mirror", "stage", str(src), "--repo", repo, "--into", str(into))
    assert "--repo" in one_error_line(r, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"] or not (tmp_path / "x").exists()
    assert not (tmp_path / "x").exists() and not (tmp_path / "deep" / "x").exists()


# ---------------------------------------------------------------------------- schemas: plan, profile


def _mutated_plan(tmp_path: Path, h200_plan: Path, mutate) -> Path:
    data = json.loads(h200_plan.read_text())
    mutate(data, data["candidates"][[c["id"] for c in data["candidates"]].index(data["chosen"])])
    out = tmp_path / "bad-plan.json"
    out.write_text(json.dumps(data))
    return out


PLAN_CASES = {
    "max_model_len abc": (lambda d, c: c.update(max_model_len="abc"), "max_model_len"),
    "tensor_parallel -8": (lambda d, c: c.update(tensor_parallel=-8), "tensor_parallel"),
    "candidates as a mapping": (lambda d, c: d.update(candidates={"a": 1}), "candidates"),
    "engine_args null": (lambda d, c: c.update(engine_args=None), "engine_args"),
    "host injection": (lambda d, c: c["engine_args"].update(host="$(touch pwned)"), "engine_args.host"),
    "port 70000": (lambda d, c: c["engine_args"].update(port=70000), "engine_args.port"),
    "served name newline": (
        lambda d, c: c["engine_args"].update(served_model_name="kimi\nExecStartPre=/bin/sh"),
        "served_model_name",
    ),
    "node name slash": (lambda d, c: d["hardware"]["nodes"][0].update(name="../etc"), "nodes[0].name"),
    "numa_nodes two": (lambda d, c: d["hardware"]["nodes"][0]["cpu"].update(numa_nodes="two"), "numa_nodes"),
    "repo escape": (lambda d, c: c["weights"].update(repo="../../etc"), "weights.repo"),
    "chosen unknown": (lambda d, c: d.update(chosen="nope"), "chosen"),
    # well-formed values that contradict each other: caught before anything is rendered
    "pipeline 64 on one node": (lambda d, c: c.update(pipeline_parallel=64), "ranks on 8 device(s)"),
    "two nodes on one": (lambda d, c: c.update(nodes=2), "nodes 2 but the plan's hardware has 1"),
    "16 GPUs per 8-GPU node": (lambda d, c: c.update(gpus_per_node=16), "gpus_per_node 16"),
    "context above its KV cache": (
        lambda d, c: c.update(max_model_len=c["kv_cache_tokens"] + 1),
        "is above its KV cache",
    ),
    "context above the model": (
        lambda d, c: c.update(max_model_len=d["model"]["max_position_embeddings"] * 2, kv_cache_tokens=10**7),
        "above the model's",
    ),
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_malformed_plan_names_the_key_exit_2(tmp_path: Path, h200_plan: Path, case: str) -> None:
    mutate, key = PLAN_CASES[case]
    bad = _mutated_plan(tmp_path, h200_plan, mutate)
    r = kd(tmp_path, "render", "--plan", str(bad), "--out", str(tmp_path / "o"))
    line = one_error_line(r, 2)
    assert str(bad) in line and key in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "pwned").exists()


PROFILE_CASES = {
    "ram NaN": ("ram_gib: 2048", "ram_gib: .nan", "NaN"),
    "ram inf": ("ram_gib: 2048", "ram_gib: .inf", "NaN or infinity"),
    "negative cores": ("physical_cores: 112", "physical_cores: -4", "physical_cores"),
    "numa two": ("numa_nodes: 2", "numa_nodes: two", "numa_nodes"),
    "gpu count huge": ("count: 8", "count: 1000000000", "count"),
}


@pytest.mark.parametrize("case", list(PROFILE_CASES))
def test_malformed_profile_is_refused_not_planned(tmp_path: Path, case: str) -> None:
    old, new, reason = PROFILE_CASES[case]
    text = (REPO / "hardware" / "h200x8.yaml").read_text()
    assert old in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(old, new))
    r = kd(tmp_path, "plan", "--hardware", str(bad))
    assert reason in one_error_line(r, 2)


def test_gpus_spec_has_limits(tmp_path: Path) -> None:
    r = kd(tmp_path, "plan", "--gpus", "1x1000000000xH100", timeout=20)
    assert "at most" in one_error_line(r, 2)


def test_planning_1024_nodes_takes_seconds_not_minutes(tmp_path: Path) -> None:
    """The linear per-GiB remediation scan made 1,024 nodes take over two minutes; a binary search and
    per-stage layer counting by bisection bring it to a few seconds (bound: 60 s on this 2-core box)."""
    t0 = time.monotonic()
    r = kd(tmp_path, "plan", "--gpus", "1024x8xH100", "-o", str(tmp_path / "p.json"), timeout=120)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 < 60
    assert len(json.loads((tmp_path / "p.json").read_text())["hardware"]["nodes"]) == 1024


def test_plan_schema_page_is_up_to_date() -> None:
    from deploy.planning.plan_schema import markdown

    assert (REPO / "docs" / "reference" / "plan-schema.md").read_text() == markdown()


def test_every_planned_profile_matches_the_plan_schema() -> None:
    from deploy.hardware.profiles import available_profiles
    from deploy.planning.plan_schema import PLAN_SCHEMA
    from deploy.schema import validate

    for name in available_profiles():
        validate(plan(load_profile(name)).to_dict(), PLAN_SCHEMA, name)


# ---------------------------------------------------------------------- check: deadlines and sizes


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e9"])
def test_check_timeout_must_be_positive_and_finite(tmp_path: Path, h200_plan: Path, value: str) -> None:
    r = kd(tmp_path, "check", "--plan", str(h200_plan), f"--timeout={value}")
    assert "--timeout" in one_error_line(r, 2)


#: Runs a command from a fresh, small interpreter and writes its peak RSS (KiB) to argv[1]. A child's
#: ru_maxrss counts the pages of whoever forked it (at fork, before exec), so measuring from the pytest
#: process itself (hundreds of MB late in a full run) would measure pytest, not the command.
PEAK_RSS = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[2], sys.argv[2:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _hostile_server(mode: str):
    """A real HTTP server on loopback that answers every request either one byte every 0.2 s for ever
    (``trickle``) or with an endless body as fast as it can (``endless``); it stops with the test."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"{" if mode == "trickle" else b" " * 65536
            try:
                for _ in range(3000 if mode == "trickle" else 20000):  # bounded: 10 min / 1.3 GB at most
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    if mode == "trickle":
                        time.sleep(0.2)
            except OSError:
                pass

        do_GET = do_POST = _answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("mode", ["trickle", "endless"])
def test_check_is_bounded_against_a_hostile_server(tmp_path: Path, mode: str) -> None:
    """Per-read timeouts never trip on a server that trickles a byte at a time; the overall deadline does,
    and an endless body is cut at the size limit instead of filling memory."""
    server = _hostile_server(mode)
    argv = [
        *KD,
        "check",
        "--url",
        f"http://127.0.0.1:{server.server_address[1]}",
        "--model",
        "m",
        "--timeout",
        "2",
    ]
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(tmp_path / "state")}
    rss_file = tmp_path / "peak-rss-kib"
    try:
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-c", PEAK_RSS, str(rss_file), *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - t0
    finally:
        server.shutdown()
    assert r.returncode == 7 and "Traceback" not in r.stderr, r.stderr
    assert elapsed < 120, elapsed
    peak_kib = int(rss_file.read_text())
    # the child's peak memory stayed far below the 1.3 GB the endless server offered
    assert peak_kib < 600 * 1024, peak_kib


# ---------------------------------------------------------- mirror, ansible, manifest, state, samples


def _staged(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.gguf").write_bytes(b"GGUF" * 10)
    into = tmp_path / "into"
    assert kd(tmp_path, "mirror", "stage", str(src), "--repo", "o/n", "--into", str(into)).returncode == 0
    return into


def test_mirror_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    import socket

    into = _staged(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = kd(tmp_path, "mirror", "serve", str(into), "--port", str(port), timeout=30)
    assert "cannot listen on" in one_error_line(r, 2)


def test_mirror_lfs_port_answers_403_to_a_non_ascii_signature(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    from deploy.weights.mirror import MirrorConfig, MirrorServer

    srv = MirrorServer(MirrorConfig(root=_staged(tmp_path)))
    srv.start()
    try:
        sha = next(iter(srv.repos["o/n"].by_sha))
        url = f"{srv.lfs_url}/lfs/o/n/{sha}?exp=99999999999&sig=%C3%A9%E2%82%AC"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(url, timeout=10)
        assert exc.value.code == 403
    finally:
        srv.stop()


def test_ansible_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    """Fault injected (a real venv without the extra would take minutes to build): a module on PYTHONPATH
    that fails to import stands in for the missing ansible_runner package."""
    shadow = tmp_path / "shadow" / "ansible_runner"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named ansible_runner')\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost:\n")
    r = kd(tmp_path, "ansible", "-i", str(inventory), env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert "kimi-deploy[ansible]" in one_error_line(r, 2)


@pytest.mark.parametrize("kind", ["fifo", "binary", "bad port", "file name with a folder"])
def test_broken_manifest_is_one_line(tmp_path: Path, h200_plan: Path, kind: str) -> None:
    out = tmp_path / "rendered"
    assert kd(tmp_path, "render", "--plan", str(h200_plan), "--out", str(out)).returncode == 0
    manifest = (out / "manifest.json").resolve()  # the current release's own file
    data = json.loads(manifest.read_text())
    manifest.unlink()
    if kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "binary":
        manifest.write_bytes(b"\x00\xff" * 10)
    elif kind == "bad port":
        manifest.write_text(json.dumps({**data, "port": "8000; id"}))
    else:
        data["nodes"][0]["launch"] = "../../../bin/sh"
        manifest.write_text(json.dumps(data))
    r = kd(tmp_path, "up", "--plan", str(h200_plan), "--rendered", str(out), timeout=30)
    assert "manifest.json" in one_error_line(r, 2)


def test_pidfile_naming_init_is_never_signalled(tmp_path: Path) -> None:
    from deploy.serving import supervise

    files = supervise.RunFiles.for_node(tmp_path / "state", "n0")
    files.pidfile.parent.mkdir(parents=True, exist_ok=True)
    files.pidfile.write_text(json.dumps({"pid": 1, "pgid": 1, "run_id": "x"}))
    assert supervise.running(files) is None
    r = kd(tmp_path, "down", env={"KIMI_DEPLOY_STATE_DIR": str(tmp_path / "state")})
    assert r.returncode in (0, 1, 2) and "Traceback" not in r.stderr


def test_tool_call_samples_fifo_never_blocks(tmp_path: Path) -> None:
    from deploy.checking.toolset import load_samples
    from deploy.errors import InputError

    fifo = tmp_path / "samples.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        load_samples(fifo)


# ------------------------------------------------------ download: what was checked, disk full, restarts


def test_offline_download_says_it_did_not_rehash(tmp_path: Path) -> None:
    """A flipped byte with size and mtime unchanged: `download --offline` must not claim more than it
    checked (size + mtime against the last verify), and `verify` (which re-hashes) finds it."""
    into = _staged(tmp_path)
    d = into / "o" / "n"
    assert kd(tmp_path, "verify", str(d)).returncode == 0
    f = d / "m.gguf"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    weights = Weights("v", "o/n", "main", ["*"], 0, "gguf", local_dir=str(d))
    cand = cpu_candidate(weights, engine_args={"host": "127.0.0.1", "port": 8999, "served_model_name": "x"})
    save_plan(
        Plan(model={"name": "x"}, hardware={"nodes": [{"name": "n0"}]}, candidates=[cand], chosen=cand.id),
        tmp_path / "plan.json",
    )
    r = kd(tmp_path, "download", "--plan", str(tmp_path / "plan.json"), "--offline", "--dest", str(d))
    assert r.returncode == 0, r.stderr
    assert "size and mtime only" in r.stdout and "0 hashed" not in r.stdout
    assert kd(tmp_path, "verify", str(d)).returncode == 5


def test_disk_full_during_download_is_exit_4_not_a_network_error() -> None:
    """Fault injected: a real full disk needs a mount this test cannot make; the library's write fails
    with ENOSPC wrapped the way huggingface_hub wraps it."""
    import errno

    from deploy.errors import DiskSpaceError
    from deploy.weights.download import _with_retries

    calls = []

    def write() -> None:
        calls.append(1)
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/models/x/model.gguf")
        except OSError as exc:
            raise RuntimeError("download failed") from exc

    with pytest.raises(DiskSpaceError, match="disk full writing /models/x/model.gguf"):
        _with_retries(write, "o/n", "http://127.0.0.1:9", retries=3, backoff_s=0, progress=None)
    assert calls == [1]  # not retried as if the network had failed


def test_signed_url_from_before_a_mirror_restart_is_re_resolved_not_auth(tmp_path: Path) -> None:
    """A real mirror signs a large-file URL; a restarted mirror (new key, same ports) answers 403 to it.
    That 403 comes from the large-file origin, so the download retries (asking the hub again), while a
    403 from the hub itself stays an auth failure."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx

    from deploy.errors import AuthError
    from deploy.weights.download import _signed_url_refused, _with_retries
    from deploy.weights.mirror import MirrorConfig, MirrorServer

    into = _staged(tmp_path)
    first = MirrorServer(MirrorConfig(root=into))
    first.start()
    hub_port, lfs_port = first.hub.server_address[1], first.lfs.server_address[1]
    head = httpx.head(f"{first.url}/o/n/resolve/main/m.gguf", follow_redirects=False, timeout=10)
    signed = head.headers["location"]
    first.stop()
    second = MirrorServer(MirrorConfig(root=into, port=hub_port, lfs_port=lfs_port))
    second.start()
    try:
        stale = httpx.get(signed, timeout=10)
        assert stale.status_code == 403
        try:
            stale.raise_for_status()
        except httpx.HTTPStatusError as exc:
            refused = exc
        assert _signed_url_refused(refused, second.url)
        attempts = []

        def fetch() -> str:
            attempts.append(1)
            if len(attempts) == 1:
                raise refused
            return "fetched with a fresh URL"

        assert (
            _with_retries(fetch, "o/n", second.url, retries=2, backoff_s=0, progress=None)
            == "fetched with a fresh URL"
        )
        hub_403 = httpx.Response(403, request=httpx.Request("GET", f"{second.url}/api/models/o/n"))
        auth = httpx.HTTPStatusError("403", request=hub_403.request, response=hub_403)
        assert not _signed_url_refused(auth, second.url)

        def denied() -> None:
            raise auth

        with pytest.raises(AuthError):
            _with_retries(denied, "o/n", second.url, retries=2, backoff_s=0, progress=None)
    finally:
        second.stop()


def test_every_reader_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """read_json is the drop-in for json.loads(path.read_text()) in every stage that has no schema of its
    own (releases, journal, reports): a FIFO is an OSError and bad input at once, never a hang."""
    from deploy.errors import InputError
    from deploy.fsutil import NotJson, NotReadable, read_json

    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)
    with pytest.raises(NotReadable) as exc:
        read_json(fifo)
    assert isinstance(exc.value, OSError) and isinstance(exc.value, InputError)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(NotJson) as exc2:
        read_json(deep)
    assert isinstance(exc2.value, ValueError)


@pytest.mark.parametrize(
    ("entry", "code"), [("sub", 5), ("sub/m.bin/x", 5), ("weights.lock", 2), (".quarantine/x", 2)]
)
def test_verify_never_moves_a_folder_or_its_own_bookkeeping(tmp_path: Path, entry: str, code: int) -> None:
    """Found by the fuzz suite: a lock entry naming a folder moved the whole folder aside, one naming
    weights.lock quarantined the lock itself, and a path through a file was a traceback."""
    d = tmp_path / "weights"
    _lock_with(d, entry)
    (d / "sub").mkdir()
    (d / "sub" / "m.bin").write_text("keep me")
    assert one_error_line(kd(tmp_path, "verify", str(d)), code)
    assert (d / "sub" / "m.bin").read_text() == "keep me" and (d / "weights.lock").is_file()


# ---------------------------------------------------------------------- issue 27: remaining tracebacks


@pytest.mark.parametrize("url", ["http://[::1", "http://h:abc/v1", "http://h:99999/v1", "http://[::1/v1"])
@pytest.mark.parametrize("verb", ["check", "check-reference", "bench", "download"])
def test_a_malformed_url_is_one_error_line(tmp_path: Path, h200_plan: Path, url: str, verb: str) -> None:
    args = {
        "check": ["check", "--url", url, "--model", "m"],
        "check-reference": [
            "check",
            "--plan",
            str(h200_plan),
            "--reference-url",
            url,
            "--reference-model",
            "m",
        ],
        "bench": ["bench", "--url", url, "--model", "m", "--tokenizer", str(tmp_path)],
        "download": ["download", "--plan", str(h200_plan), "--offline", "--endpoint", url],
    }[verb]
    r = kd(tmp_path, *args, env={"KIMI_API_KEY": KEY})
    line = one_error_line(r, 2)
    assert "internal error" not in line


def test_aiperf_error_summary_of_the_wrong_type_is_one_error_line(tmp_path: Path) -> None:
    from deploy.benchmark.export import read_export
    from deploy.errors import KimiDeployError

    doc = json.loads(
        (REPO / "tests" / "fixtures" / "aiperf" / "profile_export_aiperf-llamacpp-c1.json").read_text()
    )
    for bad in ([{"count": "many"}], [{"count": 2, "error_details": "boom"}], [{"count": -4}]):
        doc["error_summary"] = bad
        path = tmp_path / "export.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(KimiDeployError, match="error_summary"):
            read_export(path, 1)


@pytest.mark.parametrize("port", ['"8000x"', "8000.5", "70000", '"abc"'])
def test_a_pidfile_with_a_port_that_is_not_one_is_no_pidfile(tmp_path: Path, port: str) -> None:
    """`status` reads it as no pidfile (never a traceback, never a signal to what it names)."""
    run = tmp_path / "state" / "run"
    run.mkdir(parents=True)
    (run / "head.json").write_text(f'{{"pid": {os.getpid()}, "port": {port}, "listen": "127.0.0.1:{port}"}}')
    r = kd(tmp_path, "status")
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr


def test_an_unforeseen_exception_is_one_line_without_debug(tmp_path: Path) -> None:
    """The CLI's last net (deploy.cli.main): outside tests (KIMI_DEPLOY_DEBUG unset) a bug is one `error:`
    line naming the exception, exit 1, no Traceback; with KIMI_DEPLOY_DEBUG=1 (as tests/conftest.py sets for
    every other test) the Traceback shows. The bug is injected (a real one is fixed as soon as it is found):
    `inventory`'s probe is replaced by one that raises, in a real `kimi-deploy` process."""
    program = (
        "import sys\n"
        "from deploy.hardware import inventory\n"
        "def probe(*args, **kwargs):\n"
        "    raise ZeroDivisionError('an injected bug')\n"
        "inventory.probe = probe\n"
        "from deploy.cli import main\n"
        "main(['inventory', '--no-bandwidth', '--no-read-test'])\n"
    )
    quiet = {k: v for k, v in os.environ.items() if k != "KIMI_DEPLOY_DEBUG"}
    r = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, env=quiet, capture_output=True, text=True, timeout=60
    )
    line = one_error_line(r, 1)
    assert "internal error (ZeroDivisionError: an injected bug)" in line and "KIMI_DEPLOY_DEBUG=1" in line
    loud = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env={**quiet, "KIMI_DEPLOY_DEBUG": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "an injected bug" in loud.stderr
    assert "internal error" not in loud.stderr
