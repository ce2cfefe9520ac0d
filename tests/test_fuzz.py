"""Fuzz suite (issue 14): hypothesis mutates real plans, hardware profiles, weights locks, manifests, env
files and command-line values, and drives the verbs as subprocesses (``python -m deploy ...``), asserting
for every run: no traceback, no hang (a per-run deadline), an exit code from the documented set
(deploy/errors.py), and nothing written outside the run's own temp folder (hostile values aim at its
parent: ``../``, ``$(touch ...)``, absolute paths).

Repeatable and bounded: ``derandomize=True`` (the same examples every run) and a fixed number of examples
per input kind; FUZZ_RUNS below is the total count of subprocess runs. Verbs that would reach beyond the
machine are driven only in ways that cannot: ``download --offline``, ``check --url`` on a closed loopback
port; ``up`` never gets past its checks (the weights folders are never verified), and no pidfile is ever
fuzzed (``down`` would signal what it names).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.hardware.profiles import load_profile
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan

REPO = Path(__file__).resolve().parents[1]
#: 0 ok, 1 failure, 2 bad input, 3 nothing runnable, 4 disk, 5 verification, 6 launch, 7 check
EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7}
RUN_DEADLINE_S = 60
EXAMPLES = {"plan": 16, "profile": 20, "lock": 20, "manifest": 12, "args": 24, "hostile": 6}
#: runs per example: plan -> render, download --offline, up; the others one each
FUZZ_RUNS = (
    3 * EXAMPLES["plan"]
    + EXAMPLES["profile"]
    + EXAMPLES["lock"]
    + EXAMPLES["manifest"]
    + EXAMPLES["args"]
    + 4 * EXAMPLES["hostile"]
)

HOSTILE_STRINGS = [
    "$(touch ../PWNED)",
    "`touch ../PWNED`",
    "x; touch ../PWNED",
    "a\nExecStartPre=/bin/touch ../PWNED",
    "../PWNED",
    "../../PWNED",
    "/tmp",
    "",
    " ",
    "%n%h$HOME",
    "'\"\\",
    "é€\u202e",
    "A" * 5000,
    "0.0.0.0",
    "::1",
    "-5",
    "nan",
]
HOSTILE_NUMBERS = [-1, 0, 1, -8, 2**63, 2**31, 70000, 1e308, -1e-9, 0.5]
WRONG_TYPES: list[Any] = [None, [], {}, True, "two", [1, 2], {"a": {"b": {}}}]
VALUES = st.sampled_from(HOSTILE_STRINGS + HOSTILE_NUMBERS + WRONG_TYPES)
SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k in sorted(doc, key=str):
            out += _paths(doc[k], (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            out += _paths(v, (*prefix, i))
    return out


def mutate(doc: Any, edits: list[tuple[int, str, Any]]) -> Any:
    """Apply ``(path index, kind, value)`` edits: ``set`` a value, ``drop`` a key, ``wrap`` it in a list."""
    doc = json.loads(json.dumps(doc))
    for index, kind, value in edits:
        paths = _paths(doc)
        path = paths[index % len(paths)]
        if not path:
            doc = value if kind == "set" else [doc]
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if kind == "drop" and isinstance(parent, dict):
            del parent[key]
        elif kind == "wrap":
            parent[key] = [parent[key]]
        else:
            parent[key] = value
    return doc


EDITS = st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(["set", "set", "set", "drop", "wrap"]), VALUES),
    min_size=1,
    max_size=3,
)
#: whole-file damage instead of a structured edit, one time in five
RAW = st.sampled_from([None, None, None, None, b"\xff\xfe\x00", b"[" * 5000, b"{", b"", b'{"schema": NaN}'])


def write_doc(path: Path, doc: Any, raw: bytes | None, yaml_format: bool = False) -> None:
    if raw is not None:
        path.write_bytes(raw)
    elif yaml_format:
        import yaml

        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    else:
        path.write_text(json.dumps(doc))


class Run:
    """One example's sandbox: ``base/run`` is the working folder; hostile values aim at ``base``."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="kimi-fuzz-")
        self.base = Path(self._tmp.name)
        self.dir = self.base / "run"
        self.dir.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(self.dir / "home"),
            "KIMI_DEPLOY_STATE_DIR": str(self.dir / "state"),
            "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": "http://127.0.0.1:9",  # discard port: nothing leaves the machine
            "KIMI_API_KEY": "fuzz-key-123456",
        }

    def kd(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            r = subprocess.run(
                [sys.executable, "-m", "deploy", *args],
                cwd=self.dir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=RUN_DEADLINE_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"hang: {args} ran past {RUN_DEADLINE_S} s")
        assert "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert r.returncode in EXIT_CODES, (args, r.returncode, r.stderr[-500:])
        if r.returncode:
            assert r.stderr.strip(), (args, "a failure must say why")
        return r

    def close(self) -> None:
        escaped = sorted(p.name for p in self.base.iterdir() if p.name != "run")
        self._tmp.cleanup()
        assert not escaped, f"written outside the run's folder: {escaped}"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real inputs: plans from the planner, a profile from hardware/, a lock and a manifest from the tools."""
    d = tmp_path_factory.mktemp("seeds")
    plans = [plan(load_profile("h200x8")).to_dict(), plan(load_profile("h100x8-2nodes")).to_dict()]
    save_plan(plan(load_profile("h200x8")), d / "plan.json")
    import yaml

    profile = yaml.safe_load((REPO / "hardware" / "h100x8-2nodes.yaml").read_text())
    src = d / "src"
    (src / "sub").mkdir(parents=True)
    (src / "m.gguf").write_bytes(b"GGUF" * 64)
    (src / "sub" / "config.json").write_text("{}")
    r = subprocess.run(
        [sys.executable, "-m", "deploy", "mirror", "stage", str(src), "--repo", "o/n", "--into", f"{d}/m"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert r.returncode == 0
    lock = json.loads((d / "m" / "o" / "n" / "weights.lock").read_text())
    out = d / "rendered"
    subprocess.run(
        [sys.executable, "-m", "deploy", "render", "--plan", str(d / "plan.json"), "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "plans": plans,
        "profile": profile,
        "lock": lock,
        "weights": d / "m" / "o" / "n",
        "manifest": manifest,
    }


pytestmark = pytest.mark.slow


#: edits that keep plan.json valid, so render gets past the schema (key, value); None drops the key
PLAN_VALID_EDITS = [
    ("port", 1), ("port", 65535), ("host", "::"), ("host", "localhost"), ("host", "node-1.example"),
    ("served_model_name", "a/b:c"), ("api_key_env", "X"), ("api_key_env", None), ("threads", 1),
    ("kt", None), ("multinode", None), ("multinode", {"backend": "ray"}), ("rpc_servers", ["10.0.0.9:1"]),
    ("override_tensor", ["x=CPU"]), ("chat_template", None), ("tool_call_parser", None),
    ("max_model_len", 1), ("tensor_parallel", 3), ("pipeline_parallel", 64), ("data_parallel", 2),
    ("nodes", 0), ("placement", "rpc"), ("status", "reduced"), ("chosen", "other"), ("node_name", "n-1.a"),
]  # fmt: skip
_CANDIDATE_KEYS = {"max_model_len", "tensor_parallel", "pipeline_parallel", "data_parallel", "nodes",
                   "placement", "status"}  # fmt: skip


def mutate_plan_validly(plan_doc: dict[str, Any], picks: list[int]) -> dict[str, Any]:
    doc = json.loads(json.dumps(plan_doc))
    cand = next(c for c in doc["candidates"] if c["id"] == doc["chosen"])
    for pick in picks:
        key, value = PLAN_VALID_EDITS[pick % len(PLAN_VALID_EDITS)]
        if key == "chosen":
            doc["chosen"] = doc["candidates"][-1]["id"]
        elif key == "node_name":
            doc["hardware"]["nodes"][0]["name"] = value
        elif key in _CANDIDATE_KEYS:
            cand[key] = value
        elif value is None:
            cand["engine_args"].pop(key, None)
        else:
            cand["engine_args"][key] = value
    return doc


@settings(SETTINGS, max_examples=EXAMPLES["plan"])
@given(
    which=st.integers(0, 1),
    edits=EDITS,
    raw=RAW,
    picks=st.lists(st.integers(0, 1000), min_size=1, max_size=3),
    structured=st.booleans(),
)
def test_fuzz_plan(
    seeds: dict[str, Any], which: int, edits: list, raw: bytes | None, picks: list, structured: bool
) -> None:
    run = Run()
    try:
        doc = (
            mutate_plan_validly(seeds["plans"][which], picks)
            if structured
            else mutate(seeds["plans"][which], edits)
        )
        write_doc(run.dir / "plan.json", doc, None if structured else raw)
        r = run.kd("render", "--plan", "plan.json", "--out", "rendered")
        run.kd("download", "--plan", "plan.json", "--offline", "--dest", "w")
        if r.returncode == 0:
            run.kd("up", "--plan", "plan.json", "--rendered", "rendered", "--deadline", "5")
        else:
            run.kd("up", "--plan", "plan.json", "--rendered", "rendered")
    finally:
        run.close()


@settings(SETTINGS, max_examples=EXAMPLES["profile"])
@given(edits=EDITS, raw=RAW)
def test_fuzz_profile(seeds: dict[str, Any], edits: list, raw: bytes | None) -> None:
    run = Run()
    try:
        write_doc(run.dir / "hw.yaml", mutate(seeds["profile"], edits), raw, yaml_format=True)
        run.kd("plan", "--hardware", "hw.yaml", "-o", "plan.json")
    finally:
        run.close()


#: lock paths that pass the schema but name something odd inside the folder
LOCK_PATHS = [
    "nonexistent.bin",
    "sub",
    "sub/config.json/x",
    "weights.lock",
    ".quarantine/x",
    "m.gguf",
    "é.bin",
]
LOCK_EDITS = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.sampled_from(["path", "size"]),
        st.sampled_from(LOCK_PATHS),
        st.sampled_from([0, 1, 255, 256, 2**40]),
    ),
    max_size=2,
)


def mutate_lock_entries(lock: dict[str, Any], edits: list) -> dict[str, Any]:
    """Edits that keep the lock valid (so verify gets past the schema to hashing and quarantine)."""
    lock = json.loads(json.dumps(lock))
    for index, field, path, size in edits:
        entry = lock["files"][index % len(lock["files"])]
        if field == "path":
            entry["path"] = path
        else:
            entry["size"] = size
    return lock


@settings(SETTINGS, max_examples=EXAMPLES["lock"])
@given(edits=EDITS, raw=RAW, valid_edits=LOCK_EDITS, structured=st.booleans())
def test_fuzz_weights_lock(
    seeds: dict[str, Any], edits: list, raw: bytes | None, valid_edits: list, structured: bool
) -> None:
    run = Run()
    try:
        weights = run.dir / "w"
        shutil.copytree(seeds["weights"], weights)
        lock = mutate_lock_entries(seeds["lock"], valid_edits) if structured else mutate(seeds["lock"], edits)
        write_doc(weights / "weights.lock", lock, None if structured else raw)
        (run.base / "victim.txt").write_text("victim")  # what a "../" path in the lock would reach
        run.kd("verify", "w")
        assert (run.base / "victim.txt").read_text() == "victim"
        (run.base / "victim.txt").unlink()
    finally:
        run.close()


@settings(SETTINGS, max_examples=EXAMPLES["manifest"])
@given(edits=EDITS, raw=RAW, env_line=st.sampled_from(HOSTILE_STRINGS))
def test_fuzz_manifest_and_env_file(
    seeds: dict[str, Any], edits: list, raw: bytes | None, env_line: str
) -> None:
    run = Run()
    try:
        out = run.dir / "rendered"
        out.mkdir()
        write_doc(out / "manifest.json", mutate(seeds["manifest"], edits), raw)
        (out / "kimi-deploy.env").write_text(f"KIMI_API_KEY={env_line}\n")
        (out / "launch-node0.sh").write_text("#!/bin/sh\ntouch ../../PWNED-launched\nexit 1\n")
        (run.dir / "plan.json").write_text(json.dumps(seeds["plans"][0]))
        r = run.kd("up", "--plan", "plan.json", "--rendered", "rendered")
        assert r.returncode != 0  # the weights are never verified here: nothing starts
        assert "fuzz-key-123456" not in r.stdout + r.stderr
    finally:
        run.close()


ARGS = st.sampled_from(
    [
        ["render", "--plan", "plan.json", "--out", "o", "--bind", "{v}"],
        ["render", "--plan", "plan.json", "--out", "o", "--port", "{v}"],
        ["render", "--plan", "plan.json", "--out", "{v}"],
        ["render", "--plan", "plan.json", "--out", "o", "--weights-dir", "{v}"],
        ["render", "--plan", "plan.json", "--out", "o", "--api-key-env", "{v}", "--bind", "0.0.0.0"],
        ["plan", "--gpus", "{v}"],
        ["plan", "--hardware", "{v}"],
        ["plan", "--hardware", "h200x8", "--context", "{v}"],
        ["plan", "--hardware", "h200x8", "-o", "{v}"],
        ["mirror", "stage", "src", "--repo", "{v}", "--into", "m"],
        ["verify", "{v}"],
        ["check", "--url", "http://127.0.0.1:9", "--model", "{v}", "--timeout", "1"],
        ["check", "--url", "http://127.0.0.1:9", "--model", "m", "--timeout", "{v}"],
        ["check", "--plan", "{v}"],
    ]
)


@settings(SETTINGS, max_examples=EXAMPLES["args"])
@given(args=ARGS, value=st.sampled_from([str(v) for v in HOSTILE_STRINGS + HOSTILE_NUMBERS]))
def test_fuzz_command_line_values(seeds: dict[str, Any], args: list[str], value: str) -> None:
    run = Run()
    try:
        (run.dir / "plan.json").write_text(json.dumps(seeds["plans"][0]))
        (run.dir / "src").mkdir()
        (run.dir / "src" / "a.bin").write_text("a")
        run.kd(*[a.replace("{v}", value) for a in args])
    finally:
        run.close()


#: Issue 27: what no measurement is, as a raw JSON literal (NaN, infinity, past the double range, 5,000
#: digits), and what a file may be that is not a regular file.
HOSTILE_LITERALS = st.one_of(
    st.sampled_from(["NaN", "-Infinity", "1e999", "-1e400"]),
    st.integers(21, 5000).map(lambda n: "9" * n),
)
NOT_A_FILE = st.sampled_from(["fifo", "symlink-out", "dangling", "directory"])


def _numeric_leaves(doc: Any, at: tuple = ()) -> list[tuple]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _numeric_leaves(v, (*at, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _numeric_leaves(v, (*at, i))]
    return [at] if isinstance(doc, int | float) and not isinstance(doc, bool) else []


def _not_a_file(path: Path, kind: str, outside: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes: a blocking open would hang the verb for ever
    elif kind == "symlink-out":
        path.symlink_to(outside)
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
    else:
        path.mkdir()


@settings(SETTINGS, max_examples=EXAMPLES["hostile"])
@given(literal=HOSTILE_LITERALS, pick=st.integers(0, 10**6), kind=NOT_A_FILE)
def test_fuzz_hostile_numbers_and_files_that_are_not_files(
    seeds: dict[str, Any], literal: str, pick: int, kind: str
) -> None:
    """A hostile number at a generated place in plan.json (render, calibrate import), and a FIFO, a link
    out, a dangling link or a folder where a verb reads a file (the store, a log, a report): one line,
    a documented exit code, never a hang."""
    run = Run()
    try:
        doc = seeds["plans"][0]
        leaves = _numeric_leaves(doc)
        text = json.dumps(doc)
        path = leaves[pick % len(leaves)]
        node = json.loads(text)
        target = node
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = "__HOSTILE__"
        (run.dir / "plan.json").write_text(json.dumps(node).replace('"__HOSTILE__"', literal))
        r = run.kd("render", "--plan", "plan.json", "--out", "rendered")
        assert r.returncode == 2, r.stderr
        secret = run.base / "run" / "home" / "outside-secret.txt"
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text("fuzz-outside-canary")
        cache = run.dir / "cache"
        run.env["KIMI_DEPLOY_CACHE"] = str(cache)
        _not_a_file(cache / "calibration" / "records.json", kind, secret)
        run.kd("calibrate", "list")
        _not_a_file(run.dir / "state" / "run" / "head.log", kind, secret)
        # a report the user names may be a link to anywhere (they chose it); the others may not lead out
        _not_a_file(run.dir / "report.json", "fifo" if kind == "symlink-out" else kind, secret)
        (run.dir / "rendered").mkdir(exist_ok=True)
        _not_a_file(run.dir / "rendered" / "extra.txt", kind, secret)
        run.kd(
            "support-bundle",
            "-o",
            "b.tar.gz",
            "--report",
            "report.json",
            "--no-inventory",
            "--no-engine-report",
        )
        if (run.dir / "b.tar.gz").exists():
            import tarfile

            with tarfile.open(run.dir / "b.tar.gz") as tar:
                for m in tar.getmembers():
                    data = tar.extractfile(m)
                    assert data is None or b"fuzz-outside-canary" not in data.read()
    finally:
        run.close()
