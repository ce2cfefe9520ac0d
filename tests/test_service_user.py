"""`render --service-user NAME` (issue 24, systemd): every unit runs as a dedicated user.

What stood in the way of ``User=``, and the rule each test checks (the source beside it):
- the env files are root's 0600: systemd reads ``EnvironmentFile=`` itself before it drops to ``User=``
  (systemd.exec(5), "EnvironmentFile=": the files are read by the service manager), so they stay as they are;
- llama.cpp's build and the router's venv live in the kimi-deploy cache of whoever installs them: the install
  script builds them as the service user (``runuser -u NAME --``, util-linux runuser(1)), into its own cache;
- SGLang writes its API-key config into the release folder (root's): with a service user it goes into the
  unit's ``RuntimeDirectory=``, which systemd creates owned by ``User=`` (systemd.exec(5),
  "RuntimeDirectory=").

Plans come from the real planner on the profiles in hardware/ (and a CPU profile written here); the user name
reaches the unit unquoted, so it is validated first (systemd's and useradd's portable user-name rule).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import test_render
from helpers.cpu_nodes import write_cpu_profile
from test_render import gguf_weights, plan_file

from deploy.hardware.profiles import load_profile
from deploy.planning.contract import save_plan
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.routers import registry as routers

USER = "kimi-svc"
KEY = "service-user-canary-key-5c1e"
#: the CLI fixture of test_render (the real entry point, in-process)
run_cli = test_render.run_cli


def _service(text: str) -> dict[str, list[str]]:
    """The [Service] section of a unit: each key with every value it is given."""
    section, values = "", {}
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            values.setdefault(key, []).append(value)
    return values


def _cpu_fleet(tmp_path: Path, *extra: str, run_cli) -> Path:
    """A llama.cpp fleet of two replicas behind the router on one CPU node, rendered with ``extra``."""
    profile = write_cpu_profile(tmp_path / "box.yaml", ["127.0.0.1"], ram_gib=64, cores=8)
    p = plan(load_profile(str(profile)), PlanRequest(model="demo", engine="llama.cpp", replicas=2))
    path = tmp_path / "plan.json"
    save_plan(p, path)
    weights = gguf_weights(tmp_path, p.chosen_candidate, shards=1)
    out = tmp_path / "out"
    r = run_cli(["render", "--plan", str(path), "--out", str(out), "--weights-dir", str(weights), *extra])
    assert r.exit_code == 0, r.stderr
    return (out / "current").resolve()


def test_every_unit_runs_as_the_service_user_and_the_cache_is_built_as_it(tmp_path: Path, run_cli) -> None:
    release = _cpu_fleet(tmp_path, "--service-user", USER, run_cli=run_cli)
    manifest = json.loads((release / "manifest.json").read_text())
    units = sorted(release.glob("*.service"))
    # every replica node's unit and the router's
    assert {u.name for u in units} == {n["service"] for n in manifest["nodes"]} | {
        manifest["fleet"]["router"]["service"]
    }
    for unit in units:
        assert _service(unit.read_text())["User"] == [USER], unit.name
    installs = sorted(release.glob("install-*.sh"))
    assert len(installs) == len(units)
    for script in installs:
        steps = [line for line in script.read_text().splitlines() if line and not line.startswith("#")]
        cache_steps = [line for line in steps if "kimi-deploy engine install" in line]
        assert cache_steps, script.name
        # the build lands in the service user's own ~/.cache/kimi-deploy, where its launch script looks
        assert all(
            line.startswith(f"runuser -u {USER} -- kimi-deploy engine install") for line in cache_steps
        )
    # `upgrade` re-renders with the options the release was made with
    meta = json.loads((release / "release.json").read_text())
    assert meta["render_options"]["service_user"] == USER


def test_without_the_option_the_units_run_as_root_as_before(tmp_path: Path, run_cli) -> None:
    release = _cpu_fleet(tmp_path, run_cli=run_cli)
    for unit in release.glob("*.service"):
        service = _service(unit.read_text())
        assert "User" not in service and "RuntimeDirectory" not in service, unit.name
    for script in release.glob("install-*.sh"):
        assert "runuser" not in script.read_text()


@pytest.mark.parametrize("user", [USER, None])
def test_sglang_writes_its_key_file_where_the_service_user_may(tmp_path: Path, run_cli, user) -> None:
    """SGLang reads its API key only from a --config file (deploy.serving.argv): under User= the launch
    script writes it into the unit's RuntimeDirectory, which systemd makes the user's (mode 0700)."""
    path, p = plan_file(tmp_path, "h200x8", engine="sglang")
    out = tmp_path / "out"
    extra = ["--service-user", user] if user else []
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(out),
            "--bind",
            "0.0.0.0",
            "--api-key-env",
            "KIMI_API_KEY",
        ]
        + extra,
        {"KIMI_API_KEY": KEY},
    )
    assert r.exit_code == 0, r.stderr
    release = (out / "current").resolve()
    head = json.loads((release / "manifest.json").read_text())["nodes"][0]
    service = _service((release / head["service"]).read_text())
    launch = (release / head["launch"]).read_text()
    if user:
        assert service["User"] == [user]
        assert service["RuntimeDirectory"] == [Path(head["service"]).stem]
        assert service["RuntimeDirectoryMode"] == ["0700"]
        assert '"${RUNTIME_DIRECTORY:-$here}"/.sglang-api-key.yaml' in launch
    else:
        assert "User" not in service and "RuntimeDirectory" not in service
        assert '="$here"/.sglang-api-key.yaml' in launch
    # the env files stay root's 0600: systemd reads them before it drops to User=
    assert all(f.endswith(".env") for f in (Path(e).name for e in service["EnvironmentFile"]))
    assert KEY not in launch


@pytest.mark.parametrize(
    "name", ["Kimi", "1kimi", "kimi;rm -rf /", "kimi\nUser=root", "kimi svc", '"kimi"', "k" * 33, "root", ""]
)
def test_a_bad_service_user_is_one_line_and_writes_nothing(tmp_path: Path, run_cli, name: str) -> None:
    path, _ = plan_file(tmp_path, "h200x8", engine="sglang")
    out = tmp_path / "out"
    r = run_cli(["render", "--plan", str(path), "--out", str(out), "--service-user", name])
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith("error: --service-user") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr and not out.exists()


def test_the_kubernetes_target_refuses_the_option(tmp_path: Path, run_cli) -> None:
    path, _ = plan_file(tmp_path, "h200x8", engine="sglang")
    r = run_cli(
        [
            "render",
            "--target",
            "k8s",
            "--plan",
            str(path),
            "--out",
            str(tmp_path / "k"),
            "--service-user",
            USER,
        ]
    )
    assert r.exit_code == 2
    assert r.stderr.strip() == "error: --service-user applies to the systemd target, not --target k8s"


def test_a_fleet_router_unit_runs_as_the_user_too(tmp_path: Path, run_cli) -> None:
    """The router's launcher runs from its venv in the cache (deploy.routers.install), built as the user."""
    path, p = plan_file(tmp_path, "h100x8-4nodes")
    assert p.fleet.router is not None
    out = tmp_path / "out"
    env = {"KIMI_API_KEY": KEY, routers.get(p.fleet.router["program"]).api_key_env: KEY}
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(out),
            "--bind",
            "0.0.0.0",
            "--api-key-env",
            "KIMI_API_KEY",
        ]
        + ["--service-user", USER],
        env,
    )
    assert r.exit_code == 0, r.stderr
    release = (out / "current").resolve()
    router = json.loads((release / "manifest.json").read_text())["fleet"]["router"]
    assert _service((release / router["service"]).read_text())["User"] == [USER]
    assert (
        f"runuser -u {USER} -- kimi-deploy engine install router" in (release / router["install"]).read_text()
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_itself_reads_the_units_without_a_complaint(tmp_path: Path, run_cli) -> None:
    """systemd's own parser (`systemd-analyze verify`, offline): every unit of a fleet rendered with a service
    user, the router's included, parses with no warning (a quoted or odd User= draws "does not match strict
    user/group name rules"; an unknown key or a bad RuntimeDirectory= is named too)."""
    release = _cpu_fleet(tmp_path, "--service-user", USER, run_cli=run_cli)
    path, _ = plan_file(tmp_path, "h200x8", engine="sglang")
    out = tmp_path / "sglang"
    r = run_cli(
        [
            "render",
            "--plan",
            str(path),
            "--out",
            str(out),
            "--bind",
            "0.0.0.0",
            "--api-key-env",
            "KIMI_API_KEY",
        ]
        + ["--service-user", USER],
        {"KIMI_API_KEY": KEY},
    )
    assert r.exit_code == 0, r.stderr
    units = sorted(release.glob("*.service")) + sorted((out / "current").resolve().glob("*.service"))
    assert any("RuntimeDirectory=" in u.read_text() for u in units)
    done = subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
