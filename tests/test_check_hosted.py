"""`kimi-deploy check` against hosted Kimi APIs (NIM, Moonshot, Oxen.ai), and trigger F1 against a reference.

The hosted APIs cannot be reached here, so each test starts deploy/fakes/providerserver.py: a real
HTTP server on loopback that keeps to one provider's paths, bearer-key authentication, model id and
instant-mode dialect (a PROVIDER-MIMIC TEST SERVER; its fault-injection options, labelled as such, are
the echoed key, 429s and schema-breaking arguments). The CLI runs as a user runs it, the key only ever in
the environment.

tests/fixtures/tool_calls/hosted_triggers.jsonl is our own sample set, written for these tests in the
K2-Vendor-Verifier's request format (not the verifier's data). Which samples trigger a tool call is
designed: the mimic calls a tool when the last user message has one of its ``--call-when`` words, so
the expected finish reasons, and from them the F1, are computed here from the samples' text.
"""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.checking import calls as check_calls
from deploy.checking import meter as check_meter
from deploy.checking import providers, session, trigger
from deploy.checking import suite as check_suite
from deploy.errors import InputError
from deploy.fakes import providerserver

FIXTURES = Path(__file__).parent / "fixtures" / "tool_calls"
SAMPLES = FIXTURES / "hosted_triggers.jsonl"
KD = [sys.executable, "-m", "deploy"]
KEY_ENV = "KD_HOSTED_TEST_KEY"
REF_KEY_ENV = "KD_HOSTED_REF_KEY"
KEY = "sk-canary-" + "5f3a9c" * 5
REF_KEY = "sk-refcanary-" + "71d2" * 6
#: how each provider spells Kimi-K2.5 (deploy/checking/providers.py cites where)
MODEL_IDS = {"nim": "moonshotai/kimi-k2.5", "moonshot": "kimi-k2.5", "oxen": "moonshotai-kimi-k2-5"}
#: chat requests the suite sends for Kimi-K2.5: each probe (instant, thinking, tool_call, streaming, vision)
#: asked `check --samples`' default number of questions
SUITE_CHATS = session.SUITE_CHAT_REQUESTS * check_suite.DEFAULT_SAMPLES
TOKENS_PER_ANSWER = providerserver.PROMPT_TOKENS + providerserver.COMPLETION_TOKENS
REFERENCE_WORDS = ("weather", "time")
CANDIDATE_WORDS = ("weather", "please")


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, KEY_ENV: KEY, REF_KEY_ENV: REF_KEY, **extra}


@pytest.fixture
def provider() -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(name: str, *opts: str, model: str | None = None, key: str = KEY) -> str:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deploy.fakes.providerserver",
                "--provider",
                name,
                "--model",
                model or MODEL_IDS[name],
                "--key-env",
                "MIMIC_KEY",
                "--port",
                "0",
                *opts,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "MIMIC_KEY": key},
        )
        procs.append(proc)
        line = proc.stdout.readline()
        assert providerserver.BANNER in line, line
        return line.rsplit(" ", 1)[-1].strip()

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def kd_check(*args: str, tmp_path: Path, environ: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """Run `check ... -o report.json`; return (exit code, the report file, stdout+stderr)."""
    out = tmp_path / "report.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [*KD, "check", *args, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=environ or env(),
    )
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, report, proc.stdout + proc.stderr


def statuses(report: dict) -> dict[str, str]:
    return {r["name"]: r["status"] for r in report["results"]}


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def user_texts() -> list[str]:
    lines = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    return [next(m["content"] for m in reversed(b["messages"]) if m["role"] == "user") for b in lines]


def calls(text: str, words: tuple[str, ...]) -> bool:
    return any(w in text.lower() for w in words)


# ------------------------------------------------------------------------------------------ units


def test_urls_are_taken_as_providers_publish_them() -> None:
    assert providers.split_url("https://hub.oxen.ai/api/ai") == (
        "https://hub.oxen.ai",
        "https://hub.oxen.ai/api/ai",
    )
    assert (
        providers.split_url("https://integrate.api.nvidia.com/v1/")[1]
        == "https://integrate.api.nvidia.com/v1"
    )
    assert providers.split_url("http://10.0.0.5:8000") == ("http://10.0.0.5:8000", "http://10.0.0.5:8000/v1")
    assert providers.split_url("http://gw:80/kimi/v1") == ("http://gw:80/kimi", "http://gw:80/kimi/v1")
    for bad in ("ftp://x", "https://h/v1?key=1"):
        with pytest.raises(InputError):
            providers.split_url(bad)
    assert [
        providers.guess_flavor(u) for u in ("https://hub.oxen.ai/api/ai", "https://api.moonshot.cn/v1")
    ] == [
        "oxen",
        "moonshot",
    ]


def test_samples_are_rewritten_into_the_providers_dialect() -> None:
    instant = {"messages": [], "chat_template_kwargs": {"thinking": False, "other": 1}}
    assert providers.to_dialect(instant, "moonshot") == {
        "messages": [],
        "chat_template_kwargs": {"other": 1},
        "thinking": {"type": "disabled"},
    }
    back = providers.to_dialect({"messages": [], "thinking": {"type": "disabled"}}, "nim")
    assert back == {"messages": [], "chat_template_kwargs": {"thinking": False}}


def test_f1_follows_the_verifiers_definition() -> None:
    ok = lambda finish: {"status": "success", "finish_reason": finish}  # noqa: E731
    ref = {1: ok("tool_calls"), 2: ok("tool_calls"), 3: ok("stop"), 4: ok("length"), 5: {"status": "failed"}}
    cand = {
        1: ok("tool_calls"),
        2: {"status": "failed"},
        3: ok("tool_calls"),
        4: ok("stop"),
        5: ok("tool_calls"),
    }
    s = trigger.trigger_stats(cand, ref)
    # 5 has no reference answer: left out; 2 failed on the candidate: counts as "not tool_calls" (FN)
    assert (s["tp"], s["fp"], s["fn"], s["tn"], s["left_out_no_reference"]) == (1, 1, 1, 1, 1)
    assert s["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert trigger.trigger_stats({1: ok("stop")}, {1: ok("stop")})["f1"] is None


def test_retry_after_is_honoured_within_its_bound() -> None:
    """A 429's Retry-After is slept (here into a list, not the clock) up to max_wait_s; longer fails."""
    import openai

    try:  # the HTTP library the openai client is built on (httpx2 in openai 3.x, httpx before)
        import httpx2 as httpx
    except ImportError:
        import httpx

    def rate_limited(after: str) -> openai.RateLimitError:
        request = httpx.Request("POST", "http://x/v1/chat/completions")
        response = httpx.Response(429, headers={"Retry-After": after}, request=request)
        return openai.RateLimitError("rate limited", response=response, body=None)

    slept: list[float] = []
    m = check_meter.Meter("t", check_meter.Budget(5), concurrency=1, max_wait_s=3, sleep=slept.append)
    answers = iter([rate_limited("2"), rate_limited("1"), "ok"])

    def call() -> str:
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    assert check_meter.send(m, call) == "ok"
    assert slept == [2.0, 1.0] and m.requests == 3 and m.rate_limited == 2 and m.budget.used == 3
    with pytest.raises(check_meter.RateLimited, match="Retry-After 60"):
        check_meter.send(m, lambda: (_ for _ in ()).throw(rate_limited("60")))
    assert m.budget.used == 4 and check_meter.send(m, lambda: "last") == "last"  # the 5th of 5
    with pytest.raises(check_meter.BudgetExhausted, match="--max-requests"):
        check_meter.send(m, lambda: "never sent")
    assert m.requests == 5


# ------------------------------------------------------------------------------- real servers


@pytest.mark.parametrize("name", ["nim", "moonshot", "oxen"])
def test_each_provider_passes_with_its_url_key_and_dialect(provider, tmp_path: Path, name: str) -> None:
    base = provider(name, "--call-when", ",".join(REFERENCE_WORDS))
    rc, report, out = kd_check(
        "--url",
        base,
        "--model",
        MODEL_IDS[name],
        "--api-key-env",
        KEY_ENV,
        "--flavor",
        name,
        tmp_path=tmp_path,
    )
    assert rc == 0, out
    got = statuses(report)
    assert got["metrics"] == "skip" and {s for n, s in got.items() if n != "metrics"} == {"pass"}
    live = report["results"][0]["reason"]
    assert f"GET {providerserver.BASE_PATH[name]}/models 200" in live and "/health" in live
    thinking = next(r for r in report["results"] if r["name"] == "thinking")
    assert providers.flavor(name).reasoning_field in thinking["reason"]
    usage = report["usage"][0]
    assert usage["requests"] == SUITE_CHATS and usage["total_tokens"] == SUITE_CHATS * TOKENS_PER_ANSWER
    assert KEY not in out + json.dumps(report)


def test_the_host_alone_picks_the_base_and_v1_is_added_to_a_bare_host(provider, tmp_path: Path) -> None:
    base = provider("oxen", "--call-when", "weather")
    bare = base[: -len("/api/ai")]
    rc, report, out = kd_check(
        "--url",
        bare,
        "--model",
        MODEL_IDS["oxen"],
        "--api-key-env",
        KEY_ENV,
        "--flavor",
        "oxen",
        tmp_path=tmp_path,
    )
    # http://host:port gets /v1, where this Oxen-shaped server has nothing: one clear line says so
    assert rc == 7 and report["target"]["api_base"] == f"{bare}/v1"
    assert "GET /v1/models 404" in last_line(out) and last_line(out).startswith("error: ")


def test_wrong_key_fails_in_one_line_and_the_key_appears_nowhere(provider, tmp_path: Path) -> None:
    base = provider("nim", "--call-when", "weather", "--echo-key")  # FAULT INJECTION: 401 quotes the key
    wrong = "sk-wrongcanary-" + "a1b2c3" * 4
    rc, report, out = kd_check(
        "--url",
        base,
        "--model",
        MODEL_IDS["nim"],
        "--api-key-env",
        KEY_ENV,
        "--flavor",
        "nim",
        tmp_path=tmp_path,
        environ=env(**{KEY_ENV: wrong}),
    )
    assert rc == 7
    line = last_line(out)
    assert line.startswith("error: ") and "401" in line and f"${KEY_ENV} was refused" in line
    assert "Traceback" not in out
    written = (tmp_path / "report.json").read_text()
    assert wrong not in out + written and "Incorrect API key provided: ***" in written
    assert all(r["reason"].startswith("not run") for r in report["results"][1:])


def test_a_reference_with_a_wrong_key_costs_nothing_and_says_so(provider, tmp_path: Path) -> None:
    reference = provider("moonshot", "--call-when", ",".join(REFERENCE_WORDS), "--echo-key", key=REF_KEY)
    candidate = provider("nim", "--call-when", ",".join(CANDIDATE_WORDS))
    wrong = "sk-wrongref-" + "9c8d" * 6
    rc, report, out = kd_check(
        "--url", candidate, "--model", MODEL_IDS["nim"], "--api-key-env", KEY_ENV, "--flavor", "nim",
        "--tool-calls", str(SAMPLES), "--reference-url", reference, "--reference-model", "kimi-k2.5",
        "--reference-api-key-env", REF_KEY_ENV, "--reference-flavor", "moonshot",
        tmp_path=tmp_path, environ=env(**{REF_KEY_ENV: wrong}),
    )  # fmt: skip
    assert rc == 7
    line = last_line(out)
    assert (
        "tool_call_f1" in line and "reference is not live" in line and f"${REF_KEY_ENV} was refused" in line
    )
    assert report["usage"][1]["requests"] == 0 and wrong not in out + json.dumps(report)


def test_wrong_model_id_fails_with_a_hint(provider, tmp_path: Path) -> None:
    base = provider("oxen", "--call-when", "weather")
    rc, report, out = kd_check(
        "--url", base, "--model", "kimi-k2.5", "--api-key-env", KEY_ENV, "--flavor", "oxen", tmp_path=tmp_path
    )
    assert rc == 7
    line = last_line(out)
    assert line.startswith("error: ") and "'kimi-k2.5' not served" in line
    assert "'moonshotai-kimi-k2-5'" in line  # the listed id, and the provider's id style
    assert report["usage"][0]["requests"] == 0  # nothing billed after the model was not found


def test_a_server_that_never_calls_tools_fails(provider, tmp_path: Path) -> None:
    base = provider("moonshot")  # no --call-when: it never calls a tool
    rc, report, out = kd_check(
        "--url", base, "--model", "kimi-k2.5", "--api-key-env", KEY_ENV, "--flavor", "moonshot",
        "--tool-calls", str(SAMPLES), tmp_path=tmp_path,
    )  # fmt: skip
    assert rc == 7
    assert statuses(report)["tool_call"] == "fail" and statuses(report)["tool_call_set"] == "fail"
    assert "no tool_calls" in last_line(out)


def test_a_reasoning_field_other_than_documented_is_named(provider, tmp_path: Path) -> None:
    base = provider("nim", "--call-when", "weather", "--reasoning-field", "reasoning")
    rc, report, out = kd_check(
        "--url",
        base,
        "--model",
        MODEL_IDS["nim"],
        "--api-key-env",
        KEY_ENV,
        "--flavor",
        "nim",
        tmp_path=tmp_path,
    )
    assert rc == 0, out  # either field is Kimi's; the row says which one a NIM client would miss
    thinking = next(r for r in report["results"] if r["name"] == "thinking")["reason"]
    assert "reasoning in reasoning " in thinking and "nim documents reasoning_content" in thinking


def test_moonshot_needs_its_own_instant_dialect(provider, tmp_path: Path) -> None:
    base = provider("moonshot", "--call-when", "weather")
    common = ("--url", base, "--model", "kimi-k2.5", "--api-key-env", KEY_ENV)
    rc, report, _ = kd_check(*common, "--flavor", "moonshot", tmp_path=tmp_path)
    assert rc == 0
    # chat_template_kwargs means nothing to Moonshot's API: it stays in thinking mode, where the instant
    # temperature (0.6) is not allowed
    rc, report, _ = kd_check(*common, "--flavor", "openai", tmp_path=tmp_path)
    assert rc == 7 and statuses(report)["instant"] == "fail"
    instant = next(r for r in report["results"] if r["name"] == "instant")["reason"]
    assert "HTTP 400" in instant and "only 1.0 is allowed" in instant


def test_429_retry_after_is_waited_out_and_counted(provider, tmp_path: Path) -> None:
    base = provider(
        "nim",
        "--call-when",
        "weather",
        "--rate-limit-first",
        "2",
        "--rate-limit-models",
        "1",
        "--retry-after",
        "1",
    )
    args = ("--url", base, "--model", MODEL_IDS["nim"], "--api-key-env", KEY_ENV, "--flavor", "nim")
    rc, report, out = kd_check(*args, tmp_path=tmp_path)
    assert rc == 0, out
    usage = report["usage"][0]
    # one 429 on the model list (liveness), two on chat requests; only chat requests spend the budget
    assert usage["rate_limited"] == 3 and usage["waited_s"] >= 3 and usage["requests"] == SUITE_CHATS + 2


def test_a_longer_retry_after_than_allowed_fails_clearly(provider, tmp_path: Path) -> None:
    base = provider("nim", "--call-when", "weather", "--rate-limit-first", "99", "--retry-after", "120")
    args = ("--url", base, "--model", MODEL_IDS["nim"], "--api-key-env", KEY_ENV, "--flavor", "nim")
    rc, report, out = kd_check(*args, "--max-retry-wait", "5", tmp_path=tmp_path)
    assert rc == 7 and "Retry-After 120" in last_line(out)
    assert report["usage"][0]["waited_s"] == 0


def _f1_by_hand() -> tuple[float, dict[str, int]]:
    ref = [calls(t, REFERENCE_WORDS) for t in user_texts()]
    cand = [calls(t, CANDIDATE_WORDS) for t in user_texts()]
    tp = sum(r and c for r, c in zip(ref, cand, strict=True))
    fp = sum(c and not r for r, c in zip(ref, cand, strict=True))
    fn = sum(r and not c for r, c in zip(ref, cand, strict=True))
    tn = len(ref) - tp - fp - fn
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def test_trigger_f1_against_a_live_reference(provider, tmp_path: Path) -> None:
    f1, counts = _f1_by_hand()
    assert counts["fp"] > 0 and counts["fn"] > 0 and 0 < f1 < 1  # the samples are designed to disagree
    reference = provider("moonshot", "--call-when", ",".join(REFERENCE_WORDS), key=REF_KEY)
    candidate = provider("nim", "--call-when", ",".join(CANDIDATE_WORDS))
    args = (
        "--url", candidate, "--model", MODEL_IDS["nim"], "--api-key-env", KEY_ENV, "--flavor", "nim",
        "--tool-calls", str(SAMPLES),
        "--reference-url", reference, "--reference-model", "kimi-k2.5",
        "--reference-api-key-env", REF_KEY_ENV, "--reference-flavor", "moonshot",
    )  # fmt: skip
    rc, report, out = kd_check(*args, "--f1-threshold", f"{f1 - 0.05:.4f}", tmp_path=tmp_path)
    assert rc == 0, out
    got = report["trigger_f1"]
    assert got["f1"] == pytest.approx(f1) and {k: got[k] for k in counts} == counts
    assert (
        got["reference_schema"]["schema_accuracy"] == 1.0
        and got["candidate_schema"]["schema_accuracy"] == 1.0
    )
    n = len(user_texts())
    assert [u["requests"] for u in report["usage"]] == [SUITE_CHATS + n, n]
    assert report["usage"][1]["total_tokens"] == n * TOKENS_PER_ANSWER
    assert KEY not in out + json.dumps(report) and REF_KEY not in out + json.dumps(report)
    rc, report, out = kd_check(*args, "--f1-threshold", f"{f1 + 0.05:.4f}", tmp_path=tmp_path)
    assert rc == 7 and "tool_call_f1" in last_line(out) and f"{f1:.1%}" in last_line(out)
    rc, _, out = kd_check(*args, "--max-requests", str(SUITE_CHATS + 2 * n - 1), tmp_path=tmp_path)
    assert rc == 2 and "--max-requests" in last_line(out)


def test_trigger_f1_against_recorded_reference_results(provider, tmp_path: Path) -> None:
    f1, counts = _f1_by_hand()
    samples = [json.loads(line) for line in SAMPLES.read_text().splitlines() if line.strip()]
    results = tmp_path / "results.jsonl"
    lines = []
    for i, (body, text) in enumerate(zip(samples, user_texts(), strict=True), 1):
        messages = [{**m, "role": "system"} if m["role"] == "_input" else m for m in body["messages"]]
        called = calls(text, REFERENCE_WORDS)
        lines.append(
            {
                "data_index": i,
                "request": {"model": "kimi-k2.5", "messages": messages},
                "response": None,
                "status": "success",
                "finish_reason": "tool_calls" if called else "stop",
                "tool_calls_valid": True if called else None,
                "last_run_at": "2026-11-30T00:00:00",
                "hash": f"{i:064x}",
            }
        )
    results.write_text("".join(json.dumps(r) + "\n" for r in lines))
    candidate = provider("oxen", "--call-when", ",".join(CANDIDATE_WORDS))
    args = (
        "--url", candidate, "--model", MODEL_IDS["oxen"], "--api-key-env", KEY_ENV,
        "--tool-calls", str(SAMPLES), "--reference-results", str(results),
    )  # fmt: skip
    rc, report, out = kd_check(
        *args, "--f1-threshold", f"{f1 - 0.05:.4f}", "--flavor", "oxen", tmp_path=tmp_path
    )
    assert rc == 0, out
    assert report["trigger_f1"]["f1"] == pytest.approx(f1)
    assert {k: report["trigger_f1"][k] for k in counts} == counts
    assert len(report["usage"]) == 1  # nothing was sent to a reference
    # results from another sample file are refused in one line
    lines[2]["request"]["messages"][-1]["content"] = "Something else entirely."
    results.write_text("".join(json.dumps(r) + "\n" for r in lines))
    rc, _, out = kd_check(*args, "--flavor", "oxen", tmp_path=tmp_path)
    assert rc == 2 and f"{results}:3: data_index 3 was recorded for other messages" in last_line(out)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference-results", "r.jsonl"], "needs --tool-calls"),
        (["--tool-calls", str(SAMPLES), "--reference-url", "http://127.0.0.1:9"], "needs --reference-model"),
        (["--tool-calls", str(SAMPLES), "--reference-results", "r", "--reference-url", "u"], "either"),
        (["--f1-threshold", "1.5"], "--f1-threshold must be in (0, 1]"),
        (
            ["--flavor", "nim", "--api-key-env", "KD_SURELY_UNSET_VAR"],
            "KD_SURELY_UNSET_VAR: that environment",
        ),
        (["--flavor", "oxen"], "oxen needs an API key"),
    ],
)
def test_bad_hosted_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    environ = {k: v for k, v in env().items() if k not in ("OXEN_API_KEY", "NVIDIA_API_KEY")}
    rc, _, out = kd_check(
        "--url", "http://127.0.0.1:9", "--model", "m", *args, tmp_path=tmp_path, environ=environ
    )
    assert rc == 2 and last_line(out).startswith("error: ") and message in last_line(out), out


@pytest.mark.parametrize("module", [providers, check_meter, trigger, session, check_calls])
def test_doctests(module) -> None:
    assert doctest.testmod(module).failed == 0


# ---------------------------------------------------------------------- Ansible: a deployment gated on F1


def _kimi_plan(port: int) -> dict:
    """plan.json for Kimi-K2.5 served by SGLang on ``port`` on this host (what `check --rendered` reads)."""
    from helpers.check_plans import demo_candidate

    from deploy.catalog import load_model

    m = load_model("kimi-k2.5")
    cand = demo_candidate("sglang", port, {}, 4096)
    cand["engine_args"]["served_model_name"] = m.served_model_name
    return {
        "schema": 1,
        "model": {
            "name": m.name,
            "display_name": m.display_name,
            "served_model_name": m.served_model_name,
            "capabilities": m.capabilities,
            "parsers": m.parsers,
            "modes": m.modes,
        },
        "hardware": {"nodes": [{"name": "localhost"}]},
        "request": {},
        "chosen": cand["id"],
        "candidates": [cand],
    }


@pytest.fixture
def kimi_engine() -> Iterator[int]:
    """The FAULT-INJECTING TEST SERVER in its ok-kimi mode: a self-hosted engine (SGLang shapes) that
    answers every request offering tools with a tool call."""
    from deploy.fakes import faultserver

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.fakes.faultserver",
            "--mode",
            "ok-kimi",
            "--engine",
            "sglang",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert faultserver.BANNER in line, line
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_ansible_check_tag_gates_a_deployment_on_f1(kimi_engine: int, provider, tmp_path: Path) -> None:
    import ansible_support as support

    state = tmp_path / "state"
    (state / "rendered").mkdir(parents=True)
    (state / "plan.json").write_text(json.dumps(_kimi_plan(kimi_engine)))
    manifest = {
        "engine": "sglang",
        "served_model_name": "kimi-k2.5",
        "bind": "127.0.0.1",
        "port": kimi_engine,
    }
    (state / "rendered" / "manifest.json").write_text(json.dumps(manifest))
    reference = provider("moonshot", "--call-when", ",".join(REFERENCE_WORDS), key=REF_KEY)
    # by design the engine calls a tool on every sample; the reference only where the text asks for one
    ref = [calls(t, REFERENCE_WORDS) for t in user_texts()]
    tp, fp = sum(ref), len(ref) - sum(ref)
    f1 = 2 * tp / (2 * tp + fp)

    def deploy(f1_threshold: float) -> support.Run:
        inv = support.write_inventory(
            tmp_path / "inv.yml",
            {"localhost": {}},
            {},
            {
                "ansible_connection": "local",
                "ansible_python_interpreter": support.SYSTEM_PYTHON,
                "kimi_bin": support.KD,
                "kimi_state_dir": str(state),
                "kimi_render_dir": str(state / "rendered"),
                "kimi_check_tool_calls": str(SAMPLES),
                "kimi_check_reference_url": reference,
                "kimi_check_reference_model": "kimi-k2.5",
                "kimi_check_reference_flavor": "moonshot",
                "kimi_check_reference_api_key": REF_KEY,
                "kimi_check_f1_threshold": f1_threshold,
            },
        )
        return support.run(inv, tags=["check"])

    passed = deploy(round(f1 - 0.05, 4))
    assert passed.result.ok, passed.text
    report = (state / "check" / "report.json").read_text()
    assert json.loads(report)["trigger_f1"]["f1"] == pytest.approx(f1) and REF_KEY not in report
    assert (state / "check" / "samples.jsonl").read_text() == SAMPLES.read_text()
    failed = deploy(round(f1 + 0.05, 4))
    assert not failed.result.ok
    assert f"trigger F1 {f1:.1%} < " in failed.text and "exit 7" in failed.text and REF_KEY not in failed.text


def test_make_check_passes_the_same_options() -> None:
    """`make check` turns its variables into the CLI's options (a dry run: the command it would run)."""
    repo = Path(__file__).resolve().parents[1]
    variables = {
        "URL": "https://hub.oxen.ai/api/ai",
        "MODEL": "moonshotai-kimi-k2-5",
        "FLAVOR": "oxen",
        "API_KEY_ENV": "OXEN_API_KEY",
        "TOOL_CALLS": "samples.jsonl",
        "REFERENCE_URL": "https://api.moonshot.ai/v1",
        "REFERENCE_MODEL": "kimi-k2.5",
        "REFERENCE_API_KEY_ENV": "MOONSHOT_API_KEY",
        "F1_THRESHOLD": "0.8",
        "MAX_REQUESTS": "200",
    }
    proc = subprocess.run(
        ["make", "-n", "check", *(f"{k}={v}" for k, v in variables.items())],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    command = " ".join(
        line.rstrip("\\") for line in proc.stdout.splitlines() if " check " in line or "--" in line
    )
    for option in (
        "--url https://hub.oxen.ai/api/ai",
        "--flavor oxen",
        "--api-key-env 'OXEN_API_KEY'",
        "--tool-calls samples.jsonl",
        "--reference-url 'https://api.moonshot.ai/v1'",
        "--reference-model 'kimi-k2.5'",
        "--reference-api-key-env 'MOONSHOT_API_KEY'",
        "--f1-threshold '0.8'",
        "--max-requests '200'",
    ):
        assert option in command, (option, command)
