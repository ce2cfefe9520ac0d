"""The toolkit installed from its wheel, outside the checkout: its data comes from the package, not the tree.

Builds the wheel from a copy of the sources, installs it with its dependencies into a fresh venv, and runs
`plan`, `render` and `ansible --syntax-check` from an unrelated directory. Slow: a venv and a wheel build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__", ".kimi-deploy"
)


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=IGNORED, symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_DEPLOY_", "PYTHON"))}
    env["KIMI_DEPLOY_CACHE"] = os.environ.get(
        "KIMI_DEPLOY_CACHE", str(Path.home() / ".cache" / "kimi-deploy")
    )
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(src)],
        root,
        env,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("kimi_deploy-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[ansible]"], root, env)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, env


def test_the_wheel_carries_profiles_templates_and_playbooks(installed, tmp_path: Path):
    venv, env = installed
    where = run(
        [str(venv / "bin" / "python"), "-c", "import deploy.constants as c; print(c.DATA_ROOT)"],
        tmp_path,
        env,
    )
    data_root = Path(where.stdout.strip())
    assert data_root.is_relative_to(venv), f"data found at {data_root}, not in the installed package"
    for name in (
        "hardware/h200x8.yaml",
        "hardware/gpus.yaml",
        "templates/launch.sh.j2",
        "playbooks/site.yml",
    ):
        assert (data_root / name).is_file(), name
    assert (data_root.parent / "catalog" / "kimi-k2.5.yaml").is_file()
    assert (data_root.parent / "planning" / "capacity_points.yaml").is_file()
    assert (data_root.parent / "data" / "chat_templates").is_dir()


def test_plan_render_and_syntax_check_from_any_directory(installed, tmp_path: Path):
    venv, env = installed
    kd = str(venv / "bin" / "kimi-deploy")
    planned = run([kd, "plan", "--hardware", "h200x8", "-o", "plan.json"], tmp_path, env)
    assert planned.returncode == 0, planned.stderr
    assert (tmp_path / "plan.json").is_file()
    rendered = run([kd, "render", "--plan", "plan.json", "--out", "rendered"], tmp_path, env)
    assert rendered.returncode == 0, rendered.stderr
    assert list((tmp_path / "rendered").glob("launch-*.sh")), sorted(
        p.name for p in (tmp_path / "rendered").iterdir()
    )
    syntax = run([kd, "ansible", "--syntax-check", "-i", "localhost,"], tmp_path, env)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    assert "syntax ok" in syntax.stdout and str(venv) in syntax.stdout


def test_a_broken_playbook_fails_the_syntax_check(installed, tmp_path: Path):
    venv, env = installed
    (tmp_path / "broken.yml").write_text("- hosts: all\n  tasks:\n    - nosuchmodule_xyz: {}\n")
    syntax = run(
        [str(venv / "bin" / "kimi-deploy"), "ansible", "broken.yml", "--syntax-check", "-i", "localhost,"],
        tmp_path,
        env,
    )
    assert syntax.returncode != 0
    assert "Traceback" not in syntax.stderr
