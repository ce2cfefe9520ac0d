"""The router's prefill/decode (PD) mode: the command ``router_argv`` composes from ``fleet.router["pd"]``,
that command through each pinned router's own parser, each router's PD data against its parser, and the
handshake each real router performs with its prefill and decode servers.

The handshake tests start each REAL pinned router (vllm-router 0.1.17, sglang-router 0.3.2) through its
shipped launcher, with the key in its environment, in PD mode on loopback in front of STAND-IN prefill and
decode servers (``tests/helpers/pd_engine.py``: real HTTP processes that record every request the router
sends them and answer as the engines would). A stand-in is used because no engine here can run PD on CPU
(SGLang's and vLLM's PD modes need GPUs and an RDMA/NIXL transfer engine): what is checked is the router's
side of the handshake (what it sends each role, what it carries from the prefill's answer or its bootstrap
server to the decode, whose tokens reach the client). The KV transfer itself, over RDMA or otherwise, is
NOT exercised here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.pd_engine import KEY_ENV, bootstrap_engine_id
from helpers.processes import process, until

from deploy.errors import PlanError
from deploy.routers import install, registry
from deploy.routers.argv import launch_argv, router_argv
from deploy.routers.base import RouterSettings
from deploy.routers.check import check_router_argvs

FAKE_ENGINE = Path(__file__).parent / "helpers" / "pd_engine.py"
KEY = "pd-test-key-0123456789"
PREFILL = [("http://10.0.0.2:8001", 8998), ("http://10.0.0.5:8001", None)]
DECODE = ["http://10.0.0.3:8001", "http://10.0.0.4:8001"]
#: the connector each router's PD fleet names in these tests (sglang-router has none: the engines pick it)
CONNECTOR = {"vllm-router": "nixl", "sglang-router": None}


def plan_router(router: str, **override: Any) -> dict[str, Any]:
    """plan.json's ``fleet.router`` for ``router`` in PD mode: cache_aware prefill, round_robin decode, the
    router's connector, unless ``override`` says otherwise (``pd=None``: the ordinary mode)."""
    settings = RouterSettings(policy="round_robin", policy_reason="test").to_dict()
    pd = {"kv_connector": CONNECTOR[router], "prefill_policy": "cache_aware", "decode_policy": "round_robin"}
    return {
        "program": router,
        "host": "127.0.0.1",
        "port": 8000,
        "metrics_port": 29000,
        **settings,
        "pd": pd,
        **override,
    }


@pytest.fixture(scope="module")
def router_venvs() -> None:
    missing = [n for n in registry.names() if not install.router_ready(n)]
    if missing:
        pytest.fail(f"router venvs missing for {', '.join(missing)}: run `{install.INSTALL_HINT}`")


# --- the command ---


@pytest.mark.parametrize("router", registry.names())
def test_one_prefill_two_decode_argv(router: str) -> None:
    """The common flags as in the ordinary mode, then the mode's flag, each role's servers and policy, and
    the connector where the router takes one; no --worker-urls."""
    spec = registry.get(router)
    assert spec.pd is not None
    prefill, decode = [("http://10.0.0.2:8001", 8998)], DECODE
    argv = router_argv(plan_router(router), [], prefill=prefill, decode=decode)
    ordinary = router_argv(plan_router(router, pd=None), ["http://10.0.0.9:8001"])
    common = ordinary[: ordinary.index(spec.worker_urls_flag)]
    assert argv[: len(common)] == common
    connector = [] if spec.pd.kv_connector_flag is None else [spec.pd.kv_connector_flag, "nixl"]
    assert argv[len(common) :] == [
        spec.pd.flag,
        "--prefill", "http://10.0.0.2:8001", "8998",
        "--decode", "http://10.0.0.3:8001",
        "--decode", "http://10.0.0.4:8001",
        "--prefill-policy", "cache_aware",
        "--decode-policy", "round_robin",
        *connector,
    ]  # fmt: skip
    assert spec.worker_urls_flag not in argv
    # a prefill without a bootstrap port is its URL alone
    argv = router_argv(plan_router(router), [], prefill=[(PREFILL[1][0], None)], decode=decode)
    assert argv[argv.index("--prefill") : argv.index("--prefill") + 3] == [
        "--prefill",
        PREFILL[1][0],
        "--decode",
    ]


@pytest.mark.parametrize("router", registry.names())
def test_no_pd_or_a_null_pd_is_the_ordinary_command(router: str) -> None:
    with_null = router_argv(plan_router(router, pd=None), DECODE)
    absent = {k: v for k, v in plan_router(router).items() if k != "pd"}
    assert router_argv(absent, DECODE) == with_null
    assert with_null[-3:] == [registry.get(router).worker_urls_flag, *DECODE]


WRONG: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("replica URLs", {}, {"worker_urls": DECODE}, "takes prefill and decode servers, not replica URLs"),
    ("no prefill", {}, {"prefill": []}, "needs at least one prefill server"),
    ("no decode", {}, {"decode": []}, "needs at least one decode server"),
    (
        "bad prefill URL",
        {},
        {"prefill": [("http://x:1/$(id)", None)]},
        "prefill URL 'http://x:1/$(id)' is not",
    ),
    ("bad decode URL", {}, {"decode": ["ftp://10.0.0.3:1"]}, "decode URL 'ftp://10.0.0.3:1' is not"),
    ("prefill not a pair", {}, {"prefill": ["http://10.0.0.2:8001"]}, "is not (URL, bootstrap port or None)"),
    ("port 0", {}, {"prefill": [("http://10.0.0.2:8001", 0)]}, "bootstrap port 0 is not a port"),
    (
        "port too big",
        {},
        {"prefill": [("http://10.0.0.2:8001", 65536)]},
        "bootstrap port 65536 is not a port",
    ),
    ("port a string", {}, {"prefill": [("http://10.0.0.2:8001", "8998")]}, "bootstrap port '8998' is not"),
    ("port a bool", {}, {"prefill": [("http://10.0.0.2:8001", True)]}, "bootstrap port True is not a port"),
    ("same URL twice", {}, {"decode": [DECODE[0], DECODE[0]]}, "two decode servers have the same URL"),
    ("prefill is decode", {}, {"decode": [PREFILL[0][0]]}, "a prefill and a decode server have the same URL"),
    (
        "unknown key",
        {"pd": {"kv_connector": None, "prefill_policy": "random", "decode_policy": "random", "extra": 1}},
        {},
        "fleet.router: pd: Additional properties",
    ),
    ("missing key", {"pd": {"prefill_policy": "random", "decode_policy": "random"}}, {}, "'kv_connector'"),
    (
        "unknown connector",
        {"pd": {"kv_connector": "rdma", "prefill_policy": "random", "decode_policy": "random"}},
        {},
        "pd.kv_connector: 'rdma' is not one of",
    ),
    (
        "policy not a word",
        {"pd": {"kv_connector": None, "prefill_policy": "a b", "decode_policy": "random"}},
        {},
        "pd.prefill_policy",
    ),
]


@pytest.mark.parametrize("router", registry.names())
@pytest.mark.parametrize(("case", "override", "call", "message"), WRONG, ids=[w[0] for w in WRONG])
def test_wrong_pd_input_is_one_plan_error(
    router: str, case: str, override: dict[str, Any], call: dict[str, Any], message: str
) -> None:
    args = {"worker_urls": [], "prefill": PREFILL, "decode": DECODE, **call}
    if override.get("pd", {}).get("kv_connector", "absent") is None:
        # the router's own connector, so that only the case's fault is wrong
        override = {"pd": {**override["pd"], "kv_connector": CONNECTOR[router]}}
    with pytest.raises(PlanError) as exc:
        router_argv(
            plan_router(router, **override),
            args["worker_urls"],
            prefill=args["prefill"],
            decode=args["decode"],
        )
    assert "\n" not in str(exc.value)
    assert message in str(exc.value), str(exc.value)


@pytest.mark.parametrize("router", registry.names())
def test_prefill_or_decode_servers_without_pd_are_refused(router: str) -> None:
    ordinary = {k: v for k, v in plan_router(router).items() if k != "pd"}
    for call in ({"prefill": PREFILL}, {"decode": DECODE}, {"prefill": [], "decode": []}):
        with pytest.raises(PlanError, match="fleet.router has no pd"):
            router_argv(ordinary, DECODE, **call)


@pytest.mark.parametrize("router", registry.names())
def test_role_policies_and_connectors_are_each_routers_own(router: str) -> None:
    spec = registry.get(router)
    assert spec.pd is not None
    for role, policies in (("prefill", spec.pd.prefill_policies), ("decode", spec.pd.decode_policies)):
        other = "decode" if role == "prefill" else "prefill"
        for policy in ("bucket", "kv_aware"):
            pd = {"kv_connector": CONNECTOR[router], f"{role}_policy": policy, f"{other}_policy": "random"}
            if policy in policies:
                assert policy in router_argv(plan_router(router, pd=pd), [], prefill=PREFILL, decode=DECODE)
            else:
                with pytest.raises(PlanError, match=f"{router} {role} policy '{policy}': expected one of"):
                    router_argv(plan_router(router, pd=pd), [], prefill=PREFILL, decode=DECODE)
        # power_of_two needs two servers of the role (the core refuses it only when it starts)
        pd = {
            "kv_connector": CONNECTOR[router],
            f"{role}_policy": "power_of_two",
            f"{other}_policy": "random",
        }
        assert "power_of_two" in router_argv(plan_router(router, pd=pd), [], prefill=PREFILL, decode=DECODE)
        one = {"prefill": PREFILL[:1], "decode": DECODE[:1]}
        with pytest.raises(
            PlanError, match=f"{role} policy 'power_of_two' needs at least 2 {role} servers, not 1"
        ):
            router_argv(plan_router(router, pd=pd), [], **one)
    pd = {"prefill_policy": "random", "decode_policy": "random"}
    if spec.pd.kv_connector_flag is None:
        with pytest.raises(PlanError, match=f"{router} takes no KV connector .*must be null, not 'nixl'"):
            router_argv(
                plan_router(router, pd={**pd, "kv_connector": "nixl"}), [], prefill=PREFILL, decode=DECODE
            )
    else:
        with pytest.raises(
            PlanError, match=f"{router} needs fleet.router.pd.kv_connector, one of .* not None"
        ):
            router_argv(
                plan_router(router, pd={**pd, "kv_connector": None}), [], prefill=PREFILL, decode=DECODE
            )
        for connector in ("nixl", "mooncake"):
            argv = router_argv(
                plan_router(router, pd={**pd, "kv_connector": connector}), [], prefill=PREFILL, decode=DECODE
            )
            assert argv[-2:] == [spec.pd.kv_connector_flag, connector]


# --- the router's own parser ---

PARSER_OPTIONS = """
import argparse, importlib, json, sys
RouterArgs = importlib.import_module(sys.argv[1] + ".router_args").RouterArgs
parser = argparse.ArgumentParser()
RouterArgs.add_cli_args(parser, use_router_prefix=False)
choices = {o: list(a.choices or []) for a in parser._actions for o in a.option_strings}
print(json.dumps(choices))
"""


@pytest.mark.parametrize("router", registry.names())
def test_pd_data_is_the_pinned_parsers(router_venvs: None, router: str) -> None:
    """``Router.pd``'s flags exist in the pinned router's parser and its policy and connector lists are the
    parser's choices, exactly."""
    spec = registry.get(router)
    assert spec.pd is not None
    package = spec.modules[0].split(".")[0]
    done = subprocess.run(
        [str(install.router_python(router)), "-c", PARSER_OPTIONS, package],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    options = json.loads(done.stdout)
    for flag in (spec.pd.flag, spec.pd.prefill_flag, spec.pd.decode_flag):
        assert flag in options, flag
    assert options[spec.pd.prefill_policy_flag] == list(spec.pd.prefill_policies)
    assert options[spec.pd.decode_policy_flag] == list(spec.pd.decode_policies)
    if spec.pd.kv_connector_flag is None:
        assert not [o for o in options if "connector" in o]
    else:
        assert options[spec.pd.kv_connector_flag] == list(spec.pd.kv_connectors)


@pytest.mark.parametrize("router", registry.names())
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_pd_commands_pass_the_routers_own_parser(router_venvs: None, router: str, host: str) -> None:
    """Two prefill servers (one with a bootstrap port) and two decode servers: the router's parser, its
    validation and its core's constructor accept the command and read back every server, port and policy.
    Beyond loopback with the key, as rendered; vllm-router's launcher then checks clients' keys against every
    prefill and decode server."""
    spec = registry.get(router)
    assert spec.pd is not None
    argv = router_argv(plan_router(router, host=host), [], prefill=PREFILL, decode=DECODE)
    (result,) = check_router_argvs(router, [argv], with_key=host != "127.0.0.1")
    assert result.ok, result.error
    parsed = result.parsed
    assert parsed[spec.pd.flag.lstrip("-").replace("-", "_")] is True
    assert parsed["prefill_urls"] == [list(p) for p in PREFILL]
    assert parsed["decode_urls"] == DECODE
    assert (parsed["prefill_policy"], parsed["decode_policy"], parsed["policy"]) == (
        "cache_aware",
        "round_robin",
        "round_robin",
    )
    assert parsed["worker_urls"] == []
    assert (parsed["host"], parsed["port"], parsed["prometheus_port"]) == (host, 8000, 29000)
    if spec.pd.kv_connector_flag is not None:
        assert parsed["kv_connector"] == "nixl"
    if router == "vllm-router" and host != "127.0.0.1":
        # its launcher checks a client's key against the servers' /v1/models: every prefill and decode
        servers = [u for u, _ in PREFILL] + DECODE
        assert parsed["api_key_validation_urls"] == [u + "/v1/models" for u in servers]


@pytest.mark.parametrize("router", registry.names())
def test_the_launchers_check_refuses_what_the_core_refuses_only_at_start(
    router_venvs: None, router: str
) -> None:
    """A hand-written command with power_of_two for a role of one server: the core starts, checks it and
    exits (seen with both routers); the parser check refuses it first, in the core's words."""
    spec = registry.get(router)
    assert spec.pd is not None
    common = ["--host", "127.0.0.1", "--port", "8000", spec.pd.flag, "--decode", DECODE[0]]
    one, two = ["--prefill", PREFILL[0][0]], ["--prefill", PREFILL[0][0], "--prefill", PREFILL[1][0]]
    decode2 = ["--decode", DECODE[1]]
    refused_prefill, both_two, refused_decode, inherited = check_router_argvs(
        router,
        [
            [*common, *decode2, *one, "--prefill-policy", "power_of_two"],
            [*common, *decode2, *two, "--prefill-policy", "power_of_two", "--decode-policy", "power_of_two"],
            [*common, *two, "--decode-policy", "power_of_two"],
            # a role inheriting --policy is not checked by the core (both routers started with it)
            [*common, *one, "--policy", "power_of_two"],
        ],
        with_key=False,
    )
    assert not refused_prefill.ok
    assert "Power-of-two policy for prefill requires at least 2 prefill workers" in refused_prefill.error
    assert not refused_decode.ok
    assert "Power-of-two policy for decode requires at least 2 decode workers" in refused_decode.error
    assert both_two.ok and inherited.ok, (both_two.error, inherited.error)


# --- the handshake, against the real routers ---


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


COMPLETIONS = ("/v1/chat/completions", "/v1/completions")


@dataclass
class Fleet:
    """One prefill server (with a bootstrap server) and two decode servers behind a router in PD mode."""

    url: str
    prefill_port: int
    bootstrap_port: int
    decode_ports: list[int]
    logs: list[Path]

    def seen(self) -> list[dict[str, Any]]:
        """Every request the stand-ins recorded, from all of them."""
        return [
            json.loads(line) for log in self.logs if log.exists() for line in log.read_text().splitlines()
        ]

    def posts_for(self, marker: str, paths: tuple[str, ...] = COMPLETIONS) -> dict[str, list[dict[str, Any]]]:
        """The requests to ``paths``, per role, whose body holds ``marker``."""
        found: dict[str, list[dict[str, Any]]] = {"prefill": [], "decode": []}
        for entry in self.seen():
            if entry["method"] == "POST" and entry["path"] in paths and marker in json.dumps(entry["body"]):
                found[entry["role"]].append(entry)
        return found


def _healthy(body: dict[str, Any]) -> int:
    """Healthy workers in a ``/readiness`` body: vllm-router's PD answer counts per role, sglang-router's
    as in the ordinary mode."""
    if "prefill" in body:
        return body["prefill"]["healthy"] + body["decode"]["healthy"]
    return body.get("healthy_workers", 0)


@contextlib.contextmanager
def _pd_fleet(router: str, pd: dict[str, Any], tmp: Path) -> Iterator[Fleet]:
    spec = registry.get(router)
    if not install.router_ready(spec):
        pytest.fail(f"{router} venv missing: run `{install.INSTALL_HINT}`")
    prefill_port, bootstrap, port, metrics_port = _free_port(), _free_port(), _free_port(), _free_port()
    decode_ports = [_free_port(), _free_port()]
    roles = [("prefill", prefill_port, [str(bootstrap)])] + [("decode", p, []) for p in decode_ports]
    logs = [tmp / f"{role}-{p}.jsonl" for role, p, _ in roles]
    plan = {**plan_router(router, pd=pd), "port": port, "metrics_port": metrics_port}
    argv = router_argv(
        plan,
        [],
        prefill=[(f"http://127.0.0.1:{prefill_port}", bootstrap)],
        decode=[f"http://127.0.0.1:{p}" for p in decode_ports],
    )
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), spec.api_key_env: KEY}
    # the stand-ins require the key on /v1/*, as engines started with --api-key do
    engine_env = {"PATH": os.environ["PATH"], KEY_ENV: KEY}
    auth = {"Authorization": f"Bearer {KEY}"}
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        for (role, p, extra), log in zip(roles, logs, strict=True):
            cmd = [sys.executable, str(FAKE_ENGINE), role, str(p), str(log), *extra]
            proc = stack.enter_context(process(cmd, tmp / f"{role}-{p}.log", engine_env))
            health = f"http://127.0.0.1:{p}/health"
            until(
                f"{role} {p}", lambda u=health: requests.get(u, timeout=2).ok, proc, tmp / f"{role}-{p}.log"
            )
        proc = stack.enter_context(process(launch_argv(spec, argv), tmp / "router.log", env))

        def ready() -> bool:
            reply = requests.get(f"{url}/readiness", headers=auth, timeout=2)
            return reply.status_code == 200 and _healthy(reply.json()) == 3

        until(router, ready, proc, tmp / "router.log")
        yield Fleet(url, prefill_port, bootstrap, decode_ports, logs)


def _chat(url: str, marker: str, stream: bool, key: str = KEY) -> requests.Response:
    body = {
        "model": "demo",
        "max_tokens": 8,
        "stream": stream,
        "messages": [{"role": "user", "content": f"Say hi ({marker})"}],
    }
    return requests.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        stream=stream,
    )


def _client_text(reply: requests.Response, stream: bool) -> str:
    """The assistant text the client got: the message, or the streamed deltas up to ``data: [DONE]``."""
    assert reply.status_code == 200, reply.text
    if not stream:
        return reply.json()["choices"][0]["message"]["content"]
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [
        line[len("data: ") :] for line in reply.iter_lines(decode_unicode=True) if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]", events
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])


def _one_each(fleet: Fleet, marker: str) -> tuple[dict[str, Any], dict[str, Any]]:
    posts = fleet.posts_for(marker)
    assert len(posts["prefill"]) == 1 and len(posts["decode"]) == 1, posts
    return posts["prefill"][0], posts["decode"][0]


def _check_workers(fleet: Fleet) -> None:
    """The router's own listing: one prefill with the bootstrap port configured, two decodes."""
    reply = requests.get(f"{fleet.url}/workers", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert reply.status_code == 200, reply.text
    workers = {w["url"]: w for w in reply.json()["workers"]}
    prefill = workers.pop(f"http://127.0.0.1:{fleet.prefill_port}")
    assert (prefill["worker_type"], prefill["bootstrap_port"]) == ("prefill", fleet.bootstrap_port)
    assert {u: w["worker_type"] for u, w in workers.items()} == {
        f"http://127.0.0.1:{p}": "decode" for p in fleet.decode_ports
    }


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_sglang_router_injects_one_bootstrap_room_into_both_requests(tmp_path: Path, stream: bool) -> None:
    """sglang-router 0.3.2 sends the client's request to the prefill and to the decode at once, each with
    the same ``bootstrap_host`` (the prefill's host), ``bootstrap_port`` (the one configured) and
    ``bootstrap_room`` (a fresh random 63-bit number per request), with the key; the client gets the decode's
    tokens."""
    pd = {"kv_connector": None, "prefill_policy": "cache_aware", "decode_policy": "round_robin"}
    with _pd_fleet("sglang-router", pd, tmp_path) as fleet:
        _check_workers(fleet)
        rooms = []
        for n in range(2):
            marker = f"sglang-{stream}-{n}-{uuid.uuid4().hex}"
            text = _client_text(_chat(fleet.url, marker, stream), stream)
            prefill, decode = _one_each(fleet, marker)
            assert text == f"decode@{decode['port']} says hi"
            boot = [
                {k: e["body"][k] for k in ("bootstrap_host", "bootstrap_port", "bootstrap_room")}
                for e in (prefill, decode)
            ]
            assert boot[0] == boot[1], boot
            assert (
                boot[0]["bootstrap_host"] == "127.0.0.1" and boot[0]["bootstrap_port"] == fleet.bootstrap_port
            )
            room = boot[0]["bootstrap_room"]
            assert type(room) is int and 0 <= room < 2**63
            rooms.append(room)
            for entry in (prefill, decode):
                assert entry["path"] == "/v1/chat/completions"
                assert entry["body"]["stream"] is stream
                assert entry["body"]["max_completion_tokens"] == 8
                assert entry["headers"]["authorization"] == f"Bearer {KEY}"
        assert rooms[0] != rooms[1]
        _refuses_a_client_without_the_key(fleet)


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_vllm_router_nixl_hands_the_prefills_kv_params_to_the_decode(tmp_path: Path, stream: bool) -> None:
    """vllm-router 0.1.17 with ``--kv-connector nixl``: first the prefill, asked for one token without
    streaming and ``kv_transfer_params`` ``do_remote_decode``; then the decode, sent the client's request
    with exactly the ``kv_transfer_params`` the prefill answered; both with one ``X-Request-Id`` naming the
    pair, and the key (the launcher's OPENAI_API_KEY). The client gets the decode's tokens."""
    pd = {"kv_connector": "nixl", "prefill_policy": "cache_aware", "decode_policy": "round_robin"}
    with _pd_fleet("vllm-router", pd, tmp_path) as fleet:
        _check_workers(fleet)
        for n in range(2):
            marker = f"nixl-{stream}-{n}-{uuid.uuid4().hex}"
            text = _client_text(_chat(fleet.url, marker, stream), stream)
            prefill, decode = _one_each(fleet, marker)
            assert text == f"decode@{decode['port']} says hi"
            asked = prefill["body"]
            assert (asked["max_tokens"], asked["stream"]) == (1, False)
            assert asked["kv_transfer_params"]["do_remote_decode"] is True
            assert asked["kv_transfer_params"]["do_remote_prefill"] is False
            answered = prefill["answered"]["kv_transfer_params"]
            assert decode["body"]["kv_transfer_params"] == answered
            assert (decode["body"]["max_tokens"], decode["body"]["stream"]) == (8, stream)
            request_id = prefill["headers"]["x-request-id"]
            assert decode["headers"]["x-request-id"] == request_id
            assert request_id.startswith(
                f"___prefill_addr_127.0.0.1:{fleet.prefill_port}___decode_addr_127.0.0.1:{decode['port']}_"
            )
            for entry in (prefill, decode):
                assert entry["headers"]["authorization"] == f"Bearer {KEY}"
            # cache_aware on the prefill role: the router has the prefill tokenize the request first
            # (vLLM's /v1/chat/completions/render, else /tokenize), never the decode
            tokenize = fleet.posts_for(marker, ("/v1/chat/completions/render", "/tokenize"))
            assert [e["path"] for e in tokenize["prefill"]][-1:] == ["/tokenize"] and not tokenize["decode"]
        _refuses_a_client_without_the_key(fleet)


@pytest.mark.slow
def test_vllm_router_mooncake_asks_the_bootstrap_server_for_the_engine_id(tmp_path: Path) -> None:
    """vllm-router 0.1.17 with ``--kv-connector mooncake``: before it is ready it asks the prefill's
    bootstrap server (``GET /query`` on the configured bootstrap port) for its engine id; per request it
    makes a ``transfer_id``, sends it to the prefill (``do_remote_decode``), and sends the decode that id, the
    bootstrap address and the engine id from the bootstrap server (the prefill answers no parameters)."""
    pd = {"kv_connector": "mooncake", "prefill_policy": "cache_aware", "decode_policy": "round_robin"}
    with _pd_fleet("vllm-router", pd, tmp_path) as fleet:
        queries = [e for e in fleet.seen() if e["role"] == "bootstrap"]
        assert queries and {(e["method"], e["path"]) for e in queries} == {("GET", "/query")}
        transfers = []
        for stream in (False, True):
            marker = f"mooncake-{stream}-{uuid.uuid4().hex}"
            text = _client_text(_chat(fleet.url, marker, stream), stream)
            prefill, decode = _one_each(fleet, marker)
            assert text == f"decode@{decode['port']} says hi"
            assert prefill["answered"] == {}
            transfer = prefill["body"]["kv_transfer_params"]["transfer_id"]
            assert prefill["body"]["kv_transfer_params"] == {
                "do_remote_decode": True,
                "do_remote_prefill": False,
                "transfer_id": transfer,
            }
            assert decode["body"]["kv_transfer_params"] == {
                "do_remote_decode": False,
                "do_remote_prefill": True,
                "transfer_id": transfer,
                "remote_bootstrap_addr": f"http://127.0.0.1:{fleet.bootstrap_port}",
                "remote_engine_id": bootstrap_engine_id(fleet.prefill_port),
            }
            assert decode["body"]["stream"] is stream
            transfers.append(transfer)
        assert transfers[0] != transfers[1]


def _refuses_a_client_without_the_key(fleet: Fleet) -> None:
    """401 for a wrong key, and nothing reaches either role."""
    marker = f"nokey-{uuid.uuid4().hex}"
    assert _chat(fleet.url, marker, False, key="wrong-key").status_code == 401
    assert fleet.posts_for(marker) == {"prefill": [], "decode": []}
