"""`kimi-deploy check`: the validators on recorded Kimi payloads, and the whole suite against real servers.

The Kimi shapes (ids ``functions.<name>:<n>``, vLLM's ``reasoning`` vs SGLang's ``reasoning_content``) come
from payloads reconstructed from the engines' sources (tests/fixtures/kimi/, each names its source).
The faults a correctly configured engine never shows (a missing reasoning or tool parser, random ids, a
model that never loads) come from deploy/fakes/faultserver.py,
a labelled fault-injecting server that runs as a
real process on loopback; the CLI is driven as a user runs it.
"""

from __future__ import annotations

import base64
import copy
import doctest
import json
import math
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.check_plans import demo_plan

from deploy.checking import calls as check_requests
from deploy.checking import result as check_result
from deploy.checking import shapes as check_shapes
from deploy.checking import suite as check
from deploy.checking import target as check_target
from deploy.checking import tokens as check_tokens
from deploy.checking import toolset as check_toolset
from deploy.fakes import faultserver
from deploy.planning.contract import plan_from_dict

shapes, requests_ = check_shapes, check_requests

FIXTURES = Path(__file__).parent / "fixtures"
KIMI = FIXTURES / "kimi"
SAMPLES = FIXTURES / "tool_calls" / "demo_fewshot.jsonl"
KD = [sys.executable, "-m", "deploy"]
ENGINES = ("vllm", "sglang")
REASONING_FIELD = {"vllm": "reasoning", "sglang": "reasoning_content"}


def recorded(engine: str, kind: str) -> dict:
    return faultserver.load_fixture(KIMI, engine, kind)


@pytest.mark.parametrize(
    "module", [check, check_requests, check_result, check_shapes, check_target, check_tokens, check_toolset]
)
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


def test_every_fixture_names_its_source() -> None:
    files = sorted(KIMI.glob("*.json"))
    assert {f.stem.split("_", 1)[0] for f in files} == set(ENGINES)
    for f in files:
        data = json.loads(f.read_text())
        assert data["_source"] and all(
            s.split()[0] in ("vllm-project/vllm", "sgl-project/sglang") for s in data["_source"]
        ), f.name


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("engine", ENGINES)
def test_recorded_kimi_shapes_pass(engine: str) -> None:
    assert shapes.validate_instant(recorded(engine, "instant"))[0]
    ok, why = shapes.validate_thinking(recorded(engine, "thinking"))
    assert ok and REASONING_FIELD[engine] in why
    ok, why = shapes.validate_tool_call(
        recorded(engine, "tool_call"), [check.WEATHER_TOOL], check.ID_RULE_KIMI
    )
    assert ok, why


@pytest.mark.parametrize("engine", ENGINES)
def test_streams_fold_into_the_same_shapes(engine: str) -> None:
    for kind, validate in (
        ("instant", shapes.validate_instant),
        ("thinking", shapes.validate_thinking),
        ("tool_call", lambda p: shapes.validate_tool_call(p, [check.WEATHER_TOOL], check.ID_RULE_KIMI)),
    ):
        folded = shapes.assemble_stream(recorded(engine, f"stream_{kind}")["chunks"])
        ok, why = validate(folded)
        assert ok, (kind, why)
    folded = shapes.assemble_stream(recorded(engine, "stream_thinking")["chunks"])
    # the field keeps the engine's name through folding
    assert REASONING_FIELD[engine] in folded["choices"][0]["message"]
    call = shapes.assemble_stream(recorded(engine, "stream_tool_call")["chunks"])["choices"][0]["message"]
    assert (
        call["tool_calls"][0]["id"]
        == recorded(engine, "tool_call")["choices"][0]["message"]["tool_calls"][0]["id"]
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_reasoning_leaked_into_content_fails(engine: str) -> None:
    payload = recorded(engine, "thinking")
    msg = payload["choices"][0]["message"]
    field = REASONING_FIELD[engine]
    msg["content"] = f"{msg[field]}</think>{msg['content']}"
    msg[field] = None
    ok, why = shapes.validate_thinking(payload)
    assert not ok and "</think>" in why
    ok, why = shapes.validate_instant(payload)
    assert not ok and "</think>" in why


@pytest.mark.parametrize("engine", ENGINES)
def test_instant_with_reasoning_fails(engine: str) -> None:
    payload = recorded(engine, "thinking")  # a thinking answer where instant mode was asked for
    ok, why = shapes.validate_instant(payload)
    assert not ok and "reasoning returned" in why


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c, m, ch: c.update(id="call_9f8e7d6c5b4a39281706f5e4"), "functions.<name>:<n>"),
        (lambda c, m, ch: c.update(id="functions.get_time:0"), "names 'get_time'"),
        (lambda c, m, ch: c["function"].update(arguments='{"city": "Berlin"'), "not valid JSON"),
        (lambda c, m, ch: c["function"].update(arguments='{"town": "Berlin"}'), "do not match the schema"),
        (lambda c, m, ch: c["function"].update(arguments='{"city": "Berlin", "unit": "kelvin"}'), "schema"),
        (lambda c, m, ch: c["function"].update(name="get_time"), "unknown tool"),
        (lambda c, m, ch: ch.update(finish_reason="stop"), "finish_reason 'stop'"),
        (
            lambda c, m, ch: m.update(content="<|tool_calls_section_begin|><|tool_call_begin|>"),
            "raw tool markers",
        ),
        (lambda c, m, ch: m.update(tool_calls=[]), "no tool_calls"),
    ],
)
def test_tool_call_faults_fail(engine: str, mutate, expected: str) -> None:
    payload = recorded(engine, "tool_call")
    choice = payload["choices"][0]
    mutate(
        choice["message"]["tool_calls"][0] if choice["message"]["tool_calls"] else {},
        choice["message"],
        choice,
    )
    ok, why = shapes.validate_tool_call(payload, [check.WEATHER_TOOL], check.ID_RULE_KIMI)
    assert not ok and expected in why, why


def test_generic_id_rule_accepts_any_id_but_not_none() -> None:
    payload = recorded("vllm", "tool_call")
    call = payload["choices"][0]["message"]["tool_calls"][0]
    call["id"] = "call_9f8e7d6c5b4a39281706f5e4"
    assert shapes.validate_tool_call(payload, [check.WEATHER_TOOL], check.ID_RULE_GENERIC)[0]
    call["id"] = ""
    assert not shapes.validate_tool_call(payload, [check.WEATHER_TOOL], check.ID_RULE_GENERIC)[0]


def test_kimi_ids_count_across_the_conversation() -> None:
    # SGLang numbers ids by the tool calls already in the history (serving_chat._process_tool_call_id)
    assert shapes.validate_tool_id("functions.get_weather:2", "get_weather", check.ID_RULE_KIMI) is None
    assert shapes.validate_tool_id("functions.get_weather", "get_weather", check.ID_RULE_KIMI)
    assert shapes.validate_tool_id("get_weather:0", "get_weather", check.ID_RULE_KIMI)


def test_mode_dialects() -> None:
    assert requests_.mode_body("moonshot", False) == {"thinking": {"type": "disabled"}}
    for flavor in ("vllm", "sglang", "llama.cpp", "ktransformers"):
        assert requests_.mode_body(flavor, False) == {"chat_template_kwargs": {"thinking": False}}


def test_generated_png_is_a_valid_image() -> None:
    width, height = 16, 16
    png = base64.b64decode(requests_.solid_png_b64(width, height, (1, 2, 3)))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, tag = struct.unpack(">I4s", png[8:16])
    ihdr = png[16 : 16 + length]
    assert tag == b"IHDR" and struct.unpack(">II", ihdr[:8]) == (width, height)
    assert struct.unpack(">I", png[16 + length : 20 + length])[0] == zlib.crc32(tag + ihdr)
    idat_len = struct.unpack(">I", png[20 + length : 24 + length])[0]
    raw = zlib.decompress(png[28 + length : 28 + length + idat_len])
    assert raw == (b"\x00" + bytes((1, 2, 3)) * width) * height  # filter byte + RGB per row


def test_few_shot_requests_come_from_the_catalog() -> None:
    demo = check.target_from_url("http://127.0.0.1:9", "demo", flavor="llama.cpp")
    kimi = check.target_from_url("http://127.0.0.1:9", "kimi-k2.5", flavor="vllm")
    assert demo.few_shot and demo.stop and not kimi.few_shot
    tool_req = requests_.chat_request(demo, "tool")
    calls = [m for m in tool_req["messages"] if m.get("tool_calls")]
    assert len(calls) == 2 and tool_req["messages"][-1]["role"] == "user"
    assert len(requests_.chat_request(kimi, "tool")["messages"]) == 1
    assert demo.id_rule == check.ID_RULE_GENERIC and kimi.id_rule == check.ID_RULE_KIMI


def test_target_from_plan_reads_engine_args() -> None:
    t = check.target_from_plan(plan_from_dict(demo_plan(8123, 4096, metrics=True, host="0.0.0.0")))
    assert (t.base_url, t.flavor, t.model, t.max_model_len, t.metrics) == (
        "http://127.0.0.1:8123",
        "llama.cpp",
        "demo",
        4096,
        True,
    )
    t = check.target_from_plan(plan_from_dict(demo_plan(8123, 4096)))
    assert not t.metrics  # llama-server serves /metrics only with --metrics
    assert check.target_from_plan(plan_from_dict(demo_plan(8123, 4096, engine="vllm"))).metrics


# ------------------------------------------------------------------------------------- real servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fault_server() -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(mode: str, engine: str = "vllm", model: str = "kimi-k2.5", hosted: bool = False) -> str:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.fakes.faultserver",
                "--mode",
                mode,
                "--engine",
                engine,
                "--model",
                model,
                "--port",
                "0",
                *(["--hosted"] if hosted else []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert faultserver.BANNER in line, line
        return line.rsplit(" ", 1)[-1].strip()

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def run_check(*args: str, timeout: float = 120) -> tuple[int, dict, str]:
    proc = subprocess.run([*KD, "check", *args, "--json"], capture_output=True, text=True, timeout=timeout)
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, report, proc.stderr


def statuses(report: dict) -> dict[str, str]:
    return {r["name"]: r["status"] for r in report["results"]}


@pytest.mark.parametrize("engine", ENGINES)
def test_ok_kimi_passes_with_both_shapes(fault_server, engine: str) -> None:
    url = fault_server("ok-kimi", engine)
    rc, report, err = run_check("--url", url, "--model", "kimi-k2.5", "--flavor", engine, "--metrics")
    assert rc == 0, (err, report)
    assert set(statuses(report).values()) == {"pass"}
    tool = next(r for r in report["results"] if r["name"] == "tool_call")
    assert tool["details"]["tool_calls"][0]["id"] == "functions.get_weather:0"


@pytest.mark.parametrize(
    "mode, failing, reason",
    [
        ("leak-think", {"instant", "thinking", "streaming", "vision"}, "</think>"),
        ("leak-tool-markers", {"tool_call"}, "raw tool markers"),
        ("bad-tool-id", {"tool_call"}, "functions.<name>:<n>"),
        (
            "stay-503",
            {
                "liveness",
                "models",
                "instant",
                "thinking",
                "tool_call",
                "streaming",
                "vision",
                "metrics",
                "sampling",
            },
            "503",
        ),
    ],
)
def test_each_fault_is_diagnosed(fault_server, mode: str, failing: set[str], reason: str) -> None:
    url = fault_server(mode, "sglang")
    rc, report, err = run_check("--url", url, "--model", "kimi-k2.5", "--flavor", "sglang", "--metrics")
    assert rc == 7
    got = {name for name, status in statuses(report).items() if status == "fail"}
    assert got == failing
    first = next(r for r in report["results"] if r["status"] == "fail")
    assert reason in first["reason"]
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err


def test_stay_503_reads_as_loading_for_llama_cpp(fault_server) -> None:
    url = fault_server("stay-503")
    rc, report, _ = run_check("--url", url, "--model", "kimi-k2.5", "--flavor", "llama.cpp")
    assert rc == 7
    assert "still loading" in report["results"][0]["reason"]
    assert all(r["reason"].startswith("not run") for r in report["results"][1:])


def test_id_rule_comes_from_the_model(fault_server) -> None:
    # the same random ids: wrong for a Kimi model (kimi_k2 parser), fine for one without it
    url = fault_server("bad-tool-id", model="demo")
    rc, report, _ = run_check("--url", url, "--model", "demo", "--flavor", "vllm", "--no-few-shot")
    assert statuses(report)["tool_call"] == "pass"
    assert report["target"]["id_rule"] == "generic" and "'hermes'" in report["target"]["id_rule_source"]


@pytest.mark.parametrize("flavor", ["moonshot", "vllm"])
def test_hosted_endpoint_without_health_is_probed_via_models(fault_server, flavor: str) -> None:
    url = fault_server("ok-kimi", hosted=True)
    # a hosted provider is asked with a key (this server accepts any); an engine flavor needs none
    rc, report, err = run_check(
        "--url", url + "/v1", "--model", "kimi-k2.5", "--flavor", flavor, "--api-key-env", "HOME"
    )
    assert rc == 0, (err, report)
    assert "GET /v1/models 200" in report["results"][0]["reason"]


def test_tool_call_set(fault_server, tmp_path: Path) -> None:
    url = fault_server("ok-kimi")
    out = tmp_path / "report.json"
    lines = [line for line in SAMPLES.read_text().splitlines() if line.strip()]
    rc, report, _ = run_check(
        "--url",
        url,
        "--model",
        "kimi-k2.5",
        "--tool-calls",
        str(SAMPLES),
        "--concurrency",
        "2",
        "-o",
        str(out),
    )
    assert rc == 0, report
    summary = json.loads(out.read_text())["tool_call_set"]
    assert summary["requests"] == len(lines)
    assert summary["finish_reasons"] == {"tool_calls": len(lines)} and summary["schema_accuracy"] == 1.0


def test_tool_call_set_without_tool_calls_fails(fault_server) -> None:
    url = fault_server("leak-tool-markers")
    rc, report, _ = run_check("--url", url, "--model", "kimi-k2.5", "--tool-calls", str(SAMPLES))
    assert rc == 7
    lines = len([line for line in SAMPLES.read_text().splitlines() if line.strip()])
    assert report["tool_call_set"]["finish_reasons"] == {"stop": lines}
    assert statuses(report)["tool_call_set"] == "fail"


def test_api_key_is_sent_but_never_shown(fault_server, tmp_path: Path) -> None:
    url = fault_server("ok-kimi")
    secret = "sk-test-" + "9" * 24
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [*KD, "check", "--url", url, "--model", "kimi-k2.5", "--api-key-env", "KD_TEST_KEY", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "KD_TEST_KEY": secret},
    )
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr + out.read_text()
    assert json.loads(out.read_text())["target"]["api_key_set"] is True


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "args, message",
    [
        (["--url", "http://127.0.0.1:9"], "--url needs --model"),
        (["--url", "ftp://x", "--model", "m"], "expected http"),
        (["--plan", "/nonexistent/plan.json"], "plan not found"),
        (["--plan", "p.json", "--url", "http://x", "--model", "m"], "either --plan or --url"),
        (["--plan", "/nonexistent/plan.json", "--flavor", "vllm"], "--flavor goes with --url"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run([*KD, "check", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().startswith("error: ")
        and message in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_bad_tool_call_file_is_one_line(fault_server, tmp_path: Path) -> None:
    url = fault_server("ok-kimi")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{not json\n')
    rc, _, err = run_check("--url", url, "--model", "kimi-k2.5", "--tool-calls", str(bad))
    assert rc == 2 and f"{bad}:2: not valid JSON" in err
    rc, _, err = run_check(
        "--url", url, "--model", "kimi-k2.5", "--tool-calls", str(SAMPLES), "--threshold", "0"
    )
    assert rc == 2 and "--threshold" in err


def test_fault_injection_is_not_a_recorded_shape() -> None:
    # the injected faults are applied on copies; the recorded payloads stay the engines' shapes
    original = recorded("vllm", "tool_call")
    broken = faultserver.inject("bad-tool-id", "vllm", "tool_call", copy.deepcopy(original))
    assert original == recorded("vllm", "tool_call") and broken != original


# ------------------------------------------------------------------------------- llama.cpp RPC workers


@pytest.fixture
def rpc_server() -> Iterator[int]:
    """A real rpc-server (llama.cpp's RPC worker, from the cached build) on a free loopback port; without
    that build, a stand-in TCP listener (labelled: it accepts and closes, as rpc-server does for a bare
    connection)."""
    from deploy import constants, pins
    from deploy.serving import readiness

    port = free_port()
    binary = (
        constants.CACHE_DIR
        / "engines"
        / "llama.cpp"
        / f"{pins.LLAMA_CPP_PYTHON_VERSION}-cpu-rpc"
        / "bin"
        / "rpc-server"
    )
    if binary.is_file():
        argv = [str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", "1"]
    else:
        stand_in = (
            f"import socket; s = socket.create_server(('127.0.0.1', {port}))\n"
            "while True: s.accept()[0].close()"
        )
        argv = [sys.executable, "-c", stand_in]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if readiness.probe_tcp("127.0.0.1", port, 0.5).state == readiness.READY:
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _server_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_rpc_workers_each_must_accept(fault_server, rpc_server: int, tmp_path: Path) -> None:
    url = fault_server("ok-kimi", "sglang", model="demo")
    dead = free_port()  # bound and released: nothing listens there
    plan = tmp_path / "plan.json"
    servers = [f"127.0.0.1:{rpc_server}", f"127.0.0.1:{dead}"]
    plan.write_text(json.dumps(demo_plan(_server_port(url), 512, rpc_servers=servers)))
    rc, report, err = run_check("--plan", str(plan))
    assert rc == 7 and "rpc_workers" in err
    got = statuses(report)
    assert got["liveness"] == "pass" and got["rpc_workers"] == "fail"
    rpc = next(r for r in report["results"] if r["name"] == "rpc_workers")
    assert rpc["reason"] == f"rpc-server 127.0.0.1:{dead} unreachable (connection refused)"
    # a llama-server that lost a worker aborts on its next request: nothing after the gate is sent
    later = [r for r in report["results"] if r["name"] not in check.GATES]
    assert later and all(r["reason"] == "not run: an RPC worker is unreachable" for r in later)
    plan.write_text(json.dumps(demo_plan(_server_port(url), 512, rpc_servers=servers[:1])))
    rc, report, _ = run_check("--plan", str(plan))
    assert statuses(report)["rpc_workers"] == "pass"
    # a plan without RPC workers has no such row
    plan.write_text(json.dumps(demo_plan(_server_port(url), 512)))
    _, report, _ = run_check("--plan", str(plan))
    assert "rpc_workers" not in statuses(report)


def test_rendered_manifest_decides_address_and_key(fault_server, tmp_path: Path) -> None:
    """`render --port` can differ from the plan: `check --rendered` follows the manifest, as `up` does."""
    url = fault_server("ok-kimi", "sglang", model="demo")
    plan_port, dead = free_port(), free_port()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(demo_plan(plan_port, 512)))
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    secret = "sk-rendered-" + "7" * 20
    (rendered / "kimi-deploy.env").write_text(f"KD_RENDERED_KEY={secret}\n")
    (rendered / "kimi-deploy.env").chmod(0o600)
    manifest = {
        "candidate": "llama.cpp-x",
        "engine": "llama.cpp",
        "served_model_name": "demo",
        "bind": "0.0.0.0",
        "port": _server_port(url),
        "api_key_env": "KD_RENDERED_KEY",
        "env_file": "kimi-deploy.env",
        "nodes": [
            {"name": "head", "serves_http": True, "argv": ["llama-server", "--rpc", f"127.0.0.1:{dead}"]},
            {"name": "w1", "serves_http": False, "argv": ["rpc-server", "-p", str(dead)]},
        ],
    }
    (rendered / "manifest.json").write_text(json.dumps(manifest))
    rc, report, err = run_check("--plan", str(plan), "--rendered", str(rendered))
    assert report["target"]["base_url"] == f"http://127.0.0.1:{_server_port(url)}"
    assert report["target"]["api_key_set"] and report["target"]["api_key_env"] == "KD_RENDERED_KEY"
    assert statuses(report)["liveness"] == "pass" and statuses(report)["rpc_workers"] == "fail"
    assert f"127.0.0.1:{dead} unreachable" in next(
        r["reason"] for r in report["results"] if r["status"] == "fail"
    )
    assert rc == 7 and secret not in json.dumps(report) + err
    rc, _, err = run_check("--plan", str(plan), "--rendered", str(tmp_path / "nothing"))
    assert rc == 2 and "manifest.json: not found" in err


# ------------------------------------------------------------------------------------ special tokens


def test_special_tokens_come_from_the_tokenizer_config(tmp_path: Path) -> None:
    decoder = {
        "163586": {"content": "<|im_end|>", "special": True},
        "163587": {"content": "<|im_user|>", "special": True},
        "200": {"content": "plain_added", "special": False},
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    found = check_tokens.for_plan({"name": "kimi-k2.5"}, str(tmp_path))
    special = [e["content"] for e in decoder.values() if e["special"]]
    assert list(found.tokens) == special + list(check_tokens.THINK_TAGS)
    assert str(tmp_path / "tokenizer_config.json") in found.source
    # a weights folder without one (a GGUF): the catalog entry the plan names
    assert "catalog entry 'demo'" in check_tokens.for_plan({"name": "demo"}, str(tmp_path / "none")).source


def test_bad_tokenizer_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"1": {"x": 1}}}))
    with pytest.raises(check_target.InputError, match="tokenizer_config.json"):
        check_tokens.for_plan({"name": "demo"}, str(tmp_path))


@pytest.mark.parametrize(
    "model, entry", [("demo", "demo"), ("kimi-k2.5", "kimi-k2.5"), ("other", "kimi-k2.5")]
)
def test_special_token_set_follows_the_served_model(model: str, entry: str) -> None:
    from deploy.catalog import load_model

    target = check.target_from_url("http://127.0.0.1:9", model, flavor="llama.cpp")
    fact = load_model(entry).special_tokens
    assert set(fact["tokens"]) <= set(target.special_tokens)
    assert f"catalog entry {entry!r}" in target.special_tokens_source
    assert fact["source"] in target.special_tokens_source
    assert ("default" in target.special_tokens_source) == (model == "other")


@pytest.mark.parametrize(
    "engine, model", [("vllm", "kimi-k2.5"), ("sglang", "kimi-k2.5"), ("sglang", "demo")]
)
def test_leaked_special_token_fails_streamed_and_not(fault_server, engine: str, model: str) -> None:
    # FAULT INJECTION: no engine serving Kimi-K2.5 runs here, so the deployment that prints special tokens is
    # the fault server appending the end-of-turn token to every answer (deploy/fakes/faultserver.py)
    url = fault_server("leak-special", engine, model=model)
    rc, report, err = run_check("--url", url, "--model", model, "--flavor", engine, "--samples", "2")
    assert rc == 7, (err, report)
    failed = {r["name"]: r for r in report["results"] if r["status"] == "fail"}
    assert {"instant", "thinking", "tool_call", "streaming"} <= set(failed), failed
    for name in ("instant", "streaming"):
        assert faultserver.LEAKED_TOKEN in failed[name]["reason"], failed[name]
        assert report["target"]["special_tokens_source"] in failed[name]["reason"]
    assert faultserver.LEAKED_TOKEN in report["target"]["special_tokens"]


def test_report_names_the_special_tokens(fault_server) -> None:
    url = fault_server("ok-kimi", "sglang")
    rc, report, err = run_check("--url", url, "--model", "kimi-k2.5", "--flavor", "sglang", "--metrics")
    assert rc == 0, (err, report)
    proc = subprocess.run(
        [*KD, "check", "--url", url, "--model", "kimi-k2.5", "--flavor", "sglang", "--samples", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("special tokens looked for"))
    assert report["target"]["special_tokens_source"] in line and "<|im_end|>" in line


# ------------------------------------------------------------------------------------------ samples


def _one(status_of: dict[int, tuple[str, dict]]):
    def one(i: int) -> check.CheckResult:
        status, details = status_of.get(i, (check.PASS, {}))
        return check.CheckResult("instant", status, f"answer {i}", 0.0, details)

    return one


def test_samples_show_a_rate_and_the_bad_answer() -> None:
    target = check.target_from_url("http://127.0.0.1:9", "kimi-k2.5", flavor="vllm")
    target.samples = 5
    need = math.ceil(check.THRESHOLDS["instant"] * 5)
    bad = 5 - need  # as many failures as the threshold allows
    r = check.sampled("instant", target, _one({i: (check.FAIL, {}) for i in range(bad)}))
    assert r.status == check.PASS and r.reason.startswith(f"{need}/5 passed, needs {need}; sample 1:")
    assert r.details["samples"] == {"passed": need, "total": 5, "needs": need, "threshold": 0.8}
    r = check.sampled("instant", target, _one({i: (check.FAIL, {}) for i in range(bad + 1)}))
    assert r.status == check.FAIL
    # one answer with a special token fails the check whatever the rate
    leak = {"special_token": "special token <|im_end|> in content"}
    r = check.sampled("instant", target, _one({4: (check.FAIL, leak)} if bad else {}))
    assert r.status == (check.FAIL if bad else check.PASS)


@pytest.mark.parametrize("value", [0, -1, check.MAX_SAMPLES + 1])
def test_bad_samples_is_one_line(value: int) -> None:
    proc = subprocess.run(
        [*KD, "check", "--url", "http://127.0.0.1:9", "--model", "demo", "--samples", str(value)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "--samples" in proc.stderr and "Traceback" not in proc.stderr


def test_samples_ask_different_questions() -> None:
    target = check.target_from_url("http://127.0.0.1:9", "demo", flavor="llama.cpp")
    asked = {requests_.chat_request(target, "instant", i)["messages"][-1]["content"] for i in range(5)}
    cities = {requests_.chat_request(target, "tool", i)["messages"][-1]["content"] for i in range(5)}
    assert len(asked) == len(cities) == 5


def test_through_a_router_the_engine_only_checks_run_on_each_replica(tmp_path: Path) -> None:
    """A fleet's router proxies the API but serves no /metrics or /props: the front door's suite leaves
    metrics and the served-sampling check to each replica's own check."""
    from deploy.checking import fleet, sampling
    from deploy.checking.target import target_from_plan
    from deploy.cli import main
    from deploy.planning.contract import load_plan

    out = tmp_path / "plan.json"
    with pytest.raises(SystemExit) as done:
        main(["plan", "--hardware", "ci-24g", "--model", "demo", "--replicas", "2", "-o", str(out)])
    assert done.value.code in (0, None)
    plan = load_plan(out)
    front = target_from_plan(plan)
    assert sampling.applies(front)  # llama-server reports its default sampling in /props
    replicas = fleet.replica_targets(plan, front)
    assert [rid for rid, _ in replicas] == [r.id for r in plan.fleet.replicas]
    assert front.router_front and not front.metrics and not sampling.applies(front)
    assert all(sampling.applies(t) and not t.router_front for _, t in replicas)
    assert {"metrics", "sampling"} <= set(fleet.REPLICA_CHECKS)
