"""The upgrade journal: what `upgrade`/`rollback` is doing, written atomically at every step.

    >>> from deploy.releases import journal
    >>> j = journal.begin(".kimi-deploy", "upgrade", root="rendered", from_release="a-1", to_release=None)
    >>> journal.step(".kimi-deploy", j, "weights")                 # doctest: +SKIP
    >>> journal.load(".kimi-deploy").step                          # doctest: +SKIP
    'weights'

``<state>/upgrade.json`` holds the last operation; ``<state>/upgrades.json`` the finished ones (newest last,
bounded). A journal whose status is ``running`` and whose process is gone was interrupted (SIGKILL, a
crash, a reboot): the next `upgrade`, `rollback` or `up` recovers it (deploy.releases.upgrade.recover).
An flock on ``<state>/upgrade.lock`` keeps two operations from running at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import KimiDeployError, PlanError, UpgradeBusy
from deploy.fsutil import atomic_write_json, read_json
from deploy.schema import validate
from deploy.serving import release_dir, supervise

JOURNAL = "upgrade.json"
FINISHED = "upgrades.json"
LOCK = "upgrade.lock"
SCHEMA = 1
RUNNING = "running"
DONE = "done"
ROLLED_BACK = "rolled_back"
ABORTED = "aborted"  # failed before the old release was stopped: it kept serving
FAILED = "failed"  # could not put the old release back: needs an operator
#: Steps after which the old release is no longer (known to be) serving: recovery must roll back.
SWITCHING_STEPS = ("stop-old", "switch", "start-new", "check", "bench", "roll", "rollback")
KEEP_FINISHED = 50


_RELEASE = {"type": ["string", "null"], "pattern": release_dir._ID.pattern}
_TEXT = {"type": ["string", "null"], "maxLength": 4096}
#: ``<state>/upgrade.json``: recovery acts on what it names (releases, a pid to wait for), so every field is
#: checked before use; release names follow ``release_dir.check_id`` and cannot leave the rendered folder.
JOURNAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "id", "op", "root", "from_release", "to_release"],
    "properties": {
        "schema": {"const": SCHEMA},
        "id": {"type": "string", "pattern": r"^[0-9a-f]{1,32}\Z"},
        "op": {"enum": ["upgrade", "rollback"]},
        "root": {"type": "string", "minLength": 1, "maxLength": 4096},
        "from_release": _RELEASE,
        "to_release": _RELEASE,
        "status": {"enum": [RUNNING, DONE, ROLLED_BACK, ABORTED, FAILED]},
        "step": {"type": "string", "maxLength": 64},
        "pid": {"type": "integer", "minimum": 0},
        "plan": _TEXT,
        "cause": _TEXT,
        "exit_code": {"type": "integer", "minimum": 0, "maximum": 255},
        "started_unix": {"type": "number", "minimum": 0},
        "updated_unix": {"type": "number", "minimum": 0},
        "steps": {"type": "array", "items": {"type": "object"}},
        "nodes": {"type": "array", "items": {"type": "string", "maxLength": 64}},
    },
}


@dataclass
class Journal:
    """One `upgrade` or `rollback`: where it is, what it goes from and to, and how it ended."""

    id: str
    op: str
    root: str
    from_release: str | None
    to_release: str | None
    status: str = RUNNING
    step: str = "begin"
    pid: int = 0
    plan: str | None = None
    cause: str | None = None
    exit_code: int = 0
    started_unix: float = 0.0
    updated_unix: float = 0.0
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: the nodes of the deployment this machine runs (restarted on a switch; [] = the head)
    nodes: list[str] = field(default_factory=list)
    schema: int = SCHEMA

    @property
    def interrupted(self) -> bool:
        """Running according to the file, but its process is gone."""
        return self.status == RUNNING and not supervise.pid_alive(self.pid)


def _path(state_dir: str | Path) -> Path:
    return Path(state_dir) / JOURNAL


def load(state_dir: str | Path) -> Journal | None:
    """The last operation's journal, or None."""
    path = _path(state_dir)
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except ValueError:
        raise PlanError(f"{path}: not valid JSON (an upgrade journal; inspect it, then remove it)") from None
    validate(data, JOURNAL_SCHEMA, str(path), PlanError)
    known = Journal.__dataclass_fields__
    return Journal(**{k: v for k, v in data.items() if k in known})


def save(state_dir: str | Path, j: Journal) -> None:
    j.updated_unix = round(time.time(), 3)
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(_path(state_dir), asdict(j), mode=0o600)


def begin(
    state_dir: str | Path,
    op: str,
    *,
    root: str | Path,
    from_release: str | None,
    to_release: str | None,
    plan: str | None = None,
    nodes: list[str] | None = None,
) -> Journal:
    now = round(time.time(), 3)
    j = Journal(
        id=uuid.uuid4().hex[:12],
        op=op,
        root=str(root),
        from_release=from_release,
        to_release=to_release,
        pid=os.getpid(),
        plan=plan,
        started_unix=now,
        nodes=list(nodes or []),
    )
    j.steps.append({"step": "begin", "at_unix": now})
    save(state_dir, j)
    return j


def step(state_dir: str | Path, j: Journal, name: str, **detail: Any) -> None:
    """Record that ``name`` starts now (before doing it, so an interruption names the step it was in)."""
    j.step = name
    j.steps.append({"step": name, "at_unix": round(time.time(), 3), **detail})
    save(state_dir, j)


def finish(
    state_dir: str | Path, j: Journal, status: str, cause: str | None = None, exit_code: int = 0
) -> None:
    """Close the journal with ``status`` and append it to the finished ones."""
    j.status, j.cause, j.exit_code = status, cause, exit_code
    j.steps.append({"step": status, "at_unix": round(time.time(), 3)})
    save(state_dir, j)
    path = Path(state_dir) / FINISHED
    done: list[Any] = []
    with contextlib.suppress(OSError, ValueError):
        loaded = read_json(path)
        done = loaded if isinstance(loaded, list) else []
    done = [d for d in done if isinstance(d, dict) and d.get("id") != j.id] + [asdict(j)]
    atomic_write_json(path, done[-KEEP_FINISHED:], mode=0o600)


def finished(state_dir: str | Path) -> list[dict[str, Any]]:
    """The finished operations, oldest first."""
    with contextlib.suppress(OSError, ValueError):
        loaded = read_json(Path(state_dir) / FINISHED)
        return [d for d in loaded if isinstance(d, dict)] if isinstance(loaded, list) else []
    return []


@contextlib.contextmanager
def exclusive(state_dir: str | Path) -> Iterator[None]:
    """Hold the state dir's upgrade lock; UpgradeBusy when another operation holds it."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(state_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            j = None
            with contextlib.suppress(KimiDeployError):
                j = load(state_dir)
            who = f" ({j.op} pid {j.pid}, step {j.step})" if j and j.status == RUNNING else ""
            raise UpgradeBusy(f"another upgrade or rollback is running on {state_dir}{who}") from None
        yield
    finally:
        os.close(fd)


__all__ = [
    "ABORTED",
    "DONE",
    "FAILED",
    "Journal",
    "ROLLED_BACK",
    "RUNNING",
    "UpgradeBusy",
    "begin",
    "exclusive",
    "finish",
    "finished",
    "load",
    "save",
    "step",
]
