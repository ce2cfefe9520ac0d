"""`kimi-deploy support-bundle`: what is inside, the cause of a failed start, and no secret anywhere.

The deployment is real: the demo GGUF, locked and verified by deploy.weights.lockfile, planned by the real
planner (ci-24g, the demo model), rendered by `kimi-deploy render`, started by `kimi-deploy up` with the real
llama-server. The failed start is real too: the launch script gets a flag llama-server does not know (an
operator's typo), and llama-server's own "invalid argument" line must be in the bundle.

Canary secrets are planted everywhere the toolkit reads secrets: the environment (KIMI_API_KEY, HF_TOKEN,
OPENAI_API_KEY), the env file (rendered with --secrets-to-env-file, plus a line an operator filled in),
``monitoring/api-key``, huggingface_hub's token file, SGLang's key config file; and, as injected faults
(labelled), the engine log and a check report that carry a key and a bearer header. None may reach the
archive: not a file's content, not a file name, not the command's output.
"""

from __future__ import annotations

import doctest
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from deploy import secrets
from deploy.catalog import load_model
from deploy.hardware.profiles import load_profile
from deploy.planning import architecture
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.secrets import MASK, Redactor
from deploy.weights import lockfile

CANARIES = {
    "KIMI_API_KEY": "canary-kimi-key-5b1e0c",
    "HF_TOKEN": "hf_canaryHfToken8d2f7a",
    "OPENAI_API_KEY": "canary-openai-key-77a1",
    "env_file_line": "canary-operator-filled-93cd",
    "monitoring_key": "canary-prom-bearer-41f0",
    "hf_token_file": "hf_canaryTokenFile2c6e",
    "sglang_key_file": "canary-sglang-cfg-6aa0",
    "log_line": "canary-in-the-log-0e3b",
    "report_header": "canary-report-bearer-f19d",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kd(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def _verified_weights(root: Path) -> Path:
    model = load_model("demo")
    gguf = architecture.demo_gguf_path(model)
    d = root / "weights" / "gemma-3-270m-GGUF"
    d.mkdir(parents=True)
    try:
        os.link(gguf, d / gguf.name)
    except OSError:
        (d / gguf.name).symlink_to(gguf)
    lock = lockfile.Lock(
        repo=model.variants[0].repo,
        commit="0" * 40,
        files=[lockfile.LockedFile(gguf.name, gguf.stat().st_size, sha256=lockfile.sha256_file(gguf))],
    )
    lockfile.write_lock(d, lock)
    assert lockfile.verify(d).ok
    return d


def _read_bundle(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_secrets_doctests() -> None:
    assert doctest.testmod(secrets).failed == 0


def test_redactor_masks_values_and_patterns() -> None:
    r = Redactor(["known-value-123"])
    text = (
        "x known-value-123 y\n"
        "Authorization: Bearer sk-live-abcdef\n"
        "KIMI_API_KEY=whatever-it-is\n"
        "export HF_TOKEN='hf_abcdefgh'\n"
        "llama-server --api-key s3cr3tvalue --port 1\n"
        "api_key: in-yaml-value\n"
        '{"completion_tokens": 24, "api_key_env": "KIMI_API_KEY"}\n'
        "per token: 2 values\n"
    )
    out = r.text(text)
    for secret in (
        "known-value-123",
        "sk-live-abcdef",
        "whatever-it-is",
        "hf_abcdefgh",
        "s3cr3tvalue",
        "in-yaml",
    ):
        assert secret not in out
    # what is not a secret stays readable
    assert '"completion_tokens": 24' in out and '"api_key_env": "KIMI_API_KEY"' in out
    assert "per token: 2 values" in out and "--port 1" in out
    assert out.count(MASK) == r.count == 6


@pytest.mark.slow
def test_bundle_of_a_failed_start_has_the_cause_and_no_secret(tmp_path: Path) -> None:
    weights = _verified_weights(tmp_path)
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    assert p.chosen_candidate.engine == "llama.cpp"
    plan_path = tmp_path / "plan.json"
    save_plan(p, plan_path)
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    (hf_home / "token").write_text(CANARIES["hf_token_file"])
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KIMI_", "HF_"))},
        "KIMI_API_KEY": CANARIES["KIMI_API_KEY"],
        "HF_TOKEN": CANARIES["HF_TOKEN"],
        "OPENAI_API_KEY": CANARIES["OPENAI_API_KEY"],
        "HF_HOME": str(hf_home),
        "KIMI_DEPLOY_STATE_DIR": str(state),
    }
    rendered = tmp_path / "rendered"
    r = _kd(
        [
            "render",
            "--plan",
            str(plan_path),
            "--out",
            str(rendered),
            "--weights-dir",
            str(weights),
            "--port",
            str(_free_port()),
            "--secrets-to-env-file",
        ],
        env,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    env_file = rendered / "kimi-deploy.env"
    assert CANARIES["HF_TOKEN"] in env_file.read_text()  # --secrets-to-env-file put it there
    # the operator fills in a key of their own, and Prometheus' key file and SGLang's config hold keys
    with open(env_file, "a") as fh:
        fh.write(f"MY_SERVICE_TOKEN={CANARIES['env_file_line']}\n")
    key_file = rendered / "monitoring" / "api-key"
    key_file.write_text(CANARIES["monitoring_key"])
    key_file.chmod(0o600)
    (rendered / ".sglang-api-key.yaml").write_text(f"api_key: {CANARIES['sglang_key_file']}\n")
    # the operator's typo: a flag llama-server does not have
    (node,) = json.loads((rendered / "manifest.json").read_text())["nodes"]
    launch_script = rendered / node["launch"]
    text = launch_script.read_text()
    assert "    --metrics \\\n" in text
    launch_script.write_text(text.replace("    --metrics \\\n", "    --metrics --kimi-bogus-flag \\\n"))

    up = _kd(["up", "--plan", str(plan_path), "--rendered", str(rendered), "--deadline", "60"], env, tmp_path)
    assert up.returncode == 6, up.stdout + up.stderr
    log = state / "run" / f"{node['name']}.log"
    assert "invalid argument: --kimi-bogus-flag" in log.read_text()
    # fault injection (no real engine here prints a key or a bearer header): a log line and a report with both
    with open(log, "a") as fh:
        leak = CANARIES["log_line"]
        fh.write(f"request with --api-key {leak} and Authorization: Bearer {leak}\n")
    report = tmp_path / "check.json"
    report.write_text(
        json.dumps({"ok": False, "headers": {"Authorization": f"Bearer {CANARIES['report_header']}"}})
    )

    out = tmp_path / "support.tar.gz"
    b = _kd(["support-bundle", "-o", str(out), "--plan", str(plan_path), "--rendered", str(rendered),
             "--report", str(report), "--log-bytes", "65536"], env, tmp_path)  # fmt: skip
    assert b.returncode == 0, b.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    files = _read_bundle(out)
    (root,) = {name.split("/")[0] for name in files}
    names = {name.split("/", 1)[1] for name in files}

    # what is inside
    assert {
        "MANIFEST.json",
        "versions.json",
        "inventory.yaml",
        "plan.json",
        "weights.json",
        "status.json",
    } <= names
    assert f"logs/{node['name']}.log" in names and "reports/00-check.json" in names
    assert {
        f"rendered/{node['launch']}",
        "rendered/kimi-deploy.env",
        "rendered/monitoring/prometheus.yml",
    } <= names
    assert "engine-env.txt" in names  # llama-server --version
    manifest = json.loads(files[f"{root}/MANIFEST.json"])
    assert {e["path"] for e in manifest["files"]} == names - {"MANIFEST.json"}
    # the env file's two secret lines, the log line's key and header, the report's header
    assert manifest["redactions"]["replaced"] >= 5
    weights_info = json.loads(files[f"{root}/weights.json"])
    assert weights_info["verify"]["verified"] and weights_info["files"] == 1
    versions = json.loads(files[f"{root}/versions.json"])
    assert versions["pins"]["llama.cpp commit"] in files[f"{root}/engine-env.txt"].decode()

    # the cause: llama-server's own line, in the log tail and named in status.json
    assert b"error: invalid argument: --kimi-bogus-flag" in files[f"{root}/logs/{node['name']}.log"]
    (entry,) = json.loads(files[f"{root}/status.json"])
    assert entry["node"] == node["name"] and not entry["running"]
    assert "kimi-bogus-flag" in json.dumps(entry["cause"])

    # no secret anywhere: contents, names, the command's output, the raw archive
    raw = out.read_bytes()
    for label, canary in CANARIES.items():
        for name, data in files.items():
            assert canary.encode() not in data, f"{label} leaked into {name}"
            assert canary not in name
        assert canary not in b.stdout + b.stderr, label
    with tarfile.open(out) as tar:
        for member in tar.getmembers():
            assert member.mode & 0o077 == 0
    assert len(raw) > 0
    env_text = files[f"{root}/rendered/kimi-deploy.env"].decode()
    assert f"HF_TOKEN={MASK}" in env_text and f"MY_SERVICE_TOKEN={MASK}" in env_text
    assert files[f"{root}/rendered/monitoring/api-key"].decode().strip() == MASK


def test_bundle_reads_only_regular_files_inside_its_folders(tmp_path: Path) -> None:
    """A FIFO as --report and as an engine log never blocks the bundle (nobody ever writes to them: a
    blocking open would hang for ever), and a symlink in the rendered folder to a file elsewhere on the host
    is listed as not read, its content never in the archive. Real FIFOs and symlinks on this filesystem."""
    outside = tmp_path / "host-file.txt"
    outside.write_text("canary-outside-the-rendered-folder-7c1d\n")
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    (rendered / "launch-head.sh").write_text("#!/bin/sh\nexec true\n")
    (rendered / "escape.txt").symlink_to(outside)
    (rendered / "sub").mkdir()
    (rendered / "sub" / "up.txt").symlink_to("../../host-file.txt")
    os.mkfifo(rendered / "pipe.json")
    run_dir = tmp_path / "state" / "run"
    run_dir.mkdir(parents=True)
    os.mkfifo(run_dir / "head.log")
    (run_dir / "worker.log").symlink_to(outside)
    report = tmp_path / "report.json"
    os.mkfifo(report)
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(tmp_path / "state")}
    out = tmp_path / "bundle.tar.gz"
    r = _kd(
        ["support-bundle", "-o", str(out), "--plan", str(tmp_path / "plan.json"), "--rendered", str(rendered),
         "--report", str(report), "--no-inventory", "--no-engine-report"],
        env, tmp_path,
    )  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    files = _read_bundle(out)
    assert not any(b"canary-outside" in data for data in files.values())
    manifest = json.loads(next(v for k, v in files.items() if k.endswith("MANIFEST.json")))
    reasons = " ".join(m["reason"] for m in manifest["missing"])
    assert "FIFO" in reasons and "leads outside" in reasons
    assert any(k.endswith("rendered/launch-head.sh") for k in files)
