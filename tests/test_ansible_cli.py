"""`kimi-deploy ansible`: real ansible-runner runs of small playbooks on localhost, and bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ansible_support as support
import yaml

from deploy.ansible import runner as ansible


def _playbook(path: Path, tasks: list[dict]) -> Path:
    play = [{"name": "probe", "hosts": "all", "gather_facts": False, "tasks": tasks}]
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def _inventory(path: Path) -> Path:
    return support.write_inventory(
        path,
        {"localhost": {}},
        {},
        {"ansible_connection": "local", "ansible_python_interpreter": support.SYSTEM_PYTHON},
    )


def _kd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([support.KD, *args], capture_output=True, text=True, timeout=120)


def test_changes_are_counted_and_reported(tmp_path: Path) -> None:
    marker = tmp_path / "made"
    book = _playbook(
        tmp_path / "p.yml",
        [
            {
                "name": "make a file",
                "ansible.builtin.file": {
                    "path": str(marker),
                    "state": "touch",
                    "modification_time": "preserve",
                    "access_time": "preserve",
                },
            },
            {"name": "read it", "ansible.builtin.stat": {"path": str(marker)}},
        ],
    )
    inv = _inventory(tmp_path / "inv.yml")
    first = _kd("ansible", str(book), "-i", str(inv))
    assert first.returncode == 0, first.stderr
    assert "TASK  make a file" in first.stdout and "changed: localhost" in first.stdout
    assert "changed: 1 task(s) on 1 host(s)" in first.stdout
    second = ansible.run_playbook(book, str(inv))
    assert second.ok and second.total_changed == 0 and second.stats["ok"] == {"localhost": 2}
    dry = _kd("ansible", str(book), "-i", str(inv), "--check")
    assert "would change: 0 task(s)" in dry.stdout


def test_failed_task_gives_ansible_exit_code_and_its_message(tmp_path: Path) -> None:
    book = _playbook(
        tmp_path / "p.yml", [{"name": "refuse", "ansible.builtin.fail": {"msg": "no GPU on this node"}}]
    )
    done = _kd("ansible", str(book), "-i", str(_inventory(tmp_path / "inv.yml")))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: playbook")
    assert "refuse: no GPU on this node" in done.stderr
    assert "FAILED: localhost: no GPU on this node" in done.stdout
    assert "Traceback" not in done.stderr


def test_tags_select_stages(tmp_path: Path) -> None:
    book = _playbook(
        tmp_path / "p.yml",
        [
            {"name": "planned", "ansible.builtin.debug": {"msg": "p"}, "tags": ["plan"]},
            {"name": "rendered", "ansible.builtin.debug": {"msg": "r"}, "tags": ["render"]},
        ],
    )
    done = _kd("ansible", str(book), "-i", str(_inventory(tmp_path / "inv.yml")), "--tags", "render")
    assert done.returncode == 0
    assert "TASK  rendered" in done.stdout and "TASK  planned" not in done.stdout


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    missing_book = _kd("ansible", str(tmp_path / "nope.yml"), "-i", str(tmp_path))
    assert missing_book.returncode == 2
    assert (
        missing_book.stderr.strip() == f"error: playbook {tmp_path / 'nope.yml'}: not found "
        f"(looked in . and {ansible.PLAYBOOKS_DIR})"
    )
    missing_inv = _kd("ansible", "site.yml", "-i", str(tmp_path / "inv.yml"))
    assert missing_inv.returncode == 2
    assert missing_inv.stderr.strip().startswith(f"error: inventory {tmp_path / 'inv.yml'}: no such file")


def test_site_playbook_and_roles_resolve() -> None:
    book = ansible.resolve_playbook("site.yml")
    assert book == (ansible.PLAYBOOKS_DIR / "site.yml").resolve()
    plays = yaml.safe_load(book.read_text())
    stage_tags = [tag for play in plays for tag in play["tags"]]
    for stage in ("inventory", "plan", "preflight", "download", "render", "up", "check"):
        assert stage in stage_tags
    # pre-flight comes with download and up, before them, and can be skipped alone
    first_download = next(i for i, play in enumerate(plays) if "download" in play["tags"])
    assert "preflight" in plays[first_download]["tags"] and "up" in plays[first_download]["tags"]
    roles = {r["role"] for play in plays for r in play.get("roles") or []}
    for role in roles:
        for part in ("defaults/main.yml", "tasks/main.yml", "meta/main.yml", "meta/argument_specs.yml"):
            assert (ansible.PLAYBOOKS_DIR / "roles" / role / part).is_file(), f"{role}/{part}"
    # workers start before the head, a fleet's router after both
    up_hosts = [play["hosts"] for play in plays if "up" in play["tags"] and "preflight" not in play["tags"]]
    assert up_hosts == ["kimi_workers", "kimi_head", "kimi_head:kimi_workers"]


def test_check_diff_shows_the_change_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "settings.conf"
    target.write_text("port = 8000\n")
    copy = {"name": "set the port", "ansible.builtin.copy": {"content": "port = 8001\n", "dest": str(target)}}
    book = _playbook(tmp_path / "p.yml", [copy])
    dry = _kd("ansible", str(book), "-i", str(_inventory(tmp_path / "inv.yml")), "--check", "--diff")
    assert dry.returncode == 0, dry.stderr
    assert "    -port = 8000" in dry.stdout and "    +port = 8001" in dry.stdout
    assert "would change: 1 task(s)" in dry.stdout
    assert target.read_text() == "port = 8000\n"


def test_site_without_toolkit_or_source_says_what_to_set(tmp_path: Path) -> None:
    inv = support.write_inventory(
        tmp_path / "inv.yml",
        {"localhost": {}},
        {},
        {
            "ansible_connection": "local",
            "ansible_python_interpreter": support.SYSTEM_PYTHON,
            "kimi_venv": str(tmp_path / "no-venv"),
            "kimi_home": str(tmp_path / "kimi"),
        },
    )
    done = _kd("ansible", "site.yml", "-i", str(inv), "--tags", "inventory")
    assert done.returncode == 2
    assert (
        f"localhost: no kimi-deploy in {tmp_path / 'no-venv'} (missing); set kimi_toolkit_source"
        in done.stderr
    )
    assert not (tmp_path / "no-venv").exists()
