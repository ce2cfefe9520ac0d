"""The catalog: loader, `extends`, sizes computed from the architecture against the repo listings, and the
demo GGUF's header (read with the `gguf` package) against the catalog's `expected` block."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import pytest
import yaml

from deploy.catalog import ENGINES, available_models, load_model
from deploy.errors import CatalogError
from deploy.planning.architecture import architecture_for, demo_gguf_path, gguf_architecture, read_gguf_header

#: How far a computed GGUF size may sit from the repo listing. The catalog's bits per weight are per tensor
#: group averages of unsloth's dynamic quants (some tensors of a group get more bits); their file sizes are
#: listed to a few GB. Native INT4 is exact arithmetic, so it gets a tight bound.
GGUF_TOLERANCE = 0.03
INT4_TOLERANCE = 0.001


def test_models_listed():
    assert {"kimi-k2.5", "kimi-k2.6", "demo"} <= set(available_models())


def test_kimi_k25_loads_with_engine_preference():
    m = load_model("kimi-k2.5")
    assert m.engine_preference == ["vllm", "sglang", "ktransformers", "llama.cpp"]
    assert set(m.engine_preference) <= set(ENGINES)
    assert m.parsers == {"tool_call": "kimi_k2", "reasoning": "kimi_k2"}
    assert m.variant("UD-Q2_K_XL").repo == "unsloth/Kimi-K2.5-GGUF"


def test_kimi_k26_extends_k25():
    k25, k26 = load_model("kimi-k2.5"), load_model("kimi-k2.6")
    assert k26.architecture == k25.architecture
    assert k26.parsers == k25.parsers
    assert [v.id for v in k26.variants] == [v.id for v in k25.variants]
    assert k26.variant("int4").repo == "moonshotai/Kimi-K2.6"
    assert k26.variant("UD-TQ1_0").repo == "unsloth/Kimi-K2.6-GGUF"
    # inherited fields of a merged variant survive the override
    assert k26.variant("int4").file_bytes == k25.variant("int4").file_bytes
    assert k26.served_model_name == "kimi-k2.6"


def test_extends_loop_and_unknown(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"name": "a", "extends": "b"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "b", "extends": "a"}))
    with pytest.raises(CatalogError, match="loops"):
        load_model("a", tmp_path)
    with pytest.raises(CatalogError, match="unknown model"):
        load_model("zzz", tmp_path)


@pytest.mark.parametrize("variant_id", ["int4", "UD-Q4_K_XL", "UD-Q3_K_XL", "UD-Q2_K_XL", "UD-TQ1_0"])
def test_computed_size_matches_listing(variant_id: str):
    m = load_model("kimi-k2.5")
    v = m.variant(variant_id)
    computed = architecture_for(m, v).total_bytes
    tolerance = INT4_TOLERANCE if v.format == "safetensors" else GGUF_TOLERANCE
    assert abs(computed - v.file_bytes) / v.file_bytes < tolerance, (computed, v.file_bytes)


@pytest.fixture(scope="module")
def demo_file() -> Path:
    return demo_gguf_path(load_model("demo"))


def test_demo_file_matches_expected(demo_file: Path):
    expected = load_model("demo").expected
    assert demo_file.stat().st_size == expected["file_bytes"]
    h = hashlib.sha256()
    with demo_file.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    assert h.hexdigest() == expected["sha256"]


def test_demo_header_matches_catalog(demo_file: Path):
    m = load_model("demo")
    exp = m.expected
    arch = gguf_architecture(demo_file)
    d = arch.details
    assert d["gguf_architecture"] == exp["gguf_architecture"]
    assert d["block_count"] == arch.num_layers == exp["block_count"]
    assert d["context_length"] == arch.max_position_embeddings == exp["context_length"]
    assert d["head_count_kv"] == exp["head_count_kv"]
    assert d["key_length"] == exp["key_length"] and d["value_length"] == exp["value_length"]
    # GQA cache: layers x kv heads x (key + value length) x 2 bytes (F16)
    assert arch.kv_bytes_per_token("bf16") == (
        exp["block_count"] * exp["head_count_kv"] * (exp["key_length"] + exp["value_length"]) * 2
    )


@pytest.mark.slow
def test_fast_header_parser_agrees_with_gguf_reader(demo_file: Path):
    # gguf.GGUFReader parses every metadata array (tens of seconds on a busy 2-core machine); the planner's
    # parser skips arrays. Both must see the same scalars and the same tensor table.
    reader = gguf.GGUFReader(str(demo_file), "r")
    header = read_gguf_header(demo_file)
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    assert [t.n_bytes for t in header.tensors] == [int(t.n_bytes) for t in reader.tensors]
    assert [t.n_elements for t in header.tensors] == [int(t.n_elements) for t in reader.tensors]
    for key, value in header.fields.items():
        assert reader.fields[key].contents() == pytest.approx(value), key
    arch = gguf_architecture(demo_file)
    assert arch.total_bytes == sum(int(t.n_bytes) for t in reader.tensors)


def test_demo_groups_sum_the_tensors(demo_file: Path):
    header = read_gguf_header(demo_file)
    arch = gguf_architecture(demo_file)
    assert arch.total_bytes == sum(t.n_bytes for t in header.tensors)
    assert arch.total_params == sum(t.n_elements for t in header.tensors) == arch.details["parameters"]
    # the tensors are the file less its header (metadata and tokenizer)
    assert arch.total_bytes < demo_file.stat().st_size
    assert {g.name for g in arch.groups} >= {"embed", "attention", "mlp"}


def test_not_a_gguf(tmp_path: Path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(CatalogError, match="not a GGUF"):
        read_gguf_header(bad)
    with pytest.raises(CatalogError, match="not found"):
        gguf_architecture(tmp_path / "missing.gguf")


def test_demo_architecture_through_catalog(demo_file: Path):
    m = load_model("demo")
    arch = architecture_for(m, m.variants[0])
    assert arch.model == "demo" and arch.num_layers == m.expected["block_count"]
