"""Engine knowledge lives in deploy/engines/: one module per engine, looked up through the registry.

- No module outside ``deploy/engines/`` compares a value with an engine's name (``==``, ``!=``, ``in``,
  ``not in``, ``match``/``case``): it looks the engine up (``registry.get(name)``) and reads its data.
  Read from the syntax tree, so the variable's name does not matter.
- The registry itself: lookup, order, the one-line error for an unknown engine.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path

import pytest

from deploy.engines import registry
from deploy.engines.base import Engine, Feature
from deploy.errors import InputError

PACKAGE = Path(__file__).resolve().parents[1] / "deploy"

_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def _literal_names(node: ast.AST, names: set[str]) -> list[str]:
    """The engine names a literal side of a comparison spells (a string, or a tuple/list/set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else []
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in names]
    return []


def engine_name_comparisons(source: str, names: set[str]) -> list[tuple[int, str]]:
    """(line, engine names) for every comparison of something with a literal naming engines (one entry per
    literal: ``e in ("vllm", "sglang")`` is one comparison).

    >>> engine_name_comparisons("if kind == 'vllm' or kind in ('sglang', 'x'): pass", {"vllm", "sglang"})
    [(1, 'sglang'), (1, 'vllm')]
    """
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for i, op in enumerate(node.ops):
                if isinstance(op, _OPS):
                    for side in (sides[i], sides[i + 1]):
                        if hit := _literal_names(side, names):
                            found.append((side.lineno, side.col_offset, "/".join(hit)))
        elif isinstance(node, ast.match_case):
            for pattern in ast.walk(node.pattern):
                if isinstance(pattern, ast.MatchValue) and (hit := _literal_names(pattern.value, names)):
                    found.append((pattern.lineno, pattern.col_offset, "/".join(hit)))
    return sorted((line, hit) for line, _col, hit in set(found))


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "engines")


def engine_name_lists(source: str, names: set[str]) -> list[int]:
    """Lines of a tuple, list or set made only of two or more engine names (a hand-kept list of engines,
    which a membership test then compares against); derive it from the registry instead.
    """
    return sorted(
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.Tuple, ast.List, ast.Set))
        and len(node.elts) >= 2
        and len(_literal_names(node, names)) == len(node.elts)
    )


#: Modules that may spell engine lists: the test doubles mimic named engines by design, and the parser
#: probe runs inside the parser venv, where the toolkit is not installed.
SPELLS_ENGINES = {"fakes/faultserver.py", "data/parser_probe.py"}


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", _modules(), ids=_rel)
def test_no_module_outside_the_engines_compares_an_engine_name(path: Path):
    found = engine_name_comparisons(path.read_text(), set(registry.names()))
    lines = ", ".join(f"line {line} ({name})" for line, name in found)
    assert not found, (
        f"deploy/{_rel(path)}: compares with engine names at {lines}: look the engine up "
        "(deploy.engines.registry.get) and read its data, or add what it needs to deploy/engines/base.py"
    )


def test_a_list_of_engine_names_is_found():
    source = "E = ('vllm', 'sglang')\nF = ('vllm', 'ray')\nG = ['x']\n"
    assert engine_name_lists(source, {"vllm", "sglang"}) == [1]


@pytest.mark.parametrize("path", [p for p in _modules() if _rel(p) not in SPELLS_ENGINES], ids=_rel)
def test_no_module_outside_the_engines_keeps_its_own_list_of_engines(path: Path):
    lines = engine_name_lists(path.read_text(), set(registry.names()))
    assert not lines, (
        f"deploy/{_rel(path)}: a list of engine names at line(s) {lines}: derive it from the registry"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("if cand.engine == 'llama.cpp': pass", ["llama.cpp"]),
        ("x = e != 'vllm'", ["vllm"]),
        ("ok = flavor in ('sglang', 'ktransformers')", ["sglang/ktransformers"]),
        ("ok = 'vllm' not in engines", ["vllm"]),
        ("ok = name in ['llama.cpp', 'parsers']", ["llama.cpp"]),
        ("match engine:\n    case 'sglang' | 'vllm':\n        pass\n", ["sglang", "vllm"]),
        ("ok = placement in ('cpu', 'rpc')", []),
        ("x = {'vllm': 1}['vllm']", []),
        ("ok = eng.metrics_flag is None", []),
    ],
)
def test_the_rule_reads_every_comparison_form(source: str, expected: list[str]):
    found = engine_name_comparisons(source, {"vllm", "sglang", "ktransformers", "llama.cpp"})
    assert sorted(n for _line, n in found) == sorted(expected)


# ---- the registry ----------------------------------------------------------------------------------


def test_the_registry_holds_the_four_engines_in_the_catalogs_order():
    from deploy.catalog import ENGINES

    assert registry.names() == list(ENGINES)
    assert [e.name for e in registry.all()] == list(ENGINES)
    assert all(isinstance(e, Engine) for e in registry.all())


def test_an_unknown_engine_is_one_line_of_input_error():
    with pytest.raises(InputError) as err:
        registry.get("tgi")
    message = str(err.value)
    assert "\n" not in message and "'tgi'" in message and "llama.cpp" in message


def test_every_engine_declares_its_data():
    for e in registry.all():
        assert e.display_name and e.memory_model and e.health.path.startswith("/")
        assert e.metrics.running and e.startup_log.family and e.weight_formats
        assert set(e.unsupported) <= set(Feature.ALL), e.name
        assert e.version != "unknown", e.name
        if e.supports(Feature.MULTINODE):
            assert e.multinode_backends, e.name
    with pytest.raises(ValueError):
        registry.get("vllm").supports("teleport")


def test_register_adds_an_engine_and_get_finds_it(monkeypatch: pytest.MonkeyPatch):
    import dataclasses

    # the registry's own table is swapped for a copy, so the fake never outlives this test
    monkeypatch.setattr(registry, "_ENGINES", dict(registry._ENGINES))
    fake = dataclasses.replace(registry.get("vllm"), name="fake", display_name="Fake")
    registry.register(fake)
    assert registry.get("fake") is fake
    assert registry.names()[-1] == "fake"


# ---- a fifth engine: registering it is the only step ------------------------------------------------


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Engine:
    """An engine called "fake" (llama.cpp's data, memory model and launcher under another name), registered
    for this test only, and a catalog in which the demo model lists it beside llama.cpp.

    The catalog's entries are files the toolkit ships: the test copies them into its own folder (the
    catalog folder constant monkeypatched) and lets the demo's GGUF variant name the fake engine there, with
    llama.cpp's engine settings, so no shipped file changes and the fake never outlives the test."""
    import dataclasses

    import yaml

    from deploy import constants

    monkeypatch.setattr(registry, "_ENGINES", dict(registry._ENGINES))
    fake = registry.register(dataclasses.replace(registry.get("llama.cpp"), name="fake", display_name="Fake"))
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for src in constants.CATALOG_DIR.glob("*.yaml"):
        (catalog / src.name).write_text(src.read_text())
    demo = yaml.safe_load((catalog / "demo.yaml").read_text())
    demo["engines"]["fake"] = dict(demo["engines"]["llama.cpp"])
    for variant in demo["variants"]:
        if "llama.cpp" in variant["engines"]:
            variant["engines"].append("fake")
    (catalog / "demo.yaml").write_text(yaml.safe_dump(demo, sort_keys=False))
    monkeypatch.setattr(constants, "CATALOG_DIR", catalog)
    return fake


def _plan(engine: str):  # type: ignore[no-untyped-def]
    from deploy.hardware.profiles import load_profile
    from deploy.planning.planner import plan
    from deploy.planning.request import PlanRequest

    return plan(load_profile("cpu-512g"), PlanRequest(model="demo", engine=engine))


def test_a_registered_fake_engine_is_planned(fake_engine: Engine):
    p = _plan("fake")
    assert {c.engine for c in p.candidates} == {"fake"}
    chosen, twin = p.chosen_candidate, _plan("llama.cpp").chosen_candidate
    assert chosen.engine == "fake" and chosen.runs
    # planned from llama.cpp's data alone: the same layout, context and memory as llama.cpp's own plan
    assert (chosen.placement, chosen.max_model_len, chosen.memory) == (
        twin.placement,
        twin.max_model_len,
        twin.memory,
    )


def test_a_registered_fake_engine_is_rendered_like_its_twin(
    fake_engine: Engine, tmp_path_factory: pytest.TempPathFactory
):
    from deploy.serving.render import RenderOptions, render

    # folders whose paths do not hold this test's name (which says "fake")
    weights = tmp_path_factory.mktemp("weights")
    tmp_path = tmp_path_factory.mktemp("rendered")
    (weights / "demo.gguf").write_bytes(b"")  # render reads the file names only
    texts = {}
    for engine in ("fake", "llama.cpp"):
        p = _plan(engine)
        out = tmp_path / f"rendered-{engine}"
        render(p, RenderOptions(out_dir=out, weights_dir=weights))
        node = p.hardware["nodes"][0]["name"]
        files = (f"launch-{node}.sh", "kimi-deploy.env")
        # the comments name the engine and the candidate; the commands and settings are compared
        texts[engine] = [
            "\n".join(x for x in (out / "current" / f).read_text().splitlines() if not x.startswith("#"))
            for f in files
        ]
    assert "llama-server" in texts["fake"][0]
    for ours, twin in zip(texts["fake"], texts["llama.cpp"], strict=True):
        diff = difflib.unified_diff(twin.splitlines(), ours.splitlines(), "llama.cpp", "fake", lineterm="")
        assert ours == twin, "\n".join(diff)
