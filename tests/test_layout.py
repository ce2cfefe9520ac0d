"""The package layout: stages are subpackages, and imports only point down the pipeline.

A module may import the base (the modules directly in ``deploy/``), its own stage and the stages before it;
the base imports only the base; ``deploy.cli`` sits on top and may import everything. No two modules import
each other (inside a stage too). Read from the source's ``import`` statements (function-level lazy imports
included), so no import can slip past by being deferred.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deploy"

#: The pipeline, earliest first. A new stage gets its own folder and a place in this list.
STAGES = [
    "engines",
    "routers",
    "catalog",
    "hardware",
    "calibration",
    "planning",
    "weights",
    "preflight",
    "monitoring",
    "serving",
    "targets",
    "checking",
    "fakes",
    "benchmark",
    "support",
    "releases",
    "demo",
    "ansible",
    "cli",
]
BASE = {
    "console",
    "constants",
    "deadline",
    "httpx_deadline",
    "errors",
    "pins",
    "fsutil",
    "schema",
    "secrets",
    "__init__",
    "__main__",
    "__version__",
}


def stage_of(module: str) -> str | None:
    """'deploy.serving.launch' -> 'serving'; 'deploy.errors' -> 'base'; anything else -> None."""
    parts = module.split(".")
    if parts[0] != "deploy":
        return None
    if len(parts) == 1:
        return "base"
    return "base" if parts[1] in BASE else parts[1]


def from_module(node: ast.ImportFrom, rel: Path) -> str:
    """The absolute name of the module a ``from ... import`` reads, relative ones resolved from ``rel``."""
    if not node.level:
        return node.module or ""
    package = ".".join(("deploy", *rel.with_suffix("").parts[:-1]))
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def imported_modules(text: str, rel: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in a module's source; ``rel`` is its path under deploy/."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, rel)
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


def module_name(rel: Path) -> str:
    """'serving/launch.py' -> 'deploy.serving.launch'; 'planning/__init__.py' -> 'deploy.planning'."""
    parts = rel.with_suffix("").parts
    return ".".join(("deploy", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def imports_graph(sources: dict[Path, str]) -> dict[str, set[str]]:
    """Module -> the modules of ``sources`` it imports (``from pkg import mod`` counts as importing mod)."""
    names = {module_name(rel) for rel in sources}
    graph = {}
    for rel, text in sources.items():
        found = {module for _, module in imported_modules(text, rel)}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom):
                found |= {f"{from_module(node, rel)}.{alias.name}" for alias in node.names}
        graph[module_name(rel)] = (found & names) - {module_name(rel)}
    return graph


def mutual_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} <-> {b}" for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ())
    )


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


def test_no_two_modules_import_each_other():
    graph = imports_graph({p.relative_to(PACKAGE): p.read_text() for p in modules()})
    assert graph["deploy.planning.contract"], "the graph found no import in deploy/planning/contract.py"
    assert not mutual_imports(graph), "modules that import each other: " + "; ".join(mutual_imports(graph))


def test_the_rule_catches_two_modules_that_import_each_other():
    sources = {
        Path("planning/contract.py"): "def f():\n    from deploy.planning.plan_schema import PLAN_SCHEMA\n",
        Path("planning/plan_schema.py"): "from . import contract\n",
        Path("planning/memory.py"): "from deploy.planning import contract\n",
    }
    assert mutual_imports(imports_graph(sources)) == [
        "deploy.planning.contract <-> deploy.planning.plan_schema"
    ]


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


def test_only_tests_and_tooling_import_the_fakes():
    """deploy/fakes/ holds test doubles: no module of the toolkit may import them (tests and scripts may)."""
    for path in modules():
        rel = path.relative_to(PACKAGE)
        if owner_of(rel) == "fakes":
            continue
        wrong = [m for _, m in imported_modules(path.read_text(), rel) if stage_of(m) == "fakes"]
        assert not wrong, f"deploy/{rel} imports the test doubles {', '.join(wrong)}"


def test_the_rule_allows_downward_and_same_stage_imports():
    source = "from deploy.planning import contract\nfrom . import calls\nfrom deploy import errors\n"
    assert violations(source, Path("checking/suite.py")) == []


def error_classes() -> dict[str, str]:
    """Every subclass of KimiDeployError in deploy/ (read from the source): ``module.Class`` -> its file."""
    bases: dict[str, tuple[str, list[str]]] = {}
    for path in modules():
        rel = path.relative_to(PACKAGE)
        module = ".".join(("deploy", *rel.with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                names = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
                bases[f"{module}.{node.name}"] = (str(rel), names)
    by_name = {qualified.rsplit(".", 1)[1]: qualified for qualified in bases}
    found: dict[str, str] = {}

    def is_error(qualified: str, seen: frozenset[str] = frozenset()) -> bool:
        if qualified.endswith(".KimiDeployError"):
            return True
        return any(
            n in by_name and by_name[n] not in seen and is_error(by_name[n], seen | {qualified})
            for n in bases[qualified][1]
        )

    for qualified, (rel, _) in bases.items():
        if is_error(qualified) and not qualified.endswith(".KimiDeployError"):
            found[qualified] = rel
    return found


def test_every_error_is_in_deploy_errors_with_its_exit_code():
    import importlib

    from deploy import errors

    found = error_classes()
    assert "deploy.errors.GateFailed" in found and "deploy.engines.builds.EngineInstallError" in found
    elsewhere = {q for q, rel in found.items() if rel != "errors.py"}
    assert elsewhere == set(errors.DEFINED_ELSEWHERE), (
        "define every KimiDeployError subclass in deploy/errors.py (or list it in DEFINED_ELSEWHERE): "
        + ", ".join(sorted(elsewhere ^ set(errors.DEFINED_ELSEWHERE)))
    )
    for qualified, code in errors.DEFINED_ELSEWHERE.items():
        module, name = qualified.rsplit(".", 1)
        assert getattr(importlib.import_module(module), name).exit_code == code, qualified


#: The longest a function in deploy/ may be (issue 20); past it, split the function into named steps.
MAX_FUNCTION_LINES = 100


def test_no_function_is_over_the_length_limit() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, "split into named steps: " + "; ".join(too_long)


def test_render_is_compose_then_write() -> None:
    """`render` resolves its inputs, composes the release as text and publishes it: a short function."""
    tree = ast.parse((PACKAGE / "serving" / "render.py").read_text())
    render = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "render")
    assert render.end_lineno - render.lineno + 1 < 60
