"""Non-finite and absurd numbers (issue 27): every JSON reader refuses NaN, Infinity, a float that
overflows to infinity (``1e999``) and integers of thousands of digits with one InputError, in one shared
parser (deploy.fsutil.loads_strict); the calibration store skips such a record instead of becoming
unreadable; options refuse non-finite and out-of-range numbers with one ``error:`` line.

Hypothesis places a generated hostile literal at a generated numeric leaf of a real document (a plan made
by the planner, the recorded AIPerf export fixture, a pidfile as `up` writes it), so the readers are
tested on where such a number can be, not on a fixed list of cases. In process: fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy import schema
from deploy.benchmark.export import read_export
from deploy.calibration import store
from deploy.errors import InputError
from deploy.fsutil import MAX_INT_DIGITS, loads_strict, read_json
from deploy.hardware.profiles import load_profile
from deploy.planning.contract import load_plan, save_plan
from deploy.planning.planner import plan
from deploy.serving.manifest_schema import PIDFILE_SCHEMA

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "tests" / "fixtures" / "aiperf" / "profile_export_aiperf-llamacpp-c1.json"
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: What no measurement is: non-finite constants, floats past the double range, integers past 64 bits.
HOSTILE = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity"]),
    st.integers(309, 99999).map(lambda e: f"1e{e}"),
    st.integers(309, 99999).map(lambda e: f"-2.5E+{e}"),
    st.integers(MAX_INT_DIGITS + 1, 6000).map(lambda n: "9" * n),
)


def numeric_leaves(doc: Any, at: tuple = ()) -> list[tuple]:
    """Paths of every int/float leaf (booleans excluded) in a JSON document."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in numeric_leaves(v, (*at, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in numeric_leaves(v, (*at, i))]
    return [at] if isinstance(doc, int | float) and not isinstance(doc, bool) else []


def with_literal(doc: Any, path: tuple, literal: str) -> str:
    """``doc`` as JSON text with the leaf at ``path`` replaced by the raw ``literal``."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = "__HOSTILE_NUMBER__"
    return json.dumps(doc).replace('"__HOSTILE_NUMBER__"', literal)


@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    save_plan(plan(load_profile("h200x8")), path)
    return json.loads(path.read_text())


@SETTINGS
@given(literal=HOSTILE, pick=st.integers(0, 10**6))
def test_shared_parser_refuses_every_hostile_number(literal: str, pick: int) -> None:
    with pytest.raises(ValueError):
        loads_strict(with_literal({"a": [1, {"b": 2.5}]}, [("a", 0), ("a", 1, "b")][pick % 2], literal))


@SETTINGS
@given(literal=HOSTILE, pick=st.integers(0, 10**6))
def test_plan_reader_refuses_hostile_numbers(
    tmp_path: Path, plan_doc: dict[str, Any], literal: str, pick: int
) -> None:
    leaves = numeric_leaves(plan_doc)
    path = tmp_path / "plan.json"
    path.write_text(with_literal(plan_doc, leaves[pick % len(leaves)], literal))
    with pytest.raises(InputError, match="not valid JSON"):
        load_plan(path)


@SETTINGS
@given(literal=HOSTILE, pick=st.integers(0, 10**6))
def test_aiperf_export_reader_refuses_hostile_numbers(tmp_path: Path, literal: str, pick: int) -> None:
    doc = json.loads(EXPORT.read_text())
    leaves = numeric_leaves(doc)
    path = tmp_path / "profile_export_aiperf.json"
    path.write_text(with_literal(doc, leaves[pick % len(leaves)], literal))
    with pytest.raises(InputError, match="not valid JSON"):
        read_export(path, 1)


@SETTINGS
@given(literal=HOSTILE, field=st.sampled_from(["pid", "pgid", "port", "ready_s"]))
def test_pidfile_reader_refuses_hostile_numbers(tmp_path: Path, literal: str, field: str) -> None:
    doc = {"pid": 4242, "pgid": 4242, "port": 8000, "ready_s": 1.5, "url": "http://127.0.0.1:8000"}
    path = tmp_path / "head.pid.json"
    path.write_text(with_literal(doc, (field,), literal))
    with pytest.raises(InputError):
        schema.load_json(path, PIDFILE_SCHEMA)


def _record() -> dict[str, Any]:
    figures = {"kv_cache_tokens": 715072, "weights_gib_per_gpu": 70.2, "load_s": 88.0, "kv_cache_gib": 46.8}
    return {
        "model": "kimi-k2.5",
        "engine": "vllm",
        "engine_version": "0.11.0",
        "gpu": "H200",
        "layout": "tp8",
        "variant": "int4",
        "knobs": {"gpu_memory_utilization": 0.9, "kv_cache_dtype": "auto", "max_model_len": 262144},
        "predicted": dict(figures),
        "measured": dict(figures),
    }


@SETTINGS
@given(literal=HOSTILE, pick=st.integers(0, 10**6))
def test_one_hostile_record_never_bricks_the_calibration_store(
    tmp_path: Path, literal: str, pick: int
) -> None:
    bad = _record()
    leaves = numeric_leaves(bad)
    text = with_literal(
        {"schema": 1, "records": [_record(), bad]}, ("records", 1, *leaves[pick % len(leaves)]), literal
    )
    path = tmp_path / "records.json"
    path.write_text(text)
    assert store.load_records(path) == [_record()]


@pytest.mark.parametrize(
    "figure",
    [
        ("measured", "weights_gib_per_gpu", 1e300),
        ("measured", "kv_cache_tokens", 0),
        ("measured", "load_s", -1),
    ],
)
def test_an_absurd_measurement_is_never_recorded(tmp_path: Path, figure: tuple) -> None:
    """A start-up log claiming 1e300 GiB, zero KV tokens or a negative load time is refused before the
    store is written (the ceilings come from what each figure measures: store.MAX_*)."""
    record = _record()
    record[figure[0]][figure[1]] = figure[2]
    with pytest.raises(InputError):
        store.add_record(store.validate_record(record), tmp_path / "records.json")
    assert not (tmp_path / "records.json").exists()


def test_writers_never_write_a_non_finite_number(tmp_path: Path) -> None:
    from deploy.fsutil import atomic_write_json

    with pytest.raises(InputError, match="NaN or infinity"):
        atomic_write_json(tmp_path / "x.json", {"gib": float("inf")})
    assert not (tmp_path / "x.json").exists()
    assert read_json(atomic_write_json(tmp_path / "y.json", {"gib": 1.5})) == {"gib": 1.5}


OPTION_CASES = [
    ("status", "--watch", "--interval", "inf"),
    ("status", "--watch", "--interval", "nan"),
    ("status", "--watch", "--count", "9" * 5000),
    ("bench", "--url", "http://127.0.0.1:9", "--model", "m", "--duration", "nan"),
    ("bench", "--url", "http://127.0.0.1:9", "--model", "m", "--duration", "inf"),
    ("bench", "--url", "http://127.0.0.1:9", "--model", "m", "--requests", "-3"),
    ("check", "--url", "http://127.0.0.1:9", "--model", "m", "--concurrency", "100000000000000000000"),
    ("check", "--url", "http://127.0.0.1:9", "--model", "m", "--threshold", "nan"),
    ("mirror", "serve", ".", "--port", "65536"),
    ("render", "--plan", "plan.json", "--port", "70000"),
    ("up", "--plan", "plan.json", "--deadline", "inf"),
]


@pytest.mark.parametrize("args", OPTION_CASES, ids=lambda a: " ".join(a)[:60])
def test_number_options_refuse_non_finite_and_out_of_range(tmp_path: Path, args: tuple) -> None:
    env = {**os.environ, "KIMI_API_KEY": "k-0123456789"}
    r = subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    option = next(a for a in reversed(args) if a.startswith("--"))
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], r.stderr
