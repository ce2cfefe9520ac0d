"""The docs site (mkdocs.yml, docs/) and the README as its front door.

The site is built with ``mkdocs build --strict`` (a broken link or anchor, a page missing from ``nav``, a
snippet that does not exist, a verb that fails to import: all fail the build); the command output the pages
show is compared with a fresh run (``scripts/docs_snippets.py --check``); the generated CLI reference holds
every verb and subcommand the lazy group lists.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import click
import pytest
import yaml

from deploy.cli import cli
from deploy.cli.commands import VERB_MODULES, load_command
from deploy.planning import contract

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    problems = [ln for ln in proc.stderr.splitlines() if not ln.startswith("INFO")]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems[-40:])
    return out


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use !ENV / !relative tags; this test only reads nav
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)


def test_site_builds_strictly_with_every_page_in_nav(site: Path) -> None:
    pages = _nav_pages(_mkdocs_config()["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "snippets" not in p.parts)
    assert sorted(pages) == on_disk, "every page under docs/ must be listed in mkdocs.yml nav, and only those"
    for page in pages:
        html = site / page.replace(".md", ".html")
        assert html.is_file(), f"{page} was not built"
        assert "--8&lt;--" not in html.read_text() and "--8<--" not in html.read_text(), (
            f"{page}: a snippet include was not expanded"
        )


def _commands(command: click.Command, ctx: click.Context, prefix: str) -> dict[str, click.Command]:
    names = {prefix: command}
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{prefix} {name}: listed but not loadable"
            names.update(_commands(sub, click.Context(sub, parent=ctx, info_name=name), f"{prefix} {name}"))
    return names


def test_cli_reference_has_every_verb_and_subcommand(site: Path) -> None:
    html = (site / "reference" / "cli.html").read_text()
    text = " ".join(unescape(re.sub(r"<[^>]+>", "", html)).split())  # what a reader sees
    expected = _commands(cli, click.Context(cli, info_name="kimi-deploy"), "kimi-deploy")
    assert len(expected) > len(VERB_MODULES), "the subcommands of mirror/engine are missing from the walk"
    for verb in VERB_MODULES:
        assert f"kimi-deploy {verb}" in expected
    for name, command in expected.items():
        anchor = "-".join(name.split())
        assert f'id="{anchor}"' in html, f"{name} is missing from the generated CLI reference"
        # its help, as --help prints it: placeholders such as launch-<node>.sh escaped, not eaten as HTML
        first = " ".join(inspect.cleandoc(command.help or "").splitlines()[0].replace("`", "").split())
        assert first in text, f"{name}: help {first!r} not shown in the CLI reference"
    # the reference is the commands' own help, not a copy: every option of `plan` is there
    for param in load_command("plan").params:  # type: ignore[union-attr]
        for opt in getattr(param, "opts", []):
            assert opt in html, f"plan {opt} missing from the CLI reference"


def test_committed_snippets_match_a_fresh_run() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs_snippets.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]


def test_every_snippet_file_is_used_and_every_include_exists() -> None:
    snippets = {p.name for p in (DOCS / "snippets").iterdir()}
    used: set[str] = set()
    for page in DOCS.rglob("*.md"):
        if "snippets" in page.parts:
            continue
        for name in re.findall(r'--8<-- "([^":]+)', page.read_text()):
            if (ROOT / name).exists():
                continue
            assert name in snippets, f"{page.relative_to(ROOT)} includes {name}, which does not exist"
            used.add(name)
    assert snippets - used == set(), f"snippet files no page includes: {sorted(snippets - used)}"


def test_plan_json_reference_names_every_field() -> None:
    text = (DOCS / "reference" / "plan-json.md").read_text()
    classes = (
        contract.Plan,
        contract.Candidate,
        contract.Memory,
        contract.Weights,
        contract.Fleet,
        contract.Replica,
    )
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in text, f"plan.json reference does not describe {cls.__name__}.{f.name}"


def test_readme_is_the_front_door() -> None:
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines; move details into docs/"
    assert "make demo" in text and "make test" in text
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
    # every how-to guide is reachable from the README
    for guide in (DOCS / "how-to").glob("*.md"):
        assert f"docs/how-to/{guide.name}" in text, f"README does not link docs/how-to/{guide.name}"
