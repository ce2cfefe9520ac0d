"""The router programs (vllm-router, sglang-router): their cached venvs, the command composed from plan.json's
``fleet.router``, that command through the pinned router's own parser, and the launchers that keep the key off
argv; which engine gets which router.

The parser checks run the real routers in the venvs `kimi-deploy engine install router` builds (`make
setup-router`, which `make test` runs); without them they fail with that command, never skip (as the engines'
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
from deploy.routers import base, client, install, registry, sglang_router, vllm_router
from deploy.routers.argv import check_router, launch_argv, launcher_path, router_argv
from deploy.routers.check import check_router_argv, check_router_argvs

ROUTER = registry.get("vllm-router")
URLS = ["http://10.0.0.2:8001", "http://10.0.0.3:8001"]
#: (router, engine) for every engine: the router its fleet gets
FLEETS = [(engines.get(e).router, e) for e in engines.names()]


def fleet_router(
    engine: str, host: str = "127.0.0.1", router: str | None = None, **override: object
) -> dict[str, object]:
    """plan.json's ``fleet.router`` as the contract writes it, for a fleet of ``engine`` replicas behind
    ``router`` (default: the one the engine gets)."""
    spec = registry.get(router or engines.get(engine).router)
    settings = spec.settings_for(engines.get(engine)).to_dict()
    return {
        "program": spec.name,
        "version": spec.version,
        "node": "head",
        "host": host,
        "port": 8000,
        "url": f"http://{host}:8000",
        "metrics_port": 29000,
        **settings,
        **override,
    }


PINS = {"vllm-router": pins.VLLM_ROUTER_VERSION, "sglang-router": pins.SGLANG_ROUTER_VERSION}


@pytest.fixture(scope="module")
def router_venvs() -> dict[str, Path]:
    missing = [n for n in registry.names() if not install.router_ready(n)]
    if missing:
        pytest.fail(f"router venvs missing for {', '.join(missing)}: run `{install.INSTALL_HINT}`")
    return {n: install.router_venv_dir(n) for n in registry.names()}


@pytest.mark.parametrize(
    "module", [router_argv_mod, install, client, base, vllm_router, sglang_router, registry]
)
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_every_engine_gets_a_router_that_keeps_the_history_field_it_reads() -> None:
    """The router choice is data with a reason; the router's data says it forwards a reasoning field the
    engine reads (tests/test_router_history.py shows each router's data against the real router)."""
    for name in engines.names():
        engine = engines.get(name)
        router = registry.for_engine(engine)
        assert engine.router_reason and router.name in engine.router_reason, name
        assert set(engine.history_reasoning_fields) & set(router.history_reasoning_fields), name
        policy, reason = engine.router_policies[router.name]
        assert policy in router.policies and reason, name
    assert registry.for_engine(engines.get("vllm")).name == "vllm-router"
    assert {registry.for_engine(engines.get(e)).name for e in ("sglang", "ktransformers", "llama.cpp")} == {
        "sglang-router"
    }


@pytest.mark.parametrize("name", registry.names())
def test_venv_key_follows_the_pin_and_the_cache_dir(tmp_path: Path, monkeypatch, name: str) -> None:
    assert install.router_venv_dir(name, tmp_path).name == f"{name}-{PINS[name]}"
    monkeypatch.setattr(constants, "CACHE_DIR", tmp_path / "cache")
    assert install.router_venv_dir(name) == tmp_path / "cache" / "venvs" / f"{name}-{PINS[name]}"
    assert install.router_problem(name) is not None and not install.router_ready(name)
    with pytest.raises(install.RouterMissingError, match="engine install router"):
        install.require_router(name)


@pytest.mark.parametrize("name", registry.names())
def test_install_commands_pin_the_router_and_its_constraints(tmp_path: Path, name: str) -> None:
    create, _pip_up, pip = install.router_install_commands(name, tmp_path / "v")
    assert create[1:3] == ["-m", "venv"]
    assert pip[-1] == f"{registry.get(name).package}=={PINS[name]}"
    assert pip[pip.index("-c") + 1] == str(install.CONSTRAINTS)
    pinned = [line for line in install.CONSTRAINTS.read_text().splitlines() if not line.startswith("#")]
    assert pinned and all("==" in line for line in pinned)


def test_router_venvs_are_built_and_reused(router_venvs: dict[str, Path]) -> None:
    messages: list[str] = []
    assert install.install_routers(progress=messages.append) == list(router_venvs.values())
    assert sum("cached at" in m for m in messages) == len(router_venvs)


def test_engine_install_and_path_name_every_router(router_venvs: dict[str, Path]) -> None:
    kd = [sys.executable, "-m", "deploy", "engine"]
    done = subprocess.run([*kd, "install", "router"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-len(router_venvs) :] == [str(v) for v in router_venvs.values()]
    for name in router_venvs:
        done = subprocess.run(
            [*kd, "path", "router", "--router", name], capture_output=True, text=True, timeout=300
        )
        assert done.stdout.strip() == str(install.router_python(name))
    done = subprocess.run([*kd, "install", "aiperf", "--router", "x"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr


@pytest.mark.parametrize(("router", "engine"), FLEETS)
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_fleet_commands_pass_the_routers_own_parser(
    router_venvs: dict[str, Path], router: str, engine: str, host: str
) -> None:
    """The command for each engine's fleet is accepted by the router it gets, and the router reads back every
    plan value (so a flag that the router took for another setting would show). Beyond loopback with the
    key, as rendered."""
    plan_router = fleet_router(engine, host)
    (result,) = check_router_argvs(router, [router_argv(plan_router, URLS)], with_key=host != "127.0.0.1")
    assert result.ok, result.error
    assert result.version == PINS[router]
    parsed = result.parsed
    assert parsed["policy"] == engines.get(engine).router_policies[router][0]
    assert (parsed["host"], parsed["port"], parsed["worker_urls"]) == (host, 8000, URLS)
    assert (parsed["prometheus_host"], parsed["prometheus_port"]) == (host, 29000)
    renamed = {"cb_timeout_s": "cb_timeout_duration_secs", "cb_window_s": "cb_window_duration_secs"}
    for key in base.RouterSettings.__dataclass_fields__:
        if key == "policy_reason":
            continue
        name = renamed.get(key, key.replace("_s", "_secs") if key.endswith("_s") else key)
        assert parsed[name] == plan_router[key], key


@pytest.mark.parametrize("router", registry.names())
def test_an_unknown_policy_in_a_plan_is_refused_by_the_router_in_one_line(
    router_venvs: dict[str, Path], router: str
) -> None:
    argv = router_argv(fleet_router("sglang", router=router, policy="fastest"), URLS)
    with pytest.raises(RouterArgsRejected) as exc:
        check_router_argv(router, argv)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{router} {PINS[router]} rejects the router command:")
    assert "--policy: invalid choice: 'fastest'" in message


@pytest.mark.parametrize("router", registry.names())
def test_an_unknown_flag_is_refused(router_venvs: dict[str, Path], router: str) -> None:
    unknown, abbreviated = check_router_argvs(
        router, [["--worker-urls", URLS[0], "--no-such-flag"], ["--worker-urls", URLS[0], "--pd-disagg"]]
    )
    assert not unknown.ok and "unrecognized arguments: --no-such-flag" in unknown.error
    # vllm-router's parser takes no abbreviation; sglang-router's (argparse's default) reads one as the
    # whole flag, which router_argv never writes (it spells out every flag from Router.flags)
    if router == "vllm-router":
        assert not abbreviated.ok
    else:
        assert abbreviated.ok and abbreviated.parsed["pd_disaggregation"] is True


def test_sglang_router_refuses_what_only_its_core_checks(router_venvs: dict[str, Path]) -> None:
    """A value our schema lets through but the Rust core rejects, in one line: power_of_two cannot start
    without workers, and the launcher starts sglang-router with none (it registers them once it listens)."""
    (result,) = check_router_argvs(
        "sglang-router", [router_argv(fleet_router("llama.cpp", policy="power_of_two"), URLS)]
    )
    assert not result.ok and "\n" not in result.error
    assert "Power-of-two policy requires at least 2 workers" in result.error


@pytest.mark.parametrize(("router", "level"), [("vllm-router", "warning"), ("sglang-router", "warn")])
def test_default_settings_pass_our_checks_and_never_carry_a_key(router: str, level: str) -> None:
    argv = router_argv(check_router(fleet_router("sglang", router=router)), URLS, log_level=level)
    assert not any("key" in a.lower() for a in argv)
    assert argv[argv.index("--log-level") + 1] == level
    assert launch_argv(router, argv)[:2] == [str(install.router_python(router)), str(launcher_path(router))]
    # each router's own spelling: vllm-router's "warning" is not sglang-router's
    other = "warn" if level == "warning" else "warning"
    with pytest.raises(PlanError, match=f"{router} log level '{other}'"):
        router_argv(fleet_router("sglang", router=router), URLS, log_level=other)


def _launch(router: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(install.router_python(router)), str(launcher_path(router)), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ["PATH"], **env},
    )


@pytest.mark.parametrize("router", registry.names())
def test_the_launcher_refuses_a_public_port_without_a_key(router_venvs: dict[str, Path], router: str) -> None:
    """For real: the launcher exits 2 with one line before the router binds anything."""
    argv = router_argv(fleet_router("sglang", "0.0.0.0", router=router), URLS)
    done = _launch(router, argv, {})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert f"{router}: refusing to listen on 0.0.0.0 without a key: set KIMI_ROUTER_API_KEY" in done.stderr
    without_key = check_router_argvs(router, [argv], with_key=False)
    assert not without_key[0].ok and "LaunchRefused" in without_key[0].error


@pytest.mark.parametrize("router", registry.names())
def test_the_launchers_own_doctests_in_the_router_venv(router_venvs: dict[str, Path], router: str) -> None:
    done = subprocess.run(
        [str(install.router_python(router)), "-m", "doctest", "-v", str(launcher_path(router))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "1 passed and 0 failed" in done.stdout or "Test passed." in done.stdout
