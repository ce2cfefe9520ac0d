"""The package layout: stages are subpackages, and imports only point down the pipeline.

A module may import the base (the modules directly in ``deploy/``), its own stage and the stages before it;
the base imports only the base; ``deploy.cli`` sits on top and may import everything. Read from the source's
``import`` statements (function-level lazy imports included), so no import can slip past by being deferred.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deploy"

#: The pipeline, earliest first. A new stage gets its own folder and a place in this list.
STAGES = [
    "engines",
    "catalog",
    "hardware",
    "calibration",
    "planning",
    "weights",
    "monitoring",
    "serving",
    "checking",
    "benchmark",
    "support",
    "releases",
    "demo",
    "ansible",
    "cli",
]
BASE = {"console", "constants", "errors", "pins", "fsutil", "schema", "__init__", "__main__", "__version__"}


def stage_of(module: str) -> str | None:
    """'deploy.serving.launch' -> 'serving'; 'deploy.errors' -> 'base'; anything else -> None."""
    parts = module.split(".")
    if parts[0] != "deploy":
        return None
    if len(parts) == 1:
        return "base"
    return "base" if parts[1] in BASE else parts[1]


def imported_modules(text: str, rel: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in a module's source; ``rel`` is its path under deploy/."""
    package = ".".join(("deploy", *rel.with_suffix("").parts[:-1]))
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from deploy import serving` names a stage, not the base
            if module == "deploy":
                found += [(node.lineno, f"deploy.{alias.name}") for alias in node.names]
    return found


def owner_of(rel: Path) -> str:
    if rel == Path("__main__.py"):  # `python -m deploy` is the CLI's entry point
        return "cli"
    return "base" if len(rel.parts) == 1 else rel.parts[0]


def violations(text: str, rel: Path) -> list[str]:
    own = owner_of(rel)
    rank = {stage: i for i, stage in enumerate(STAGES)}
    wrong = []
    for lineno, module in imported_modules(text, rel):
        target = stage_of(module)
        if target is None or target == own:
            continue
        if own == "base" and target != "base":
            wrong.append(f"line {lineno}: the base imports the stage {module}")
        elif target not in rank and target != "base":
            wrong.append(f"line {lineno}: {module} is in no stage listed in STAGES")
        elif target != "base" and own != "base" and rank[target] > rank[own]:
            wrong.append(f"line {lineno}: {own} imports the later stage {module}")
    return wrong


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts)


def test_every_module_lives_in_a_known_stage_or_the_base():
    for path in modules():
        rel = path.relative_to(PACKAGE)
        owner = owner_of(rel)
        assert (
            (owner == "base" and rel.stem in BASE)
            or (owner in STAGES and len(rel.parts) > 1)
            or owner == "cli"
        ), f"deploy/{rel}: put it in a stage folder listed in tests/test_layout.py STAGES, or in the base"


def test_every_stage_says_what_it_does():
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), f"deploy/{stage}/ has no __init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()) >= 2, f"deploy/{stage}/__init__.py: say what it does and exposes"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_pipeline(path: Path):
    rel = path.relative_to(PACKAGE)
    wrong = violations(path.read_text(), rel)
    assert not wrong, f"deploy/{rel}: " + "; ".join(wrong)


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        (
            "planning/memory.py",
            "def f():\n    from deploy.serving import launch\n",
            "later stage deploy.serving",
        ),
        ("planning/memory.py", "from deploy import checking\n", "later stage deploy.checking"),
        ("weights/mirror.py", "from ..demo import run\n", "later stage deploy.demo"),
        ("errors.py", "import deploy.hardware.profiles\n", "the base imports"),
    ],
)
def test_the_rule_catches_an_upward_import(rel: str, source: str, expected: str):
    found = violations(source, Path(rel))
    assert found and expected in found[0]


def test_the_rule_allows_downward_and_same_stage_imports():
    source = "from deploy.planning import contract\nfrom . import calls\nfrom deploy import errors\n"
    assert violations(source, Path("checking/suite.py")) == []
