"""The router program: its cached venv, the command composed from plan.json's ``fleet.router``, that command
through the pinned vllm-router's own parser, and the launcher that keeps the key off argv.

The parser checks run the real vllm-router in the venv `kimi-deploy engine install router` builds (`make
setup-router`, which `make test` runs); without it they fail with that command, never skip (as the engines'
parser-venv tests do).
"""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import constants, pins
from deploy.engines import registry as engines
from deploy.errors import PlanError, RouterArgsRejected
from deploy.routers import argv as router_argv_mod
from deploy.routers import base, client, install, registry, vllm_router
from deploy.routers.argv import LAUNCHER, check_router, launch_argv, router_argv
from deploy.routers.check import check_router_argv, check_router_argvs

ROUTER = registry.get("vllm-router")
URLS = ["http://10.0.0.2:8001", "http://10.0.0.3:8001"]


def fleet_router(engine: str, host: str = "127.0.0.1", **override: object) -> dict[str, object]:
    """plan.json's ``fleet.router`` as the contract writes it, for a fleet of ``engine`` replicas."""
    settings = ROUTER.settings_for(engines.get(engine)).to_dict()
    return {
        "program": ROUTER.name,
        "version": ROUTER.version,
        "node": "head",
        "host": host,
        "port": 8000,
        "url": f"http://{host}:8000",
        "metrics_port": 29000,
        **settings,
        **override,
    }


@pytest.fixture(scope="module")
def router_venv() -> Path:
    if not install.router_ready():
        pytest.fail(f"router venv missing at {install.router_venv_dir()}: run `{install.INSTALL_HINT}`")
    return install.router_venv_dir()


@pytest.mark.parametrize("module", [router_argv_mod, install, client, base, vllm_router, registry])
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_venv_key_follows_the_pin_and_the_cache_dir(tmp_path: Path, monkeypatch) -> None:
    assert install.router_venv_dir(tmp_path).name == f"vllm-router-{pins.VLLM_ROUTER_VERSION}"
    monkeypatch.setattr(constants, "CACHE_DIR", tmp_path / "cache")
    assert (
        install.router_venv_dir() == tmp_path / "cache" / "venvs" / f"vllm-router-{pins.VLLM_ROUTER_VERSION}"
    )
    assert install.router_problem() is not None and not install.router_ready()
    with pytest.raises(install.RouterMissingError, match="engine install router"):
        install.require_router()


def test_install_commands_pin_the_router_and_its_constraints(tmp_path: Path) -> None:
    create, _pip_up, pip = install.router_install_commands(tmp_path / "v")
    assert create[1:3] == ["-m", "venv"]
    assert pip[-1] == f"vllm-router=={pins.VLLM_ROUTER_VERSION}"
    assert pip[pip.index("-c") + 1] == str(install.CONSTRAINTS)
    pinned = [line for line in install.CONSTRAINTS.read_text().splitlines() if not line.startswith("#")]
    assert pinned and all("==" in line for line in pinned)


def test_router_venv_is_built_and_reused(router_venv: Path) -> None:
    messages: list[str] = []
    assert install.install_router(progress=messages.append) == router_venv
    assert any("cached at" in m for m in messages)


def test_engine_install_and_path_name_the_router(router_venv: Path) -> None:
    kd = [sys.executable, "-m", "deploy", "engine"]
    done = subprocess.run([*kd, "install", "router"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(router_venv)
    done = subprocess.run([*kd, "path", "router"], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == str(install.router_python())


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llama.cpp"])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_fleet_commands_pass_the_routers_own_parser(router_venv: Path, engine: str, host: str) -> None:
    """The command for each engine's fleet is accepted, and the router reads back every plan value (so a
    flag that the router took for another setting would show). Beyond loopback with the key, as rendered."""
    plan_router = fleet_router(engine, host)
    (result,) = check_router_argvs([router_argv(plan_router, URLS)], with_key=host != "127.0.0.1")
    assert result.ok, result.error
    assert result.version == pins.VLLM_ROUTER_VERSION
    parsed = result.parsed
    assert parsed["policy"] == engines.get(engine).router_policy
    assert (parsed["host"], parsed["port"], parsed["worker_urls"]) == (host, 8000, URLS)
    assert (parsed["prometheus_host"], parsed["prometheus_port"]) == (host, 29000)
    renamed = {"cb_timeout_s": "cb_timeout_duration_secs", "cb_window_s": "cb_window_duration_secs"}
    for key in base.RouterSettings.__dataclass_fields__:
        if key == "policy_reason":
            continue
        name = renamed.get(key, key.replace("_s", "_secs") if key.endswith("_s") else key)
        assert parsed[name] == plan_router[key], key


def test_an_unknown_policy_in_a_plan_is_refused_by_the_router_in_one_line(router_venv: Path) -> None:
    argv = router_argv(fleet_router("vllm", policy="fastest"), URLS)
    with pytest.raises(RouterArgsRejected) as exc:
        check_router_argv(argv)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"vllm-router {pins.VLLM_ROUTER_VERSION} rejects the router command:")
    assert "--policy: invalid choice: 'fastest'" in message


def test_an_abbreviated_or_unknown_flag_is_refused(router_venv: Path) -> None:
    results = check_router_argvs([["--worker-urls", URLS[0], "--no-such-flag"], ["--pd-disagg"]])
    assert not any(r.ok for r in results)
    assert "unrecognized arguments: --no-such-flag" in results[0].error


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ({"port": 0}, "port: 0 is less than the minimum of 1"),
        ({"host": "$(touch /tmp/x)"}, "is not a valid host"),
        ({"metrics_port": 8000}, "port and metrics_port are both 8000"),
        ({"retry_max_backoff_ms": 10}, "retry_max_backoff_ms is below retry_initial_backoff_ms"),
        ({"retry_max_retries": 0}, "retry_max_retries: 0 is less than the minimum of 1"),
        ({"queue_size": -1}, "queue_size: -1 is less than the minimum of 0"),
        ({"health_check_endpoint": "/health; rm -rf /"}, "characters that are not allowed"),
        ({"policy": "a b"}, "characters that are not allowed"),
        ({"cb_timeout_s": "30"}, "'30' is not of type 'integer'"),
    ],
)
def test_bad_plan_values_stop_before_any_script(override: dict[str, object], words: str) -> None:
    with pytest.raises(PlanError, match="plan.json: fleet.router") as exc:
        router_argv(fleet_router("vllm", **override), URLS)
    assert words in str(exc.value)


@pytest.mark.parametrize(
    "urls", [[], ["http://10.0.0.2:8001/v1"], ["10.0.0.2:8001"], ["http://a b:1"], URLS[:1] * 2]
)
def test_bad_worker_urls_are_refused(urls: list[str]) -> None:
    with pytest.raises(PlanError, match="fleet"):
        router_argv(fleet_router("vllm"), urls)


def test_default_settings_pass_our_checks_and_never_carry_a_key() -> None:
    argv = router_argv(check_router(fleet_router("sglang")), URLS, log_level="warning")
    assert not any("key" in a.lower() for a in argv)
    assert argv[argv.index("--log-level") + 1] == "warning"
    assert launch_argv(argv)[:2] == [str(install.router_python()), str(LAUNCHER)]


def _launch(router_venv: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(install.router_python(router_venv)), str(LAUNCHER), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], **env},
    )


def test_the_launcher_refuses_a_public_port_without_a_key(router_venv: Path) -> None:
    """For real: the launcher exits 2 with one line before the router binds anything."""
    done = _launch(router_venv, router_argv(fleet_router("vllm", "0.0.0.0"), URLS), {})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "refusing to listen on 0.0.0.0 without a key: set KIMI_ROUTER_API_KEY" in done.stderr
    with_key = check_router_argvs([router_argv(fleet_router("vllm", "0.0.0.0"), URLS)], with_key=False)
    assert not with_key[0].ok and "LaunchRefused" in with_key[0].error


def test_the_launchers_own_doctests_in_the_router_venv(router_venv: Path) -> None:
    done = subprocess.run(
        [str(install.router_python(router_venv)), "-m", "doctest", "-v", str(LAUNCHER)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 passed and 0 failed" in done.stdout or "Test passed." in done.stdout
