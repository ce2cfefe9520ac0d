"""site.yml through ansible-runner against this machine (connection local): the whole pipeline on the demo
model — probe, plan, download from a real mirror on loopback, render, start the real llama-server, check.

First run changes things; the second changes nothing; `--check --diff` changes nothing (the plan, the
rendered files and the running server are untouched).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import ansible_support as support
import pytest

from deploy.weights import lockfile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("ansible-local")
    staged = support.stage_demo(root / "upstream")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    mirror = subprocess.Popen(
        [support.KD, "mirror", "serve", str(root / "upstream"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert mirror.stdout is not None
    url = ""
    for line in mirror.stdout:
        if line.startswith("mirror-ready "):
            url = json.loads(line.split(" ", 1)[1])["url"]
            break
    assert url, "the upstream mirror did not start"
    home = root / "kimi"
    inventory = support.write_inventory(
        root / "inventory.yml",
        {"localhost": {}},
        {},
        {
            "ansible_connection": "local",
            "ansible_python_interpreter": support.SYSTEM_PYTHON,
            "kimi_model": "demo",
            "kimi_venv": support.VENV,
            "kimi_home": str(home),
            "kimi_weights_dir": str(root / "models"),
            "kimi_hf_endpoint": url,
            "kimi_port": support.free_port(),
        },
    )
    try:
        yield {"inventory": inventory, "home": home, "staged": staged, "models": root / "models"}
    finally:
        subprocess.run(
            [support.KD, "down"],
            env={**env, "KIMI_DEPLOY_STATE_DIR": str(home / "state")},
            capture_output=True,
            timeout=120,
        )
        mirror.terminate()
        mirror.wait(timeout=30)


@pytest.fixture(scope="module")
def first(site: dict[str, Path]) -> support.Run:
    return support.run(site["inventory"])


def test_first_run_deploys(site: dict[str, Path], first: support.Run) -> None:
    assert first.result.ok, "\n".join(first.result.failed_tasks) or first.text[-4000:]
    assert first.result.changed.get("localhost", 0) > 0
    plan = support.read_json(site["home"] / "state" / "plan.json")
    chosen = next(c for c in plan["candidates"] if c["id"] == plan["chosen"])
    assert chosen["engine"] == "llama.cpp"
    lock = lockfile.read_lock(site["staged"])
    dest = site["models"] / chosen["weights"]["repo"]
    assert [(f.path, (dest / f.path).stat().st_size) for f in lock.files] == [
        (f.path, f.size) for f in lock.files
    ]
    rendered = site["home"] / "state" / "rendered"
    assert (rendered / "launch-localhost.sh").is_file()
    # the check stage ran and passed: its task reported on localhost
    assert "localhost" in first.task_order("Run the conformance check against the head's server")


def test_second_run_changes_nothing(site: dict[str, Path], first: support.Run) -> None:
    again = support.run(site["inventory"])
    assert again.result.ok, again.text[-4000:]
    assert again.result.total_changed == 0, [line for line in again.lines if "changed" in line]


def test_check_mode_changes_nothing(site: dict[str, Path], first: support.Run) -> None:
    state = site["home"] / "state"
    before = {p: p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file() and "run" not in p.parts}
    dry = support.run(site["inventory"], check=True, diff=True)
    assert dry.result.ok, dry.text[-4000:]
    assert dry.result.total_changed == 0
    after = {p: p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file() and "run" not in p.parts}
    assert after == before


def test_check_mode_on_a_fresh_node_reports_the_plan(site: dict[str, Path], tmp_path: Path) -> None:
    """On a node never deployed, --check says the plan would be installed and writes nothing."""
    inventory = support.write_inventory(
        tmp_path / "inventory.yml",
        {"localhost": {}},
        {},
        {
            "ansible_connection": "local",
            "ansible_python_interpreter": support.SYSTEM_PYTHON,
            "kimi_model": "demo",
            "kimi_venv": support.VENV,
            "kimi_home": str(tmp_path / "kimi"),
            "kimi_weights_dir": str(tmp_path / "models"),
        },
    )
    dry = support.run(inventory, check=True, tags=["inventory", "plan"])
    assert dry.result.ok, dry.text[-4000:]
    assert dry.result.changed.get("localhost", 0) >= 1
    assert not (tmp_path / "kimi").exists()


def test_monitoring_and_support_bundle_tags(
    site: dict[str, Path], first: support.Run, tmp_path: Path
) -> None:
    """--tags monitoring installs the head's rendered Prometheus config (checked by promtool there);
    --tags support-bundle fetches the node's bundle to the controller. Neither runs in a normal run."""
    assert first.task_order("Make the support bundle on this node") == []
    dest, bundles = tmp_path / "prometheus", tmp_path / "bundles"
    r = support.run(
        site["inventory"],
        tags=["monitoring", "support-bundle"],
        extra_vars=[f"kimi_monitoring_dir={dest}", f"kimi_support_dest={bundles}"],
    )
    assert r.result.ok, "\n".join(r.result.failed_tasks) or r.text[-4000:]
    rendered = site["home"] / "state" / "rendered" / "monitoring"
    assert (dest / "prometheus.yml").read_text() == (rendered / "prometheus.yml").read_text()
    assert sorted(p.name for p in (dest / "rules").iterdir()) == sorted(
        p.name for p in (rendered / "rules").iterdir()
    )
    assert "localhost" in r.task_order(
        "Check the installed config and rules with promtool (where it is installed)"
    )
    (bundle,) = bundles.iterdir()
    assert bundle.name == "localhost.tar.gz"
    with tarfile.open(bundle) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
    assert {"MANIFEST.json", "plan.json", "status.json", "logs/localhost.log"} <= names
