"""The planner against published start-up logs of the Kimi K2 family (same MLA KV shapes).

Each file in tests/fixtures/startup_logs holds the engine's own lines as published, with the source URL,
hardware and flags in its header. The test parses the lines with the calibration parsers, predicts the same
figure with the planner's memory model, prints published / predicted / error for every point, and fails
when an error is above the tolerance defended here:

- bytes per cached token (vLLM, SGLang): 0.1% when the log gives GiB to 2 decimals over ~45 GiB, 1% when it
  gives 0.53 GB (2 significant digits: +-0.9% of rounding alone);
- llama.cpp's KV buffer: 0.1% (it allocates exactly --ctx-size cells; the MiB figure has 2 decimals);
- vLLM's KV memory per GPU: at most the error the planner states for vLLM on GPUs
  (deploy/planning/margins.py KV_ERRORS), so that the low end of the predicted range never promises more
  tokens than vLLM reported.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from deploy.calibration.logs import read_startup_log
from deploy.catalog import load_model
from deploy.constants import GIB, MIB
from deploy.hardware.profiles import load_profile
from deploy.planning.architecture import architecture_for
from deploy.planning.margins import kv_error, low_end
from deploy.planning.memory import Layout, evaluate, llama_kv_value_bytes

FIXTURES = Path(__file__).parent / "fixtures" / "startup_logs"


def header(path: Path) -> dict[str, str]:
    """The '# key: value' lines at the top of a fixture."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        out[key] = value
    return out


def planner_opts(path: Path) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in header(path)["planner"].split())


def kimi_arch(variant: str, without_vision: bool = False):
    model = load_model("kimi-k2.5")
    arch = architecture_for(model, model.variant(variant))
    if without_vision:
        arch = dataclasses.replace(arch, groups=tuple(g for g in arch.groups if g.name != "vision"))
    return arch


def err(predicted: float, published: float) -> float:
    return (predicted - published) / published


ROWS: list[tuple[str, str, str, str, str, str]] = []


def row(name: str, quantity: str, published: float, predicted: float, fmt: str = "{:,.2f}") -> float:
    e = err(predicted, published)
    ROWS.append((name, quantity, fmt.format(published), fmt.format(predicted), f"{e:+.3%}", ""))
    print(
        f"{name}: {quantity}: published {fmt.format(published)}, predicted {fmt.format(predicted)}, "
        f"error {e:+.3%}"
    )
    return e


def test_every_fixture_names_its_source():
    files = sorted(FIXTURES.glob("*.log"))
    assert len(files) >= 3
    for f in files:
        h = header(f)
        assert h["source"].startswith("https://"), f
        assert h.get("hardware") and h.get("flags") and h.get("planner"), f


def test_vllm_kimi_k2_thinking_on_8x_h200():
    path = FIXTURES / "vllm-kimi-k2-thinking-8xh200-tp8.log"
    facts = read_startup_log(str(path), "vllm")
    opts = planner_opts(path)
    arch = kimi_arch(opts["variant"], opts.get("without_vision") == "true")
    fit = evaluate(arch, Layout("vllm", 1, 8, 8), load_profile(opts["profile"]).head)
    name = path.stem
    # the cache's bytes per token (available memory / printed tokens, both as vLLM rounds them)
    per_token = facts.kv_cache_gib * GIB / facts.kv_cache_tokens
    assert abs(row(name, "KV bytes/token", per_token, fit.kv_bytes_per_token, "{:,.0f}")) < 0.001
    # vLLM prints whole blocks of 64 tokens for MLA: the count is a multiple of the block
    assert facts.kv_cache_tokens % 64 == 0 and fit.kv_capacity_tokens % 64 == 0
    e_mem = row(name, "KV GiB/GPU", facts.kv_cache_gib, fit.memory.kv_cache)
    e_tok = row(name, "KV tokens", facts.kv_cache_tokens, fit.kv_capacity_tokens, "{:,.0f}")
    stated = kv_error("vllm", "gpu")
    assert abs(e_mem) <= stated.fraction and abs(e_tok) <= stated.fraction
    low = low_end(fit.kv_capacity_tokens, stated)
    row(name, "KV tokens, low end", facts.kv_cache_tokens, low, "{:,.0f}")
    assert low <= facts.kv_cache_tokens, "the low end promises more than vLLM allocated"


def test_sglang_cell_size_of_kimi_k2():
    path = FIXTURES / "sglang-kimi-k2-instruct-0905-tp8-piecewise.log"
    facts = read_startup_log(str(path), "sglang")
    arch = kimi_arch("int4")
    # SGLang prints GB = 2^30 bytes with 2 decimals: 0.53 stands for [0.525, 0.535)
    per_token = facts.kv_cache_gib * GIB / facts.kv_cache_tokens
    e = row(path.stem, "KV bytes/token", per_token, arch.kv_bytes_per_token("bf16"), "{:,.0f}")
    assert abs(e) < 0.01


def test_llamacpp_mla_kv_buffer():
    path = FIXTURES / "llamacpp-ik-deepseek-r1-q8_0-ctx32768.log"
    facts = read_startup_log(str(path), "llama.cpp")
    opts = planner_opts(path)
    arch = kimi_arch(opts["variant"])
    ctx = int(opts["ctx"])
    predicted = ctx * arch.kv_values_per_layer * llama_kv_value_bytes(opts["kv_dtype"]) * arch.num_layers
    e = row(path.stem, "KV buffer MiB", facts.kv_cache_gib * 1024, predicted / MIB)
    assert abs(e) < 0.001


def test_print_table(capsys):
    """Run last in this file: the table for docs/explanation/margins-and-calibration.md."""
    if not ROWS:
        pytest.skip("run with the other tests of this file")
    print("| fixture | quantity | published | predicted | error |")
    for r in ROWS:
        print("| " + " | ".join(r[:5]) + " |")
