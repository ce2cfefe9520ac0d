"""Run the toolkit's playbooks through ansible-runner, with progress from its events and the final stats.

    >>> from deploy.ansible.runner import run_playbook
    >>> result = run_playbook("site.yml", "inventory.yml", tags=["plan"], check=True)
    >>> result.ok, result.changed
    (True, {'head': 0, 'worker': 0})

Each run gets a fresh private data dir (ansible-runner caches env files in it, and extra vars may
carry secrets), created 0700 and removed afterwards. The venv's ``bin`` goes first on PATH so the
``ansible-playbook`` beside this interpreter runs, not whichever one the shell finds.
"""

from __future__ import annotations

import difflib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.errors import AnsibleMissing, InputError

PLAYBOOKS_DIR = constants.PLAYBOOKS_DIR
STAT_KEYS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")


@dataclass
class PlaybookResult:
    """What a run did: ansible-runner's status and rc, and per-host counts from the final stats."""

    status: str
    rc: int
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_tasks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"

    @property
    def changed(self) -> dict[str, int]:
        return dict(self.stats.get("changed", {}))

    @property
    def total_changed(self) -> int:
        return sum(self.changed.values())

    def hosts(self) -> list[str]:
        names: set[str] = set()
        for per_host in self.stats.values():
            names.update(per_host)
        return sorted(names)


def resolve_playbook(name: str | Path) -> Path:
    """A playbook path as given, or a name under the toolkit's ``playbooks/`` (``site.yml``)."""
    given = Path(name)
    for candidate in (given, PLAYBOOKS_DIR / given):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(f"playbook {name}: not found (looked in . and {PLAYBOOKS_DIR})")


def resolve_inventory(spec: str) -> str:
    """An inventory file or directory (made absolute), or an inline host list such as ``host1,host2,``."""
    path = Path(spec)
    if path.exists():
        return str(path.resolve())
    if "," in spec:
        return spec
    raise InputError(f"inventory {spec}: no such file (give a file, a directory, or hosts as 'a,b,')")


def _cmdline(
    check: bool,
    diff: bool,
    extra_vars: Sequence[str],
    vault_password_file: str | None,
    verbosity: int,
    syntax_check: bool = False,
) -> str:
    args: list[str] = ["--syntax-check"] if syntax_check else []
    if check:
        args.append("--check")
    if diff:
        args.append("--diff")
    for value in extra_vars:
        args += ["--extra-vars", value]
    if vault_password_file:
        args += ["--vault-password-file", str(Path(vault_password_file).resolve())]
    if verbosity:
        args.append("-" + "v" * verbosity)
    return shlex.join(args)


def describe_event(event: dict[str, Any]) -> str | None:
    """One progress line for an ansible-runner event, or None for events not worth a line.

    Results of ``no_log`` tasks arrive already censored by Ansible, so nothing secret is printed."""
    kind = event.get("event", "")
    data = event.get("event_data", {}) or {}
    host = data.get("host", "")
    if kind == "playbook_on_play_start":
        return f"PLAY  {data.get('name') or data.get('play', '')}"
    if kind == "playbook_on_task_start":
        return f"TASK  {data.get('task', '')}"
    if kind == "runner_on_ok":
        res = data.get("res") or {}
        line = f"  {'changed' if res.get('changed') else 'ok'}: {host}"
        diff = format_diff(res) if res.get("changed") else ""
        return f"{line}\n{diff}" if diff else line
    if kind == "runner_on_failed" and not data.get("ignore_errors"):
        return f"  FAILED: {host}: {failure_message(data.get('res') or {})}"
    if kind == "runner_on_unreachable":
        return f"  UNREACHABLE: {host}: {(data.get('res') or {}).get('msg', '')}"
    return None


def format_diff(res: dict[str, Any], max_lines: int = 200) -> str:
    """A unified diff of what a task changed (``--diff``), from the before/after Ansible reports."""
    diffs = res.get("diff") or []
    if isinstance(diffs, dict):
        diffs = [diffs]
    out: list[str] = []
    for d in diffs:
        before, after = d.get("before"), d.get("after")
        if not isinstance(before, str) or not isinstance(after, str) or before == after:
            continue
        out += difflib.unified_diff(
            before.splitlines(),
            after.splitlines(),
            str(d.get("before_header", "before")),
            str(d.get("after_header", "after")),
            lineterm="",
        )
    if len(out) > max_lines:
        out = out[:max_lines] + [f"... ({len(out) - max_lines} more diff lines)"]
    return "\n".join(f"    {line}" for line in out)


def failure_message(res: dict[str, Any], max_lines: int = 60) -> str:
    """A failed task's msg followed by the tails of its stdout and stderr (a command's own report)."""
    parts = [str(res.get("msg", "") or "").strip() or "failed"]
    for stream in ("stdout", "stderr"):
        text = str(res.get(stream, "") or "").rstrip()
        if text and text not in parts[0]:
            parts.append("\n".join(text.splitlines()[-max_lines:]))
    return "\n".join(parts)


def failure_summary(res: dict[str, Any]) -> str:
    """One line for a failed task: the last line a failed command printed on stderr, else the msg."""
    for line in reversed(str(res.get("stderr", "") or "").splitlines()):
        if line.strip():
            return line.strip()
    return str(res.get("msg", "") or "failed").strip().splitlines()[0]


def _stats_from(runner: Any) -> dict[str, dict[str, int]]:
    raw = runner.stats or {}
    return {key: dict(raw.get(key, {}) or {}) for key in STAT_KEYS}


def run_playbook(
    playbook: str | Path,
    inventory: str,
    *,
    tags: Sequence[str] = (),
    skip_tags: Sequence[str] = (),
    limit: str | None = None,
    check: bool = False,
    diff: bool = False,
    extra_vars: Sequence[str] = (),
    vault_password_file: str | None = None,
    verbosity: int = 0,
    syntax_check: bool = False,
    on_line: Callable[[str], None] | None = None,
) -> PlaybookResult:
    """Run ``playbook`` against ``inventory`` with ansible-runner; ``on_line`` receives progress lines."""
    try:
        import ansible_runner  # imported here: the ansible extra is optional for the other verbs
    except ImportError:
        raise AnsibleMissing(
            "the ansible extra is not installed: pip install 'kimi-deploy[ansible]' "
            "(ansible-core and ansible-runner)"
        ) from None

    book = resolve_playbook(playbook)
    inv = resolve_inventory(inventory)
    venv_bin = str(Path(sys.executable).parent)
    envvars = {
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_ROLES_PATH": str(book.parent / "roles"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    failed: list[str] = []

    def handle(event: dict[str, Any]) -> bool:
        if event.get("event") == "runner_on_failed" and not (event.get("event_data") or {}).get(
            "ignore_errors"
        ):
            data = event["event_data"]
            failed.append(f"{data.get('host')}: {data.get('task')}: {failure_summary(data.get('res') or {})}")
        line = describe_event(event)
        if line and on_line:
            on_line(line)
        # Only the stats event goes to disk (runner.stats reads it): task results may hold values a
        # user wants kept private, and the data dir is removed at the end anyway.
        return event.get("event") == "playbook_on_stats"

    data_dir = tempfile.mkdtemp(prefix="kimi-ansible-")
    try:
        runner = ansible_runner.run(
            private_data_dir=data_dir,
            playbook=str(book),
            inventory=inv,
            envvars=envvars,
            tags=",".join(tags) or None,
            skip_tags=",".join(skip_tags) or None,
            limit=limit,
            cmdline=_cmdline(check, diff, extra_vars, vault_password_file, verbosity, syntax_check) or None,
            event_handler=handle,
            quiet=True,
        )
        return PlaybookResult(
            status=runner.status,
            rc=int(runner.rc if runner.rc is not None else 1),
            stats=_stats_from(runner),
            failed_tasks=failed,
        )
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def format_recap(result: PlaybookResult) -> str:
    """The final stats as a PLAY RECAP-style table, one line per host."""
    lines = ["RECAP"]
    for host in result.hosts():
        counts = "  ".join(f"{key}={result.stats.get(key, {}).get(host, 0)}" for key in STAT_KEYS)
        lines.append(f"  {host:<20} {counts}")
    return "\n".join(lines)
