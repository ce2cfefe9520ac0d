"""`render --target k8s`: every runnable plan of every profile (and a --gpus plan) renders a LeaderWorkerSet
and its documents that pass both validators; the engine argv and environment equal the systemd render's but
for addresses, ranks and interfaces; the startup probe covers the plan's deadline; no secret value lands in a
manifest; each validator catches a broken document; the pod's weights check fails closed.

Plans come from the real planner on hardware/; expected values are read from the plan and the systemd render.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import pins
from deploy.cli import main
from deploy.hardware.profiles import available_profiles, load_profile, profile_from_gpus
from deploy.monitoring.spec import RouterTarget
from deploy.planning.contract import Plan, save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving import render
from deploy.targets import k8s, k8s_validate
from deploy.targets.k8s_nodes import LEADER_ADDRESS, WORKER_INDEX
from deploy.targets.k8s_pod import probe_budget
from deploy.weights import lockfile

IMAGE = "registry.example/kimi/engine:pinned"
CANARY_KEY = "canary-api-key-7f3a9c"
CANARY_HF = "hf_canary_token_51d2e8"
PLANS = {name: load_profile(name) for name in available_profiles()} | {"gpus-2x8xH100": None}


@functools.cache
def _plan(name: str) -> Plan:
    profile = profile_from_gpus("2x8xH100") if PLANS[name] is None else PLANS[name]
    return plan(profile, PlanRequest())


def _cases() -> list[tuple[str, str]]:
    return [(name, c.id) for name in PLANS for c in _plan(name).candidates if c.runs]


def gguf_weights(root: Path, cand) -> Path:
    """A weights folder with the candidate's GGUF shard names (empty files: only names are read)."""
    folder = cand.weights.allow_patterns[0].split("/")[0]
    d = root / "gguf" / cand.id
    for i in range(1, 4):
        f = d / folder / f"Kimi-K2.5-{folder}-{i:05d}-of-00003.gguf"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    return d


def options(p: Plan, cand_id: str, tmp_path: Path, **kw) -> k8s.K8sOptions:
    cand = p.candidate(cand_id)
    image = None if cand.engine in pins.ENGINE_IMAGES else IMAGE
    weights = gguf_weights(tmp_path, cand) if cand.weights.format == "gguf" else None
    return k8s.K8sOptions(
        candidate_id=cand_id, image=image, weights_dir=weights, router_image=IMAGE + "-router", **kw
    )


def lws_of(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "LeaderWorkerSet")


def templates(docs: list[dict]) -> tuple[dict, dict | None]:
    """(leader pod spec, worker pod spec or None)."""
    t = lws_of(docs)["spec"]["leaderWorkerTemplate"]
    if "leaderTemplate" in t:
        return t["leaderTemplate"]["spec"], t["workerTemplate"]["spec"]
    return t["workerTemplate"]["spec"], None


# ---------------------------------------------------------------------------------------- every plan


@pytest.mark.parametrize(("profile", "cand_id"), _cases())
def test_every_runnable_plan_renders_valid_documents(profile: str, cand_id: str, tmp_path: Path) -> None:
    p = _plan(profile)
    cand = p.candidate(cand_id)
    result = k8s.compose(p, options(p, cand_id, tmp_path))
    assert k8s_validate.validate_all(result.documents) == []
    lws = lws_of(result.documents)
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == max(1, cand.nodes)
    assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader, worker = templates(result.documents)
    engine = leader["containers"][0]
    assert probe_budget(engine["startupProbe"]) >= cand.start_deadline_s > 0
    if cand.gpus_per_node:
        assert engine["resources"]["limits"]["nvidia.com/gpu"] == cand.gpus_per_node
    assert (worker is None) == (cand.nodes <= 1)
    # no plan address or interface reaches a pod: LWS gives them
    text = json.dumps(result.documents)
    for node in p.hardware.get("nodes") or []:
        for value in (node.get("address"), node.get("network_interface")):
            if value and value not in ("lo",):
                assert f'"{value}"' not in text and f"{value}:" not in text, value


def test_a_gpus_plan_renders_with_lws_addresses_and_no_interface(tmp_path: Path) -> None:
    p = _plan("gpus-2x8xH100")
    result = k8s.compose(p, k8s.K8sOptions())
    leader, worker = templates(result.documents)
    argv = worker["containers"][0]["command"]
    assert LEADER_ADDRESS in argv and WORKER_INDEX in argv
    names = {e["name"] for spec in (leader, worker) for e in spec["containers"][0]["env"]}
    assert not names & {"NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"}
    named = k8s.compose(p, k8s.K8sOptions(interface="eth1"))
    env = {e["name"]: e.get("value") for e in templates(named.documents)[1]["containers"][0]["env"]}
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "eth1"


# ------------------------------------------------------------------- the same argv and env as systemd


def _launch_words(text: str) -> tuple[list[str], dict[str, str]]:
    """(the exec'd argv, the exported variables) of a launch script, as bash reads them."""
    exports = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = shlex.split(line[len("export ") :])[0].partition("=")
            exports[name] = value
    command = text[text.index("\nexec ") + 1 :].replace("\\\n", " ")
    return shlex.split(command)[1:], exports


def _env_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def systemd_node(release: render.Release, node: str) -> tuple[list[str], dict[str, str]]:
    """What systemd runs on ``node``: the launch script's argv, and its environment (env files, exports)."""
    files = {name: f.text for name, f in release.files.items()}
    argv, exports = _launch_words(files[f"launch-{node}.sh"])
    env = _env_file(files[render.ENV_FILE]) | _env_file(files.get(f"kimi-deploy-{node}.env", ""))
    return argv, env | exports


def _normal(word: str, addresses: dict[str, str]) -> str:
    """A word with the kubelet's $(NAME) written as bash's ${NAME} and addresses as their role."""
    word = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", r"${\1}", word)
    for address, role in addresses.items():
        word = word.replace(address, role)
    return word


#: what may differ, by design: where a node is, its rank, its interface (LWS gives them); the engine's
#: install location (PATH: the image has it; llama.cpp's build folder) and the files the pod mounts
LWS_ROLES = {"${LWS_LEADER_ADDRESS}": "<leader>", "${KIMI_POD_IP}": "<self>", "${LWS_WORKER_INDEX}": "<rank>"}
DIFFERS = {"NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "PATH"}


def _path(word: str) -> str:
    for prefix in ("${KIMI_ENGINE_DIR}", k8s.DEFAULT_ENGINE_DIR):
        if word.startswith(prefix + "/"):
            return "<engine>" + word[len(prefix) :]
    if word.endswith(".jinja"):
        return "<template>/" + Path(word).name
    return word


def _compare(
    systemd: tuple[list[str], dict[str, str]], pod: dict, roles: dict[str, str], cmd, self_address: str
) -> None:
    """The pod's argv and env against systemd's; ``roles`` names the plan's addresses in argv, and the
    engine's own host-IP variable holds ``self_address`` (the pod's IP on LWS)."""
    argv, env = systemd
    want = [_normal(w, roles) for w in argv]
    got = [_normal(w, LWS_ROLES) for w in cmd.argv]
    if cmd.shell_rank:
        # the shell appends each rank x stride flag (the kubelet cannot multiply)
        for flag in cmd.shell_rank:
            i = want.index(flag)
            del want[i : i + 2]
        assert pod["command"][:2] == ["/bin/sh", "-c"] and pod["command"][4:] == cmd.argv
    else:
        assert pod["command"] == cmd.argv
    # the engine's build folder and the chat template: the node's own paths, the image's and the ConfigMap's
    assert [_path(w) for w in want] == [_path(w) for w in got]
    pod_env = {e["name"]: _normal(e["value"], LWS_ROLES) for e in pod["env"] if "value" in e}
    want_env = {
        k: "<self>" if v == self_address else _normal(v, roles) for k, v in env.items() if k not in DIFFERS
    }
    assert {k: v for k, v in pod_env.items() if k in want_env} == want_env
    assert not set(want_env) - set(pod_env)


@pytest.mark.parametrize(("profile", "cand_id"), _cases())
def test_the_engine_argv_and_env_equal_the_systemd_renders(
    profile: str, cand_id: str, tmp_path: Path
) -> None:
    p = _plan(profile)
    # a fleet's replicas get their own ports and node names on systemd: compare one replica of the candidate
    p = dataclasses.replace(p, fleet_spec=None)
    opts = options(p, cand_id, tmp_path)
    result = k8s.compose(p, opts)
    ropts = render.RenderOptions(
        out_dir=tmp_path / "out",
        candidate_id=cand_id,
        weights_dir=opts.weights_dir,
        bind="0.0.0.0",
        api_key_env="KIMI_API_KEY",
    )
    sd_plan = p
    if p.hardware.get("hypothetical"):
        # systemd launches need real addresses (argv.require_real_nodes refuses a --gpus plan's): give the
        # nodes some, as `inventory` would; LWS fills its own, so the argv must match whatever they are
        nodes = [
            {**n, "address": f"10.0.0.{i + 1}", "network_interface": "ib0"}
            for i, n in enumerate(p.hardware["nodes"])
        ]
        sd_plan = dataclasses.replace(p, hardware={**p.hardware, "nodes": nodes, "hypothetical": False})
    inputs = render.resolve_inputs(sd_plan, ropts, {"KIMI_API_KEY": CANARY_KEY})
    release = render.compose_release(sd_plan, inputs, ropts)
    leader, worker = templates(result.documents)
    nodes = release.nodes
    leader_roles = {nodes[0].address: "<leader>"}
    _compare(
        systemd_node(release, nodes[0].node),
        leader["containers"][0],
        leader_roles,
        result.commands.leader,
        nodes[0].address,
    )
    for n in nodes[1:]:
        roles = {nodes[0].address: "<leader>", n.address: "<self>"}
        sd_argv, sd_env = systemd_node(release, n.node)
        sd_argv = [
            WORKER_INDEX if i and sd_argv[i - 1] == "--node-rank" else w for i, w in enumerate(sd_argv)
        ]
        sd_argv = [_normal(w, {}) for w in sd_argv]
        roles |= {"${LWS_WORKER_INDEX}": "<rank>"}
        _compare((sd_argv, sd_env), worker["containers"][0], roles, result.commands.worker, n.address)


# ------------------------------------------------------------------------------------ the CLI, secrets


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """The real entry point in-process (one-line errors, exit codes), with ``env`` set."""

    def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(args)
        out, err = capsys.readouterr()
        return int(exc.value.code or 0), out, err

    return run


def _locked_weights(root: Path, files: dict[str, bytes]) -> Path:
    """A weights folder with ``files`` and a weights.lock listing their real digests."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    locked = [
        lockfile.LockedFile(rel, len(data), sha256=lockfile.sha256_file(root / rel))
        if rel.endswith(".safetensors")
        else lockfile.LockedFile(rel, len(data), git_oid=lockfile.git_blob_oid(root / rel))
        for rel, data in files.items()
    ]
    lockfile.write_lock(root, lockfile.Lock("moonshotai/Kimi-K2.5", "a" * 40, locked))
    return root


def test_the_cli_writes_validated_yaml_with_the_key_only_by_reference(tmp_path: Path, run_cli) -> None:
    p = _plan("h100x8-2nodes")
    path = tmp_path / "plan.json"
    save_plan(p, path)
    weights = _locked_weights(tmp_path / "w", {"config.json": b"{}", "model-1.safetensors": b"\x01" * 64})
    out = tmp_path / "k8s"
    code, stdout, stderr = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--target",
            "k8s",
            "--out",
            str(out),
            "--weights-dir",
            str(weights),
            "--api-key-env",
            "MY_KEY",
            "--namespace",
            "llm",
        ],
        env={"MY_KEY": CANARY_KEY, "HF_TOKEN": CANARY_HF, "KIMI_API_KEY": CANARY_KEY},
    )
    assert code == 0, stderr
    docs = [yaml.safe_load(f.read_text()) for f in sorted(out.glob("*.yaml"))]
    assert [d["kind"] for d in docs] == [
        "ConfigMap",
        "LeaderWorkerSet",
        "Service",
        "PodMonitor",
        "PrometheusRule",
    ]
    assert k8s_validate.validate_all(docs) == []
    text = "".join(f.read_text() for f in out.iterdir())
    assert CANARY_KEY not in text and CANARY_HF not in text
    leader, _worker = templates(docs)
    env = {e["name"]: e for e in leader["containers"][0]["env"]}
    assert env["MY_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "kimi-deploy-api-key", "key": "api-key"}
    assert env["VLLM_API_KEY"]["value"] == "$(MY_KEY)"
    # the weights are downloaded at the locked commit and checked against the lock's own digest
    inits = {c["name"]: c["command"] for c in leader["initContainers"]}
    lock_text = lockfile.lock_path(weights).read_text()
    assert inits["weights-download"][inits["weights-download"].index("--revision") + 1] == "a" * 40
    assert inits["weights-verify"][-1] == hashlib.sha256(lock_text.encode()).hexdigest()
    assert docs[0]["data"][lockfile.LOCK_NAME] == lock_text
    assert all(d["metadata"]["namespace"] == "llm" for d in docs)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--secrets-to-env-file"], "--secrets-to-env-file applies to the systemd target"),
        (["--name", "Bad_Name"], "--name 'Bad_Name'"),
        (["--interface", "eth0; rm -rf /"], "--interface"),
        (["--bind", "127.0.0.1"], "a pod must serve beyond loopback"),
        (["--multinode-backend", "ray"], "only mp"),
    ],
)
def test_bad_k8s_options_are_one_line(tmp_path: Path, run_cli, args: list[str], says: str) -> None:
    path = tmp_path / "plan.json"
    save_plan(_plan("h100x8-2nodes"), path)
    code, _out, err = run_cli(
        ["render", "--plan", str(path), "--target", "k8s", "--out", str(tmp_path / "o"), *args]
    )
    assert code != 0 and says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_gguf_plan_without_weights_and_an_engine_without_an_image_say_what_to_do(tmp_path: Path) -> None:
    p = _plan("rtx4090-256g")
    with pytest.raises(Exception, match="--image"):
        k8s.compose(p, k8s.K8sOptions(weights_dir=gguf_weights(tmp_path, p.chosen_candidate)))
    with pytest.raises(Exception, match="weights folder not found"):
        k8s.compose(p, k8s.K8sOptions(image=IMAGE, weights_dir=tmp_path / "none"))


# ------------------------------------------------------------------- the validators catch a broken document


def _docs() -> list[dict]:
    return k8s.compose(_plan("h100x8-2nodes"), k8s.K8sOptions()).documents


def _mutate(kind: str, change) -> list[str]:
    docs = copy.deepcopy(_docs())
    doc = next(d for d in docs if d["kind"] == kind)
    change(doc)
    return k8s_validate.problems(doc)


def _lws_leader(doc: dict) -> dict:
    return doc["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("kind", "change", "says"),
    [
        ("Service", lambda d: d["spec"].update(portz=[]), "portz"),
        ("Service", lambda d: d["spec"]["ports"][0].update(port="eighty"), "eighty"),
        ("ConfigMap", lambda d: d.update(dataz={}), "dataz"),
        (
            "LeaderWorkerSet",
            lambda d: d["spec"]["leaderWorkerTemplate"].update(restartPolicy="Sometimes"),
            "Sometimes",
        ),
        ("LeaderWorkerSet", lambda d: d["spec"]["leaderWorkerTemplate"].update(sizee=2), "sizee"),
        ("LeaderWorkerSet", lambda d: _lws_leader(d).update(imagee="x"), "imagee"),
        ("LeaderWorkerSet", lambda d: _lws_leader(d)["startupProbe"].update(periodSeconds="ten"), "ten"),
        ("LeaderWorkerSet", lambda d: _lws_leader(d)["env"][1]["valueFrom"].update(secretKeyRef="k"), "'k'"),
        ("PodMonitor", lambda d: d["spec"]["podMetricsEndpoints"][0].update(portt="http"), "portt"),
        ("PodMonitor", lambda d: d["spec"].pop("selector"), "selector"),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].update({"for": "5 min"}), "5 min"),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0].pop("name"), "name"),
    ],
)
def test_each_validator_catches_a_broken_document(kind: str, change, says: str) -> None:
    found = _mutate(kind, change)
    assert found and any(says in p for p in found), found
    assert _mutate(kind, lambda d: None) == []


# ------------------------------------------------------------------------------ the pod's weights check


def _check(lock: Path, weights: Path, sha: str) -> subprocess.CompletedProcess:
    script = Path(k8s.CHECKER_PATH)
    return subprocess.run(
        [sys.executable, "-I", str(script), str(lock), str(weights), sha], capture_output=True, text=True
    )


def test_the_weights_check_passes_the_locked_files_and_fails_closed_on_a_changed_byte(tmp_path: Path) -> None:
    weights = _locked_weights(
        tmp_path / "w", {"config.json": b'{"a": 1}', "m/model-1.safetensors": b"\x02" * 128}
    )
    lock = lockfile.lock_path(weights)
    sha = lockfile.lock_digest(weights)
    ok = _check(lock, weights, sha)
    assert ok.returncode == 0, ok.stderr
    # the same verdict as the toolkit's own verify
    assert lockfile.verify(weights).ok
    shard = weights / "m/model-1.safetensors"
    shard.write_bytes(b"\x02" * 127 + b"\x03")
    bad = _check(lock, weights, sha)
    assert bad.returncode == 1 and "m/model-1.safetensors: digest" in bad.stderr
    shard.unlink()
    assert "missing" in _check(lock, weights, sha).stderr
    other = _check(lock, weights, "0" * 64)
    assert other.returncode == 1 and "the manifest pins" in other.stderr


# ------------------------------------------------------------------------- the engines' own parsers


@pytest.mark.slow
def test_every_pod_command_passes_its_engines_own_parser(tmp_path: Path) -> None:
    """One probe batch: the leader's and the worker's command of every vLLM, SGLang and KTransformers
    candidate, as the kubelet hands them to worker 1 (render --check-parsers does the same per render)."""
    from deploy.cli.render_k8s import kubelet_argv
    from deploy.engines import builds as engines
    from deploy.serving import parser_check

    for python in (engines.parser_python(), engines.kt_parser_python()):
        if not python.is_file():
            pytest.fail(f"parser venv missing at {python}: run `make setup`")
    batch = []
    for profile, cand_id in _cases():
        p = _plan(profile)
        result = k8s.compose(p, options(p, cand_id, tmp_path))
        for cmd in (result.commands.leader, result.commands.worker):
            if cmd is not None and cmd.node.program in parser_check.CHECKED:
                batch.append((cmd.node.program, kubelet_argv(cmd.argv, "kimi-deploy")))
    assert {engine for engine, _ in batch} >= {"vllm", "sglang", "ktransformers"}
    report = parser_check.check_argvs(batch)
    failed = [f"{r.engine}: {r.summary()}" for r in report.results if not r.ok]
    assert not failed, failed
    assert len(report.results) == len(batch)


@pytest.mark.slow
def test_a_fleets_router_command_passes_the_pinned_routers_parser(tmp_path: Path, run_cli) -> None:
    path = tmp_path / "plan.json"
    save_plan(_plan("h100x8-4nodes"), path)
    args = ["render", "--plan", str(path), "--target", "k8s", "--out", str(tmp_path / "k8s")]
    code, out, err = run_cli([*args, "--router-image", IMAGE, "--check-parsers"])
    assert code == 0, err
    assert "the router command passes" in out and out.count("parser check (vllm ") == 2


def test_bind_port_and_the_weights_volume_options_reach_the_pods(tmp_path: Path) -> None:
    p = _plan("h200x8")
    port = int(p.chosen_candidate.engine_args.get("port") or 8000) + 17
    opts = k8s.K8sOptions(bind="::", port=port, weights_volume="hostpath", api_key_secret="vault-kimi")
    docs = k8s.compose(p, opts).documents
    assert k8s_validate.validate_all(docs) == []
    leader, worker = templates(docs)
    engine = leader["containers"][0]
    argv = engine["command"]
    assert argv[argv.index("--host") + 1] == "::" and argv[argv.index("--port") + 1] == str(port)
    assert engine["ports"][0]["containerPort"] == port
    service = next(d for d in docs if d["kind"] == "Service")
    assert service["spec"]["ports"][0]["port"] == port
    volume = next(v for v in leader["volumes"] if v["name"] == "weights")
    assert volume["hostPath"]["path"] == str(render.weights_dir_for(p, p.chosen_candidate))
    refs = [
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in engine["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert refs == ["vault-kimi"]


def test_validation_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every schema is on disk (kubernetes-validate's bundled ones, the vendored CRDs): with every socket
    connection refused (a fault this machine cannot produce for one test otherwise) validation still runs."""
    import socket

    def refuse(*_args, **_kw):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    docs = _docs()
    assert k8s_validate.validate_all(docs) == []
    broken = copy.deepcopy(docs)
    broken[2]["spec"]["type"] = 7
    assert k8s_validate.validate_all(broken)


#: plan.json edits that keep it schema-valid (as tests/test_fuzz.py's), each reaching the k8s composer
K8S_EDITS = [
    ("engine_args", "served_model_name", "a/b:c"), ("engine_args", "served_model_name", "x\ny"),
    ("engine_args", "multinode", {"backend": "ray"}), ("engine_args", "api_key_env", None),
    ("engine_args", "port", 1), ("engine_args", "host", "::"), ("candidate", "nodes", 0),
    ("candidate", "data_parallel", 2), ("candidate", "tensor_parallel", 3),
    ("candidate", "status", "reduced"), ("candidate", "max_model_len", 1), ("node", "name", "n-1.a"),
    ("node", "address", "$(rm -rf /)"),
]  # fmt: skip


@pytest.mark.parametrize(("where", "key", "value"), K8S_EDITS)
def test_an_edited_plan_renders_or_fails_in_one_line(tmp_path: Path, run_cli, where, key, value) -> None:
    doc = _plan("h100x8-2nodes").to_dict()
    cand = next(c for c in doc["candidates"] if c["id"] == doc["chosen"])
    target = {"engine_args": cand["engine_args"], "candidate": cand, "node": doc["hardware"]["nodes"][0]}[
        where
    ]
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "k8s"
    code, _out, err = run_cli(["render", "--plan", str(path), "--target", "k8s", "--out", str(out)])
    assert "Traceback" not in err
    if code:
        assert len(err.strip().splitlines()) == 1, err
    else:
        docs = [yaml.safe_load(f.read_text()) for f in sorted(out.glob("*.yaml"))]
        assert k8s_validate.validate_all(docs) == []
        assert "rm -rf" not in "".join(f.read_text() for f in out.glob("*.yaml"))


# ----------------------------------------------------------------------------------------- a fleet


def test_a_fleet_is_one_lws_group_per_replica_behind_the_router(tmp_path: Path) -> None:
    from deploy.monitoring import fleet_rules
    from deploy.routers import registry as routers

    p = _plan("h100x8-4nodes")
    fleet = render.replicas.fleet_of(p)
    assert fleet is not None, "h100x8-4nodes plans replicas behind a router"
    result = k8s.compose(p, k8s.K8sOptions(name="kimi", router_image=IMAGE + "-router"))
    docs = result.documents
    assert k8s_validate.validate_all(docs) == []
    lws = lws_of(docs)
    assert lws["spec"]["replicas"] == len(fleet["replicas"])
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == p.chosen_candidate.nodes
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    router = routers.get(fleet["router"]["program"])
    port = int(fleet["replicas"][0]["port"])
    urls = command[command.index(router.worker_urls_flag) + 1 :]
    # LWS names group g's leader <name>-<g> under its headless Service <name>
    assert urls == [f"http://kimi-{g}.kimi:{port}" for g in range(len(fleet["replicas"]))]
    leader, _worker = templates(docs)
    assert leader["containers"][0]["ports"][0]["containerPort"] == port
    service = next(d for d in docs if d["kind"] == "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == int(fleet["router"]["port"])
    text = json.dumps(deployment)
    assert "secretKeyRef" in text and CANARY_KEY not in text
    # the router's alerts are the systemd render's (deploy.monitoring.fleet_rules), its replicas named
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    spec = k8s.monitoring_spec(result.candidate, k8s.K8sOptions(name="kimi"), p, port, None)
    router_spec = dataclasses.replace(
        spec,
        router=RouterTarget(router.name, "kimi-router:1", replicas=(("r0", "http://x:1"),)),
    )
    assert {r["alert"] for r in fleet_rules.router_rules(router_spec)} <= alerts
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    relabel = monitors[1]["spec"]["podMetricsEndpoints"][0]["metricRelabelings"]
    assert [r["replacement"] for r in relabel] == [str(r["id"]) for r in fleet["replicas"]]


def test_a_fleet_without_a_router_image_says_so(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="--router-image"):
        k8s.compose(_plan("h100x8-4nodes"), k8s.K8sOptions())
