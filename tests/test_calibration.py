"""Calibration: the engines' start-up lines parsed, records stored atomically, `calibrate import/list`, and
`plan` predicting from a measured start. Every CLI run uses its own KIMI_DEPLOY_CACHE (a temp folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.calibration.logs import parse_startup_log
from deploy.constants import GIB
from deploy.errors import CalibrationError

FIXTURES = Path(__file__).parent / "fixtures"
VLLM_LOG = FIXTURES / "startup_logs" / "vllm-kimi-k2-thinking-8xh200-tp8.log"
LLAMA_LOG = FIXTURES / "startup_logs" / "llamacpp-ik-deepseek-r1-q8_0-ctx32768.log"
REFUSAL = FIXTURES / "vllm_cpu" / "kv_refusal.log"


def kd(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, KIMI_DEPLOY_CACHE=str(cache), KIMI_DEPLOY_CALIBRATION_DIR=str(cache / "calibration")
    )
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def h200_plan(tmp_path: Path, cache: Path) -> Path:
    out = tmp_path / "plan.json"
    r = kd(cache, "plan", "--hardware", "h200x8", "--engine", "vllm", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


# ---- parsers -------------------------------------------------------------------------------------------


def test_vllm_gpu_lines():
    text = "\n".join(
        [
            "(APIServer pid=1) INFO 11-06 12:00:00 [api_server.py:1] vLLM API server version 0.33.0",
            "(Worker_TP0 pid=2) INFO 11-06 12:03:10 [gpu_model_runner.py:2] Model loading took 70.95 GiB "
            "memory and 180.5 seconds",
            "(Worker_TP0 pid=2) INFO 11-06 12:04:00 [monitor.py:3] torch.compile takes 41.2 s in total",
            "(Worker_TP0 pid=2) INFO 11-06 12:05:00 [gpu_worker.py:4] Available KV cache memory: 46.80 GiB",
            "(EngineCore_DP0 pid=3) INFO 11-06 12:05:01 [kv_cache_utils.py:5] GPU KV cache size: "
            "715,072 tokens",
            "(Worker_TP0 pid=2) INFO 11-06 12:06:00 [gpu_model_runner.py:6] Graph capturing finished in "
            "50 secs, took 2.10 GiB",
            "(APIServer pid=1) INFO 11-06 12:06:30 [launcher.py:7] Application startup complete.",
        ]
    )
    f = parse_startup_log(text, "vllm")
    assert (f.engine, f.device, f.engine_version) == ("vllm", "gpu", "0.33.0")
    assert (f.kv_cache_tokens, f.kv_cache_gib, f.weights_gib_per_gpu) == (715072, 46.8, 70.95)
    assert (f.cuda_graph_gib, f.compile_s, f.weights_load_s) == (2.1, 41.2, 180.5)
    assert f.load_s == 6 * 60 + 30  # 12:00:00 -> 12:06:30, the log reaches "startup complete"


def test_sglang_lines():
    text = "\n".join(
        [
            "[2026-01-01 10:00:00] Load weight begin. avail mem=139.20 GB",
            "[2026-01-01 10:03:00 TP0] Load weight end. type=KimiK25, dtype=torch.bfloat16, "
            "avail mem=68.1 GB, mem usage=71.10 GB.",
            "[2026-01-01 10:03:05 TP0] KV Cache is allocated. #tokens: 600000, KV size: 39.27 GB",
            "[2026-01-01 10:04:00 TP0] Capture cuda graph end. Time elapsed: 40.50 s. mem usage=1.20 GB.",
            "[2026-01-01 10:04:10] The server is fired up and ready to roll!",
        ]
    )
    f = parse_startup_log(text, "sglang")
    assert (f.kv_cache_tokens, f.kv_cache_gib, f.weights_gib_per_gpu) == (600000, 39.27, 71.1)
    assert f.load_s == 250 and f.compile_s == 40.5
    # KTransformers runs SGLang: its logs are SGLang's
    assert parse_startup_log(text, "ktransformers").engine == "sglang"


def test_llama_cpp_lines():
    text = "\n".join(
        [
            "build: 1 (0c1e570) with cc for x86_64-linux-gnu",
            "load_tensors:   CPU_Mapped model buffer size =   241.41 MiB",
            "llama_context: n_ctx         = 4096",
            "llama_kv_cache:        CPU KV buffer size =    72.00 MiB",
            "llama_kv_cache: size =   72.00 MiB (  4096 cells,  18 layers,  1/1 seqs), K (f16): 36.00 MiB",
            "llama_context:        CPU compute buffer size =   258.50 MiB",
        ]
    )
    f = parse_startup_log(text, "llama.cpp")
    assert (f.engine, f.device, f.engine_version) == ("llama.cpp", "cpu", "0c1e570")
    assert (f.kv_cache_tokens, f.ctx_size) == (4096, 4096)
    assert f.kv_cache_gib == pytest.approx(72 / 1024) and f.weights_gib_host == pytest.approx(241.41 / 1024)
    assert f.weights_gib_per_gpu is None and f.compute_buffer_gib == pytest.approx(258.5 / 1024)


def test_vllm_cpu_build_lines():
    f = parse_startup_log(
        "(Worker pid=8) INFO 11-23 06:38:59 [cpu_worker.py:260] Explicitly set (3.00/13.71) GiB for KV cache "
        "on node 0.\n(EngineCore pid=2) INFO 11-23 06:39:00 [kv_cache_utils.py:1] GPU KV cache size: 174,752 "
        "tokens\n",
        "vllm",
    )
    assert (f.device, f.kv_cache_gib, f.kv_cache_tokens) == ("cpu", 3.0, 174752)
    assert pytest.approx(18432, rel=1e-3) == 3.0 * GIB / 174752  # the demo's bytes per token


@pytest.mark.parametrize(
    ("text", "engine", "message"),
    [
        ("", "vllm", "empty"),
        ("   \n\n", None, "empty"),
        ("hello world\nnothing here\n", None, "no start-up lines"),
        ("INFO 11-06 12:00:00 [gpu_worker.py:1] Loading weights\n", "vllm", "truncated"),
        ("llama_kv_cache: size =   72.00 MiB (  4096 cells,  18 layers)\n", "vllm", "llama.cpp start-up log"),
    ],
)
def test_bad_logs(text: str, engine: str | None, message: str):
    with pytest.raises(CalibrationError, match=message):
        parse_startup_log(text, engine)


def test_a_refusal_is_not_a_start():
    with pytest.raises(CalibrationError, match="refused to start"):
        parse_startup_log(REFUSAL.read_text(), "vllm")


# ---- the CLI and the store -----------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "empty": tmp_path / "empty.log",
        "binary": tmp_path / "binary.log",
        "truncated": tmp_path / "truncated.log",
        "another engine's": tmp_path / "llama.log",
        "refused": REFUSAL,
    }
    files["empty"].write_text("")
    files["binary"].write_bytes(bytes(range(256)) * 64)
    # a real vLLM start-up log cut before its KV cache lines
    files["truncated"].write_text("\n".join(REFUSAL.read_text().splitlines()[:45]) + "\n")
    files["another engine's"].write_text(LLAMA_LOG.read_text())
    return files


def test_bad_logs_exit_2_and_leave_the_store_alone(tmp_path: Path, cache: Path, h200_plan: Path):
    assert kd(cache, "calibrate", "import", str(VLLM_LOG), "--plan", str(h200_plan)).returncode == 0
    store = cache / "calibration" / "records.json"
    before = store.read_bytes()
    for what, path in _bad_files(tmp_path).items():
        r = kd(cache, "calibrate", "import", str(path), "--plan", str(h200_plan))
        assert r.returncode == 2, (what, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (what, r.stderr)
        assert "Traceback" not in r.stderr
        assert store.read_bytes() == before, what
    # no temp file left beside the store
    assert sorted(p.name for p in store.parent.iterdir()) == [".records.lock", "records.json"]


def test_import_changes_the_next_plan(cache: Path, h200_plan: Path, tmp_path: Path):
    before = json.loads(h200_plan.read_text())
    c0 = next(c for c in before["candidates"] if c["id"] == before["chosen"])
    r = kd(cache, "calibrate", "import", str(VLLM_LOG), "--plan", str(h200_plan))
    assert r.returncode == 0 and "715,072 tokens measured" in r.stdout, r.stderr
    listed = json.loads(kd(cache, "calibrate", "list", "--json").stdout)
    (rec,) = listed
    assert {k: rec[k] for k in ("model", "engine", "engine_version", "gpu", "layout")} == {
        "model": "kimi-k2.5",
        "engine": "vllm",
        "engine_version": "0.33.0",
        "gpu": "H200",
        "layout": "TP8",
    }
    assert (
        rec["measured"]["kv_cache_tokens"] == 715072
        and rec["predicted"]["kv_cache_tokens"] == (c0["kv_cache_tokens"])
    )
    for side in ("predicted", "measured"):
        assert {"kv_cache_tokens", "weights_gib_per_gpu", "load_s"} <= set(rec[side])
    out = tmp_path / "plan2.json"
    r = kd(cache, "plan", "--hardware", "h200x8", "--engine", "vllm", "-o", str(out))
    assert r.returncode == 0 and "calibrated from 1 start(s)" in r.stdout
    c1 = next(c for c in json.loads(out.read_text())["candidates"] if c["id"] == c0["id"])
    # the measured start at the same utilisation: vLLM's own count, in whole 64-token blocks
    assert c1["kv_cache_tokens"] == 715072 and c1["calibrated_from"] == 1
    assert c1["kv_error"] < c0["kv_error"]
    # at another --gpu-memory-utilization the measured error carries over: + 0.05 x 140.4 GiB of KV
    out3 = tmp_path / "plan3.json"
    r = kd(
        cache,
        "plan",
        "--hardware",
        "h200x8",
        "--engine",
        "vllm",
        "--gpu-memory-utilization",
        "0.85",
        "-o",
        str(out3),
    )
    c3 = next(c for c in json.loads(out3.read_text())["candidates"] if c["id"] == c0["id"])
    total = c0["memory"]["total"]
    expected = (46.80 - 0.05 * total) * GIB / 70272
    assert c3["kv_cache_tokens"] == pytest.approx(expected, abs=64 + expected * 1e-4)
    # --no-calibration plans as before
    r = kd(cache, "plan", "--hardware", "h200x8", "--engine", "vllm", "--no-calibration", "--json")
    c4 = next(c for c in json.loads(r.stdout)["candidates"] if c["id"] == c0["id"])
    assert c4["kv_cache_tokens"] == c0["kv_cache_tokens"] and c4["calibrated_from"] == 0


def test_a_corrupt_store(cache: Path, h200_plan: Path):
    store = cache / "calibration" / "records.json"
    store.parent.mkdir(parents=True)
    store.write_text('{"schema": 2, "records": []}')
    r = kd(cache, "calibrate", "list")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "records.json" in r.stderr
    # planning still works: the store is reported and left out
    r = kd(cache, "plan", "--hardware", "h200x8", "--engine", "vllm")
    assert r.returncode == 0 and "warning:" in r.stderr and "planning without calibration" in r.stderr
    r = kd(cache, "calibrate", "import", str(VLLM_LOG), "--plan", str(h200_plan))
    assert r.returncode == 2 and store.read_text() == '{"schema": 2, "records": []}'


@pytest.mark.parametrize("bad", ['{"model": 3}', '{"model": "m", "load_s": 1e999}', "Infinity"])
def test_one_bad_record_never_bricks_the_store(cache: Path, h200_plan: Path, bad: str):
    """A record that is invalid, or holds a number that overflows to infinity, is skipped with a warning;
    the next write moves it to the quarantine file beside the store instead of failing or losing it."""
    store = cache / "calibration" / "records.json"
    store.parent.mkdir(parents=True)
    store.write_text('{"schema": 1, "records": [' + bad + "]}")
    r = kd(cache, "calibrate", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [] and "skipped" in r.stderr
    r = kd(cache, "calibrate", "import", str(VLLM_LOG), "--plan", str(h200_plan))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(kd(cache, "calibrate", "list", "--json").stdout)) == 1
    assert len((store.parent / "records.quarantine.jsonl").read_text().splitlines()) == 1


def test_list_when_empty(cache: Path):
    r = kd(cache, "calibrate", "list")
    assert r.returncode == 0 and "no calibration records yet" in r.stdout
    assert json.loads(kd(cache, "calibrate", "list", "--json").stdout) == []


def test_sglang_record_scales_to_another_fraction():
    # a start measured 2 GiB less KV per GPU than predicted at SGLang's own fraction; at another
    # --mem-fraction-static the same 2 GiB error carries over (the pool is what the fraction leaves)
    from deploy.calibration.logs import StartupFacts
    from deploy.hardware.profiles import load_profile
    from deploy.planning.calibrated import record_from_start
    from deploy.planning.planner import plan
    from deploy.planning.request import PlanRequest

    h200 = load_profile("h200x8")
    first = plan(h200, PlanRequest(engine="sglang"))
    c = first.candidate("sglang-int4-tp8")
    facts = StartupFacts(engine="sglang", kv_cache_gib=c.memory.kv_cache - 2.0, weights_gib_per_gpu=71.9)
    facts.kv_cache_tokens = int(facts.kv_cache_gib * GIB // 70272)
    rec = record_from_start(first, c, facts, source="test")
    again = plan(h200, PlanRequest(engine="sglang", gpu_memory_utilization=0.85), calibration=[rec])
    c2 = again.candidate("sglang-int4-tp8")
    raw = plan(h200, PlanRequest(engine="sglang", gpu_memory_utilization=0.85)).candidate("sglang-int4-tp8")
    assert c2.calibrated_from == 1 and raw.calibrated_from == 0
    assert c2.kv_cache_tokens == pytest.approx((raw.memory.kv_cache - 2.0) * GIB / 70272, rel=1e-3)
    assert c2.kv_error == 0.01 and "calibrated from 1 start(s)" in c2.reasons[0]
    # another GPU, engine version or layout does not match
    other = plan(load_profile("b200x8"), PlanRequest(engine="sglang"), calibration=[rec])
    assert all(x.calibrated_from == 0 for x in other.candidates)


@pytest.mark.parametrize("claim", ["1e400", "99999999999999", "1" + "0" * 400 + ".0"])
def test_a_log_claiming_absurd_memory_never_reaches_the_store(
    cache: Path, h200_plan: Path, tmp_path: Path, claim: str
):
    """A start-up log claiming 1e400 GiB or more memory than any host has is never recorded (refused with
    one error line, or the line is not read as a figure); the store stays readable, finite, for the next
    import."""
    log = tmp_path / "absurd.log"
    good = "Available KV cache memory: 46.80 GiB"
    log.write_text(VLLM_LOG.read_text().replace(good, f"Available KV cache memory: {claim} GiB"))
    r = kd(cache, "calibrate", "import", str(log), "--plan", str(h200_plan))
    assert r.returncode in (0, 2) and "Traceback" not in r.stderr, r.stderr
    r = kd(cache, "calibrate", "import", str(VLLM_LOG), "--plan", str(h200_plan))
    assert r.returncode == 0, r.stderr
    store = cache / "calibration" / "records.json"
    assert "Infinity" not in store.read_text() and "NaN" not in store.read_text()
    assert json.loads(kd(cache, "calibrate", "list", "--json").stdout)
