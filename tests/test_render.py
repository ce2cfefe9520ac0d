"""`kimi-deploy render`: files, Kimi's required flags, multi-node ranks, secrets, quoting, errors.

Plans come from the real planner on the hardware profiles in hardware/; expected values (ranks, TP sizes,
addresses, ports, max_model_len) are read from the plan and the profile, never typed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.cpu_nodes import write_cpu_profile
from helpers.systemd import command_words

from deploy import pins
from deploy.cli import main
from deploy.engines import builds as engines
from deploy.hardware.profiles import available_profiles, load_profile
from deploy.planning.contract import Plan, save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving import render
from deploy.serving.argv import Endpoint, EnvRef, node_commands
from deploy.weights import lockfile

CANARY_KEY = "canary-api-key-7f3a9c"
CANARY_HF = "hf_canary_token_51d2e8"


@dataclass
class Result:
    exit_code: int
    output: str
    stderr: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the real entry point (deploy.cli.main: one-line errors, exit codes) in-process with ``env`` set and
    HF_TOKEN / KIMI_API_KEY otherwise unset."""

    def run(args: list[str], env: dict[str, str] | None = None) -> Result:
        for name in ("KIMI_API_KEY", "HF_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(args)
        out, err = capsys.readouterr()
        return Result(int(exc.value.code or 0), out, err)

    return run


def rendered_files(out: Path) -> list[Path]:
    """Every file render wrote, monitoring/ included."""
    return sorted(f for f in out.rglob("*") if f.is_file())


def plan_file(tmp_path: Path, profile: str, **kw) -> tuple[Path, Plan]:
    p = plan(load_profile(profile), PlanRequest(**kw))
    path = tmp_path / f"plan-{profile}.json"
    save_plan(p, path)
    return path, p


def gguf_weights(tmp_path: Path, cand, shards: int = 3) -> Path:
    """A weights folder laid out like the repo (empty shard files; render only needs their names)."""
    d = tmp_path / "weights gguf"
    folder = cand.weights.allow_patterns[0].split("/")[0]
    for i in range(1, shards + 1):
        f = d / folder / f"Kimi-K2.5-{folder}-{i:05d}-of-{shards:05d}.gguf"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    return d


def flag_value(argv: list, flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} appears {argv.count(flag)} times in {argv}"
    return str(argv[argv.index(flag) + 1])


# ------------------------------------------------------------------------------------------ files


def test_render_h200_writes_every_file_with_modes_and_hashes(tmp_path: Path, run_cli) -> None:
    path, p = plan_file(tmp_path, "h200x8")
    out = tmp_path / "out"
    r = run_cli(["render", "--plan", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    node = p.hardware["nodes"][0]["name"]
    expected = {
        "kimi-deploy.env",
        f"launch-{node}.sh",
        f"install-{node}.sh",
        f"kimi-deploy-{node}.service",
        "manifest.json",
    }
    # the files live in a release folder; the rendered folder links each name through `current`
    assert {f.name for f in out.iterdir()} == expected | {"monitoring", "current", "releases", "history.json"}
    assert all(os.readlink(out / name) == f"current/{name}" for name in expected)
    (release,) = (out / "releases").iterdir()
    assert (out / "current").resolve() == release
    assert expected <= {f.name for f in release.iterdir()}
    assert stat.S_IMODE((out / "kimi-deploy.env").stat().st_mode) == 0o600
    assert os.access(out / f"launch-{node}.sh", os.X_OK)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["candidate"] == p.chosen and manifest["engine"] == p.chosen_candidate.engine
    assert {name for name in manifest["files"] if "/" not in name} == expected - {"manifest.json"}
    assert "monitoring/prometheus.yml" in manifest["files"]
    for name, meta in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == meta["sha256"]
    for script in out.glob("*.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    (head,) = manifest["nodes"]
    assert head["argv"][:3] == ["vllm", "serve", p.chosen_candidate.weights.local_dir]
    assert manifest["bind"] == "127.0.0.1" and manifest["api_key_env"] is None
    assert "--api-key" not in head["argv"]


def test_systemd_unit_values_come_from_the_plan(tmp_path: Path, run_cli) -> None:
    path, p = plan_file(tmp_path, "h200x8")
    out = tmp_path / "out"
    assert run_cli(["render", "--plan", str(path), "--out", str(out)]).exit_code == 0
    node = p.hardware["nodes"][0]["name"]
    unit = (out / f"kimi-deploy-{node}.service").read_text()
    lines = set(unit.splitlines())
    # systemd's TimeoutStartSec is the prediction times the factor of safety, never below it
    c = p.chosen_candidate
    assert f"TimeoutStartSec={c.ready_deadline_s}" in lines
    assert c.ready_deadline_s >= c.time_to_ready_s * c.ready_safety_factor - 1
    assert {"Restart=on-failure", "LimitMEMLOCK=infinity", "LimitNOFILE=1048576"} <= lines
    assert f"EnvironmentFile=-{out.resolve() / 'kimi-deploy.env'}" in lines
    (exec_start,) = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
    assert command_words(exec_start) == ["/bin/bash", str(out.resolve() / f"launch-{node}.sh")]
    port = p.chosen_candidate.engine_args["port"]
    assert f"http://127.0.0.1:{port}/health" in unit


def test_install_steps_use_the_pins(tmp_path: Path, run_cli) -> None:
    for profile, engine, pin in (
        ("h200x8", "vllm", f"vllm=={pins.VLLM_VERSION}"),
        ("h200x8", "sglang", f"sglang=={pins.SGLANG_VERSION}"),
        ("h200x8", "ktransformers", f"kt-kernel=={pins.KTRANSFORMERS_VERSION}"),
    ):
        path, p = plan_file(tmp_path, profile, engine=engine)
        out = tmp_path / engine
        assert run_cli(["render", "--plan", str(path), "--out", str(out)]).exit_code == 0
        install = next(out.glob("install-*.sh")).read_text()
        assert pin in install.split()
        launch = next(out.glob("launch-*.sh")).read_text()
        venv_bin = install.split("-m venv ")[1].split()[0] + "/bin"
        assert f"export PATH={venv_bin}:" in launch


# ------------------------------------------------------------------------- composing, without writing


def test_compose_returns_every_file_with_its_mode_and_writes_nothing(tmp_path: Path) -> None:
    p = plan(load_profile("h200x8"))
    out = tmp_path / "out"
    opts = render.RenderOptions(out_dir=out)
    release = render.compose_release(p, render.resolve_inputs(p, opts, {}), opts)
    assert not out.exists()
    node = p.hardware["nodes"][0]["name"]
    files = release.files
    assert files["kimi-deploy.env"].mode == 0o600
    assert files[f"launch-{node}.sh"].mode == files[f"install-{node}.sh"].mode == 0o755
    assert files[f"kimi-deploy-{node}.service"].mode == 0o644
    assert str(out.resolve() / f"launch-{node}.sh") in files[f"kimi-deploy-{node}.service"].text
    # the manifest lists every other file (plan.json and release.json aside) with the digest of its text
    listed = release.manifest["files"]
    assert set(listed) == set(files) - {"manifest.json", "plan.json"}
    for name, meta in listed.items():
        assert meta == {
            "sha256": hashlib.sha256(files[name].text.encode()).hexdigest(),
            "mode": oct(files[name].mode),
        }
    assert json.loads(files["manifest.json"].text) == release.manifest
    assert json.loads(files["plan.json"].text)["chosen"] == p.chosen
    env_lines = files["kimi-deploy.env"].text.splitlines()
    assert all(env_lines.count(line) == 1 for line in env_lines if line.startswith("# ") and len(line) > 2)
    # the same inputs give the same release
    again = render.compose_release(p, render.resolve_inputs(p, opts, {}), opts)
    assert again.id == release.id and again.files == files


def test_compose_the_demo_launch_script_runs_the_argv() -> None:
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    cand = p.chosen_candidate
    opts = render.RenderOptions()
    inputs = render.RenderInputs(
        candidate=cand,
        out_dir=Path("/srv/kimi/rendered"),
        endpoint=render.endpoint_for(cand, opts, {}),
        weights_dir=Path("/models/demo"),
        model_path="/models/demo/model.gguf",
        chat_template=render.resolve_chat_template(cand.engine_args["chat_template"], cand),
    )
    release = render.compose_release(p, inputs, opts)
    (node,) = release.nodes
    launch = release.files[f"launch-{node.node}.sh"].text
    assert all(render.shell_quote(tok) in launch for tok in node.argv)
    assert release.manifest["nodes"][0]["argv"][flag_index(release, "--model")] == "/models/demo/model.gguf"
    assert "HF_HUB_OFFLINE=1" in release.files["kimi-deploy.env"].text.splitlines()


def flag_index(release, flag: str) -> int:
    return release.manifest["nodes"][0]["argv"].index(flag) + 1


def test_compose_puts_secrets_only_in_the_0600_files(tmp_path: Path) -> None:
    p = plan(load_profile("h200x8"))
    opts = render.RenderOptions(out_dir=tmp_path / "out", bind="0.0.0.0", secrets_to_env_file=True)
    environ = {"KIMI_API_KEY": CANARY_KEY, "HF_TOKEN": CANARY_HF}
    release = render.compose_release(p, render.resolve_inputs(p, opts, environ), opts)
    env_lines = release.files["kimi-deploy.env"].text.splitlines()
    assert f"KIMI_API_KEY={CANARY_KEY}" in env_lines and f"HF_TOKEN={CANARY_HF}" in env_lines
    secret_files = {name for name, f in release.files.items() if CANARY_KEY in f.text or CANARY_HF in f.text}
    assert secret_files == {"kimi-deploy.env", "monitoring/api-key"}
    assert all(release.files[name].mode == 0o600 for name in secret_files)
    assert CANARY_KEY not in repr(render.resolve_inputs(p, opts, environ))


# ---------------------------------------------------------------------------------- Kimi invariants


def _all_candidates():
    for profile in available_profiles():
        p = plan(load_profile(profile))
        for cand in p.candidates:
            if cand.runs:
                yield profile, p, cand


@pytest.mark.parametrize("profile", available_profiles())
def test_kimi_flags_on_every_runnable_candidate(profile: str) -> None:
    p = plan(load_profile(profile))
    for cand in [c for c in p.candidates if c.runs]:
        model = cand.weights.local_dir if cand.engine != "llama.cpp" else "/m/x-00001-of-00002.gguf"
        nodes = node_commands(p, cand, model, Endpoint())
        head = [str(a) for a in nodes[0].argv] if nodes[0].program != "ray" else []
        if cand.engine == "llama.cpp":
            assert flag_value(head, "--ctx-size") == str(cand.max_model_len)
            assert flag_value(head, "--alias") == p.model["served_model_name"]
            assert "--jinja" in head and flag_value(head, "--model") == model
            continue
        assert "--trust-remote-code" in head
        assert flag_value(head, "--tool-call-parser") == "kimi_k2"
        assert flag_value(head, "--reasoning-parser") == "kimi_k2"
        assert flag_value(head, "--served-model-name") == p.model["served_model_name"]
        total_gpus = cand.nodes * cand.gpus_per_node
        if cand.engine == "vllm":
            assert "--enable-auto-tool-choice" in head
            assert flag_value(head, "--mm-encoder-tp-mode") == "data"
            assert flag_value(head, "--max-model-len") == str(cand.max_model_len)
            tp = int(flag_value(head, "--tensor-parallel-size")) if "--tensor-parallel-size" in head else 1
            pp = (
                int(flag_value(head, "--pipeline-parallel-size")) if "--pipeline-parallel-size" in head else 1
            )
            dp = int(flag_value(head, "--data-parallel-size")) if "--data-parallel-size" in head else 1
            assert tp * pp * dp == total_gpus, cand.id
        else:
            assert flag_value(head, "--context-length") == str(cand.max_model_len)
            assert "--tp" not in head
            tp = int(flag_value(head, "--tp-size"))
            pp = int(flag_value(head, "--pp-size")) if "--pp-size" in head else 1
            assert tp * pp == total_gpus, cand.id
            if cand.engine == "ktransformers":
                kt = cand.engine_args["kt"]
                assert flag_value(head, "--kt-num-gpu-experts") == str(kt["num_gpu_experts"])
                assert flag_value(head, "--kt-cpuinfer") == str(kt["cpuinfer"])
                assert flag_value(head, "--kt-method") == kt["method"]


def test_two_node_plan_renders_every_rank(tmp_path: Path, run_cli) -> None:
    profile = load_profile("h100x8-2nodes")
    p = plan(profile)
    cand = p.chosen_candidate
    assert cand.nodes == len(profile.nodes) == 2
    head_addr = profile.nodes[0].address
    mn = cand.engine_args["multinode"]
    nodes = node_commands(p, cand, cand.weights.local_dir, Endpoint())
    assert [n.rank for n in nodes] == list(range(cand.nodes))
    assert [n.node for n in nodes] == [n.name for n in profile.nodes]
    assert [n.serves_http for n in nodes] == [True] + [False] * (cand.nodes - 1)
    for n in nodes:
        argv = [str(a) for a in n.argv]
        if cand.engine == "vllm" and cand.data_parallel == 1:
            assert flag_value(argv, "--node-rank") == str(n.rank)
            assert flag_value(argv, "--nnodes") == str(cand.nodes)
            assert flag_value(argv, "--master-addr") == head_addr
            assert flag_value(argv, "--master-port") == str(mn["master_port"])
            assert ("--headless" in argv) == (n.rank > 0)
            assert ("--port" in argv) == (n.rank == 0)
        elif cand.engine == "sglang":
            assert flag_value(argv, "--dist-init-addr") == f"{head_addr}:{mn['dist_init_port']}"


def test_all_multinode_layouts_and_backends() -> None:
    profile = load_profile("h100x8-2nodes")
    p = plan(profile)
    head_addr = profile.nodes[0].address
    multi = [c for c in p.candidates if c.runs and c.nodes > 1]
    assert {c.engine for c in multi} >= {"vllm", "sglang"}
    for cand in multi:
        for backend in ["mp", "ray"] if cand.engine == "vllm" else [None]:
            nodes = node_commands(p, cand, cand.weights.local_dir, Endpoint(multinode_backend=backend))
            assert len(nodes) == cand.nodes
            worker = [str(a) for a in nodes[1].argv]
            if backend == "ray":
                ray_head = [str(a) for a in nodes[0].pre[0]]
                assert ray_head[:3] == ["ray", "start", "--head"]
                port = flag_value(ray_head, "--port")
                assert (
                    worker[:2] == ["ray", "start"]
                    and flag_value(worker, "--address") == f"{head_addr}:{port}"
                )
                assert flag_value([str(a) for a in nodes[0].argv], "--distributed-executor-backend") == "ray"
            elif cand.engine == "vllm" and cand.data_parallel > 1:
                local = cand.data_parallel // cand.nodes
                assert flag_value(worker, "--data-parallel-size-local") == str(local)
                assert flag_value(worker, "--data-parallel-start-rank") == str(local)
                assert flag_value(worker, "--data-parallel-address") == head_addr
                assert "--headless" in worker
            elif cand.engine == "sglang":
                assert flag_value(worker, "--node-rank") == "1"
                gpus = cand.nodes * cand.gpus_per_node
                pp = cand.pipeline_parallel
                assert int(flag_value(worker, "--tp-size")) * pp == gpus


def test_multinode_files_per_node(tmp_path: Path, run_cli) -> None:
    path, p = plan_file(tmp_path, "h100x8-2nodes")
    out = tmp_path / "out"
    r = run_cli(["render", "--plan", str(path), "--out", str(out), "--multinode-backend", "ray"])
    assert r.exit_code == 0, r.stderr
    profile = load_profile("h100x8-2nodes")
    for n in profile.nodes:
        env = (out / f"kimi-deploy-{n.name}.env").read_text().splitlines()
        assert f"NCCL_SOCKET_IFNAME={n.network_interface}" in env
        assert f"GLOO_SOCKET_IFNAME={n.network_interface}" in env
        assert stat.S_IMODE((out / f"kimi-deploy-{n.name}.env").stat().st_mode) == 0o600
        assert (out / f"launch-{n.name}.sh").is_file()
    # the head runs `ray start --head` before vLLM: both ranks install Ray (and vLLM)
    for n in profile.nodes:
        install = (out / f"install-{n.name}.sh").read_text().split()
        assert f"'ray[default]=={pins.RAY_VERSION}'" in install, n.name
        assert f"vllm=={pins.VLLM_VERSION}" in install, n.name
    head_launch = (out / f"launch-{profile.nodes[0].name}.sh").read_text()
    assert "ray start \\\n    --head" in head_launch
    # every rank that runs vLLM waits in init_process_group as long as the plan predicts (x2), at least 600 s
    manifest = json.loads((out / "manifest.json").read_text())
    cand = p.candidate(manifest["candidate"])
    head_argv = manifest["nodes"][0]["argv"]
    timeout = int(head_argv[head_argv.index("--distributed-timeout-seconds") + 1])
    assert timeout == max(600, 2 * cand.time_to_ready_s)
    # a single-node candidate rendered into the same folder removes the worker's files
    single = next(c for c in p.candidates if c.runs and c.nodes == 1 and c.engine != "llama.cpp")
    r = run_cli(["render", "--plan", str(path), "--out", str(out), "--candidate", single.id])
    assert r.exit_code == 0, r.stderr
    assert not (out / f"launch-{profile.nodes[1].name}.sh").exists()


# ------------------------------------------------------------------------------------ bind and secrets


def test_non_loopback_bind_without_a_key_is_exit_2(tmp_path: Path, run_cli) -> None:
    path, _ = plan_file(tmp_path, "h200x8")
    r = run_cli(["render", "--plan", str(path), "--out", str(tmp_path / "o"), "--bind", "0.0.0.0"])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: --bind 0.0.0.0 is not loopback") and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bad_api_key_env_name_is_exit_2(tmp_path: Path, run_cli) -> None:
    path, _ = plan_file(tmp_path, "h200x8")
    r = run_cli(["render", "--plan", str(path), "--out", str(tmp_path / "o"), "--api-key-env", "NOT A NAME"])
    assert r.exit_code == 2 and "not an environment variable name" in r.stderr


def test_secrets_never_leave_the_environment_by_default(tmp_path: Path, run_cli) -> None:
    path, p = plan_file(tmp_path, "h100x8-2nodes")
    out = tmp_path / "out"
    r = run_cli(
        ["render", "--plan", str(path), "--out", str(out), "--bind", "0.0.0.0"],
        env={"KIMI_API_KEY": CANARY_KEY, "HF_TOKEN": CANARY_HF},
    )
    assert r.exit_code == 0, r.stderr
    for f in rendered_files(out):
        text = f.read_text()
        assert CANARY_KEY not in text and CANARY_HF not in text, f.name
    assert CANARY_KEY not in r.output + r.stderr and CANARY_HF not in r.output + r.stderr
    assert stat.S_IMODE((out / "kimi-deploy.env").stat().st_mode) == 0o600
    head = p.hardware["nodes"][0]["name"]
    launch = (out / f"launch-{head}.sh").read_text()
    assert "require_env KIMI_API_KEY" in launch
    manifest = json.loads((out / "manifest.json").read_text())
    # the key reaches the engine through its own variable (or SGLang's --config file), never argv
    assert all("--api-key" not in n["argv"] for n in manifest["nodes"])
    engine_var = {"vllm": "VLLM_API_KEY", "llama.cpp": "LLAMA_API_KEY"}.get(p.chosen_candidate.engine)
    if engine_var:
        assert f'export {engine_var}="${{KIMI_API_KEY}}"' in launch
    else:
        assert flag_value(manifest["nodes"][0]["argv"], "--config") == "${kimi_key_config}"
    assert manifest["api_key_env"] == "KIMI_API_KEY"
    assert "# KIMI_API_KEY=" in (out / "kimi-deploy.env").read_text()


def test_secrets_to_env_file_writes_only_the_0600_file(tmp_path: Path, run_cli) -> None:
    path, _ = plan_file(tmp_path, "h200x8")
    out = tmp_path / "out"
    r = run_cli(
        ["render", "--plan", str(path), "--out", str(out), "--bind", "0.0.0.0", "--secrets-to-env-file"],
        env={"KIMI_API_KEY": CANARY_KEY, "HF_TOKEN": CANARY_HF},
    )
    assert r.exit_code == 0, r.stderr
    env_file = out / "kimi-deploy.env"
    lines = env_file.read_text().splitlines()
    assert f"KIMI_API_KEY={CANARY_KEY}" in lines and f"HF_TOKEN={CANARY_HF}" in lines
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    key_file = out / "monitoring" / "api-key"  # what Prometheus sends on /metrics: the key, mode 0600
    assert key_file.read_text() == CANARY_KEY and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "credentials_file: api-key" in (out / "monitoring" / "prometheus.yml").read_text()
    for f in rendered_files(out):
        if f.resolve() not in (env_file.resolve(), key_file.resolve()):
            assert CANARY_KEY not in f.read_text() and CANARY_HF not in f.read_text(), f.name
    assert CANARY_KEY not in r.output + r.stderr


# ------------------------------------------------------------------------------- templates and quoting


def test_strict_undefined_catches_a_missing_value(tmp_path: Path) -> None:
    context = {
        "header": ["x"],
        "env_files": ["kimi-deploy.env"],
        "path_prepend": None,
        "required_env": [],
        "exports": [],
        "key_config": None,
        "pre": [],
        "argv_lines": [["true"]],
        "engine_dir_var": "KIMI_ENGINE_DIR",
        "engine_dir": None,
        "engine_binary": None,
        "install_script": "install-x.sh",
    }
    assert "exec true" in render.render_template("launch.sh.j2", context)
    del context["argv_lines"]
    with pytest.raises(render.RenderError, match="argv_lines"):
        render.render_template("launch.sh.j2", context)
    (tmp_path / "t.j2").write_text("{{ present | q }} {{ missing | q }}\n")
    with pytest.raises(render.RenderError, match="missing"):
        render.render_template("t.j2", {"present": "a"}, templates_dir=tmp_path)
    with pytest.raises(render.RenderError):
        render.shell_quote(None)


def test_quoting_survives_spaces_and_dollars_in_the_model_path(tmp_path: Path, run_cli) -> None:
    """Run the rendered launch script for real with a stand-in `vllm` on PATH that records its argv (the
    stand-in replaces only the engine, which cannot run here); the argv must equal the manifest's."""
    path, p = plan_file(tmp_path, "h200x8")
    weights = tmp_path / "my models" / "$HOME and `x` 'quoted'"
    weights.mkdir(parents=True)
    out = tmp_path / "out"
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(out),
            "--weights-dir",
            str(weights),
            "--bind",
            "0.0.0.0",
        ],
        env={"KIMI_API_KEY": CANARY_KEY},
    )
    assert r.exit_code == 0, r.stderr
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    record = tmp_path / "argv.json"
    stub = stub_dir / "vllm"
    stub.write_text(
        f"#!/usr/bin/env python3\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    stub.chmod(0o755)
    node = p.hardware["nodes"][0]["name"]
    env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}", "KIMI_API_KEY": CANARY_KEY}
    subprocess.run(["bash", str(out / f"launch-{node}.sh")], env=env, check=True, timeout=60)
    seen = json.loads(record.read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    want = [CANARY_KEY if a == "${KIMI_API_KEY}" else a for a in manifest["nodes"][0]["argv"][1:]]
    assert seen == want
    assert seen[1] == str(weights)


def test_launch_script_refuses_to_start_without_the_key(tmp_path: Path, run_cli) -> None:
    path, p = plan_file(tmp_path, "h200x8")
    out = tmp_path / "out"
    assert (
        run_cli(
            ["render", "--plan", str(path), "--out", str(out), "--bind", "0.0.0.0"],
            env={"KIMI_API_KEY": CANARY_KEY},
        ).exit_code
        == 0
    )
    env = {k: v for k, v in os.environ.items() if k != "KIMI_API_KEY"}
    node = p.hardware["nodes"][0]["name"]
    done = subprocess.run(
        ["bash", str(out / f"launch-{node}.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "KIMI_API_KEY is not set" in done.stderr


def test_out_dir_unusable_in_a_unit_is_exit_2(tmp_path: Path, run_cli) -> None:
    path, _ = plan_file(tmp_path, "h200x8")
    r = run_cli(["render", "--plan", str(path), "--out", str(tmp_path / "with space")])
    assert r.exit_code == 2 and "systemd unit" in r.stderr


def test_env_ref_quotes_as_a_runtime_expansion() -> None:
    assert render.shell_quote(EnvRef("KIMI_API_KEY")) == '"${KIMI_API_KEY}"'
    assert render.shell_quote("a b$c") == "'a b$c'"


# ------------------------------------------------------------------------------------------ llama.cpp


def test_gguf_first_shard_from_the_lockfile(tmp_path: Path) -> None:
    p = plan(load_profile("cpu-512g"))
    cand = p.chosen_candidate
    folder = cand.weights.allow_patterns[0].split("/")[0]
    names = [f"{folder}/Kimi-K2.5-{folder}-{i:05d}-of-00004.gguf" for i in (3, 1, 4, 2)]
    d = tmp_path / "w"
    d.mkdir()
    lock = lockfile.Lock(
        repo=cand.weights.repo,
        commit="0" * 40,
        files=[lockfile.LockedFile(path=n, size=1, sha256="0" * 64) for n in names]
        + [lockfile.LockedFile(path="README.md", size=1, git_oid="0" * 40)],
    )
    lockfile.write_lock(d, lock)
    assert render.resolve_model_path(cand, d) == str(d / sorted(names)[0])


def test_gguf_first_shard_from_a_glob_and_a_clear_error(tmp_path: Path, run_cli) -> None:
    p = plan(load_profile("cpu-512g"))
    cand = p.chosen_candidate
    d = gguf_weights(tmp_path, cand, shards=3)
    first = render.resolve_model_path(cand, d)
    assert first.endswith("-00001-of-00003.gguf") and Path(first).is_file()
    path = tmp_path / "plan.json"
    save_plan(p, path)
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(tmp_path / "o"),
            "--weights-dir",
            str(tmp_path / "nowhere"),
        ]
    )
    assert r.exit_code == 2 and "weights folder not found" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli(["render", "--plan", str(path), "--out", str(tmp_path / "o"), "--weights-dir", str(empty)])
    assert r.exit_code == 2 and "no GGUF file matching" in r.stderr


def help_options(binary: Path) -> set[str]:
    """The option names a llama.cpp binary lists in its --help."""
    text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    words = (text.stdout + text.stderr).replace(",", " ").split()
    return {w for w in words if w.startswith("-")}


def test_llama_server_flags_exist_in_the_built_binary() -> None:
    """Every flag of every rendered llama-server / rpc-server command is listed by the binary's --help."""
    layout = engines.llama_cpp_layout()
    if not engines.llama_cpp_ready(layout):
        pytest.fail(f"{layout.server} is not built: run `make setup` (kimi-deploy engine install llama.cpp)")

    known = {"llama.cpp": help_options(layout.server), "rpc": help_options(layout.rpc_server)}
    checked = 0
    for _profile, p, cand in _all_candidates():
        if cand.engine != "llama.cpp":
            continue
        for n in node_commands(
            p,
            cand,
            "/m/first.gguf",
            Endpoint(bind="0.0.0.0", api_key_env="K"),
            chat_template=Path("/t.jinja"),
        ):
            for tok in n.argv:
                if isinstance(tok, str) and tok.startswith("--"):
                    assert tok in known[n.program], f"{cand.id}: {tok} is not a {n.program} flag"
                    checked += 1
    assert checked


def test_demo_plan_chat_template_and_cpu_env(tmp_path: Path, run_cli) -> None:
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    cand = p.chosen_candidate
    assert cand.engine == "llama.cpp"
    weights = tmp_path / "demo"
    weights.mkdir()
    (weights / "model.gguf").touch()
    path = tmp_path / "plan.json"
    save_plan(p, path)
    out = tmp_path / "out"
    r = run_cli(["render", "--plan", str(path), "--out", str(out), "--weights-dir", str(weights)])
    assert r.exit_code == 0, r.stderr
    argv = json.loads((out / "manifest.json").read_text())["nodes"][0]["argv"]
    template = Path(flag_value(argv, "--chat-template-file"))
    assert template == render.CHAT_TEMPLATES_DIR / cand.engine_args["chat_template"]
    # the launch finds its node's own build: the portable CPU build on the shared demo box
    assert argv[0] == "${KIMI_ENGINE_DIR}/bin/llama-server"
    node = json.loads((out / "manifest.json").read_text())["nodes"][0]
    assert node["engine_build"] == engines.llama_cpp_layout().key
    launch = (out / node["launch"]).read_text()
    assert f'/.cache/kimi-deploy}}"/engines/llama.cpp/{engines.llama_cpp_layout().key}\n' in launch
    assert flag_value(argv, "--threads") == str(cand.engine_args["threads"])
    # the base model's turn markers stop the server for any client, quoted for the shell
    stops = [argv[i + 1] for i, tok in enumerate(argv) if tok == "--reverse-prompt"]
    assert stops == cand.engine_args["reverse_prompt"] and stops
    assert all(shlex.quote(s) in launch for s in stops)
    assert flag_value(argv, "--n-predict") == str(cand.engine_args["n_predict"])
    # a template shipped with the llama.cpp build is found in the engine's templates folder
    vendored = sorted(engines.llama_cpp_layout().templates_dir.glob("*.jinja"))
    assert vendored, "the llama.cpp build has no templates/: run `kimi-deploy engine install llama.cpp`"
    assert render.resolve_chat_template(vendored[0].name, cand) == vendored[0]
    cand.engine_args["chat_template"] = "no-such-template.jinja"
    save_plan(p, path)
    r = run_cli(["render", "--plan", str(path), "--out", str(out), "--weights-dir", str(weights)])
    assert r.exit_code == 2 and "no-such-template.jinja" in r.stderr


def test_unknown_candidate_and_missing_plan_are_exit_2(tmp_path: Path, run_cli) -> None:
    path, _ = plan_file(tmp_path, "h200x8")
    r = run_cli(["render", "--plan", str(path), "--candidate", "nope", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "nope" in r.stderr
    r = run_cli(["render", "--plan", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "plan not found" in r.stderr


# ----------------------------------------------------------------------------- the real engine, for real


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_rendered_demo_script_serves_with_the_api_key(tmp_path: Path, run_cli) -> None:
    """The demo plan rendered for a non-loopback bind starts the real llama-server: /health answers, the API
    needs the key from the environment, and the key never lands in a file."""
    from deploy.catalog import load_model
    from deploy.planning import architecture

    built = engines.llama_cpp_layout()
    if not engines.llama_cpp_ready(built):
        pytest.fail(f"{built.server} is not built: run `make setup`")
    gguf = architecture.demo_gguf_path(load_model("demo"))
    weights = tmp_path / "demo weights"
    weights.mkdir()
    os.link(gguf, weights / gguf.name)
    p = plan(load_profile("ci-24g"), PlanRequest(model="demo"))
    port = _free_port()
    p.chosen_candidate.engine_args["port"] = port
    path = tmp_path / "plan.json"
    save_plan(p, path)
    out = tmp_path / "out"
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(out),
            "--weights-dir",
            str(weights),
            "--bind",
            "0.0.0.0",
        ],
        env={"KIMI_API_KEY": CANARY_KEY},
    )
    assert r.exit_code == 0, r.stderr
    node = p.hardware["nodes"][0]["name"]
    env = {**os.environ, "KIMI_API_KEY": CANARY_KEY}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        ["bash", str(out / f"launch-{node}.sh")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while _get_or_none(f"http://127.0.0.1:{port}/health") != 200:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "llama-server did not become ready in 120 s"
            time.sleep(0.25)
        assert _get(f"http://127.0.0.1:{port}/v1/models") == 401
        assert _get(f"http://127.0.0.1:{port}/v1/models", CANARY_KEY) == 200
        # the script exec'd llama-server, which took the key from LLAMA_API_KEY: its argv, readable by every
        # local user, does not hold it (issue 14)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "llama-server" in cmdline and CANARY_KEY not in cmdline and "--api-key" not in cmdline
        assert _get(f"http://127.0.0.1:{port}/metrics", CANARY_KEY) == 200
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
    for f in rendered_files(out):
        assert CANARY_KEY not in f.read_text()


def _get_or_none(url: str) -> int | None:
    try:
        return _get(url)
    except OSError:
        return None


def test_llama_cpp_rpc_layout_over_two_nodes(tmp_path: Path, run_cli) -> None:
    """The RPC layout (issue 5: a GGUF spread over several nodes' memory) from `plan --nodes 2` on two CPU
    nodes: rpc-server on the worker bound to its own address, llama-server on the head with --rpc and the
    plan's layer split; the manifest lists both nodes; re-rendering is byte-identical; every flag is in the
    real binaries' --help."""
    profile = write_cpu_profile(tmp_path / "two.yaml", ["10.213.0.1", "10.213.0.2"])
    p = plan(load_profile(profile), PlanRequest(model="demo", nodes=2))
    cand = p.chosen_candidate
    a = cand.engine_args
    assert cand.placement == "rpc"
    weights = tmp_path / "demo"
    weights.mkdir()
    (weights / "model.gguf").touch()
    path = tmp_path / "plan.json"
    save_plan(p, path)
    out = tmp_path / "out"
    argv = ["render", "--plan", str(path), "--out", str(out), "--weights-dir", str(weights)]
    r = run_cli(argv)
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert "rendered_at" not in manifest
    head, worker = manifest["nodes"]
    hw = p.hardware["nodes"]
    assert [(n["role"], n["program"], n["address"]) for n in manifest["nodes"]] == [
        ("head", "llama.cpp", hw[0]["address"]),
        ("worker", "rpc", hw[1]["address"]),
    ]
    assert flag_value(head["argv"], "--rpc") == ",".join(a["rpc_servers"]) == f"{hw[1]['address']}:50052"
    assert flag_value(head["argv"], "--n-gpu-layers") == str(a["n_gpu_layers"])
    assert [float(x) for x in flag_value(head["argv"], "--tensor-split").split(",")] == a["tensor_split"]
    rpc = worker["argv"]
    assert rpc[0] == "${KIMI_ENGINE_DIR}/bin/rpc-server"
    assert head["engine_build"] == worker["engine_build"] == engines.llama_cpp_layout().key
    assert flag_value(rpc, "--host") == hw[1]["address"]
    assert flag_value(rpc, "--port") == str(a["multinode"]["rpc_port"])
    assert flag_value(rpc, "--threads") == str(a["rpc_threads"][0])
    assert not worker["serves_http"] and head["serves_http"]
    script = (out / worker["launch"]).read_text()
    assert 'exec "${KIMI_ENGINE_DIR}"/bin/rpc-server' in script and "no authentication" in script
    assert "0.0.0.0" not in script
    before = {f: f.read_bytes() for f in rendered_files(out)}
    r = run_cli(argv)
    assert r.exit_code == 0, r.stderr
    assert {f: f.read_bytes() for f in rendered_files(out)} == before
    layout = engines.llama_cpp_layout()
    if not engines.llama_cpp_ready(layout):
        pytest.fail(f"{layout.server} is not built: run `make setup`")
    for args, binary in ((head["argv"], layout.server), (rpc, layout.rpc_server)):
        known = help_options(binary)
        assert [x for x in args if x.startswith("-") and not _number(x) and x not in known] == []


def _number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def shell_join(args: list[str]) -> str:
    return " ".join(render.shell_quote(x) for x in args)


def test_render_checks_a_ktransformers_launch_with_the_forks_parser(tmp_path: Path, run_cli) -> None:
    """`render --check-parsers` on the 4x RTX 4090 + 768 GB plan: the KTransformers launch goes through
    kvcache-ai's fork (its version in the line), and the line says what of its validation was not run."""
    path, _ = plan_file(tmp_path, "kt-4x4090-768g")
    r = run_cli(["render", "--plan", str(path), "--out", str(tmp_path / "out"), "--check-parsers"])
    assert r.exit_code == 0, r.stderr
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("parser check")]
    assert line.startswith(f"parser check (ktransformers {pins.SGLANG_KT_VERSION}): ok"), line
    assert "__post_init__ not run" in line
