"""Releases on disk: where `render` writes, and the ``current`` link that says which one runs.

    >>> from deploy.serving import release_dir
    >>> release_dir.current_id("rendered")                  # doctest: +SKIP
    'demo-llama.cpp-3f2a9c1d04be'
    >>> release_dir.resolve("rendered")                     # doctest: +SKIP
    PosixPath('/srv/kimi/rendered/releases/demo-llama.cpp-3f2a9c1d04be')

Layout of a rendered folder (``render --out DIR``)::

    DIR/releases/<id>/        one release: plan.json, release.json, the rendered files, reports/
    DIR/current -> releases/<id>   the release that runs (switched atomically: new link, then rename)
    DIR/<file> -> current/<file>   one stable link per rendered file, so DIR/launch-<node>.sh, the units'
                                   paths and older readers of DIR/manifest.json follow ``current``
    DIR/history.json          every switch of ``current``, oldest first (what `rollback` goes back to)

``<id>`` is content-addressed: a digest of what the release is made from (the plan's candidate, the render
options, the weights lock's commit, the toolkit version), so rendering the same inputs twice gives the same
release. A folder without ``current`` (rendered by an older toolkit) is read as one flat release.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import schema
from deploy.errors import InputError, KimiDeployError, PlanError
from deploy.fsutil import atomic_write_json, atomic_write_text, read_json
from deploy.monitoring import promtool
from deploy.schema import validate
from deploy.serving import manifest_schema

RELEASES = "releases"
CURRENT = "current"
HISTORY = "history.json"
RELEASE_META = "release.json"
PLAN_COPY = "plan.json"
REPORTS = "reports"
MANIFEST = "manifest.json"
#: The folder of a release with prometheus.yml, rules and dashboards (deploy.monitoring).
MONITORING = "monitoring"
RELEASE_SCHEMA = 1
#: Releases kept by `render` besides ``current`` and the one before it (``render --keep``).
DEFAULT_KEEP = 3
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}\Z")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def release_id(label: str, material: dict[str, Any]) -> str:
    """``<label>-<12 hex>``: the digest of ``material`` (canonical JSON), the label made name-safe.

    >>> release_id("demo llama.cpp", {"a": 1}) == release_id("demo llama.cpp", {"a": 1})
    True
    >>> release_id("demo llama.cpp", {"a": 1}).startswith("demo-llama.cpp-")
    True
    """
    digest = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()
    name = _UNSAFE.sub("-", label).strip("-.")[:60] or "release"
    return f"{name}-{digest[:12]}"


def check_id(rid: str) -> str:
    if not _ID.match(rid) or ".." in rid:
        raise InputError(f"release {rid!r}: not a release name")
    return rid


def release_path(root: str | Path, rid: str) -> Path:
    return Path(root) / RELEASES / check_id(rid)


def is_release(folder: str | Path) -> bool:
    return (Path(folder) / RELEASE_META).is_file()


def root_of(release: str | Path) -> Path:
    """The rendered folder a release lives in (``DIR`` for ``DIR/releases/<id>``)."""
    p = Path(release).resolve()
    if p.parent.name != RELEASES:
        raise PlanError(f"{release}: not a release folder (expected <rendered>/{RELEASES}/<id>)")
    return p.parent.parent


def current_id(root: str | Path) -> str | None:
    """The release ``DIR/current`` points at, or None (no release yet, or an old flat folder)."""
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def resolve(rendered: str | Path) -> Path:
    """The folder holding the rendered files that run: ``DIR/current``'s release, else ``DIR`` itself."""
    rendered = Path(rendered)
    link = rendered / CURRENT
    if link.is_symlink() and link.resolve().is_dir():
        return link.resolve()
    return rendered


def _replace_link(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` atomically: a new link under a temporary name, renamed over the old."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _manifest_files(release: Path) -> list[str]:
    """The top-level names of a release's files (a file, or the folder a file is in, e.g. ``monitoring``)."""
    try:
        data = read_json(release / MANIFEST)
    except (OSError, ValueError):
        return []
    names = list((data.get("files") or {}) if isinstance(data, dict) else ())
    top = {n.split("/", 1)[0] for n in names if isinstance(n, str) and n}
    top -= {CURRENT, RELEASES, HISTORY, "", ".", ".."}
    return sorted(top) + [MANIFEST]


#: ``DIR/history.json``: release names follow ``check_id``, so a name read back can never leave ``DIR``.
HISTORY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["switches"],
    "properties": {
        "switches": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["release"],
                "properties": {
                    "release": {"type": "string", "pattern": _ID.pattern},
                    "at_unix": {"type": "number", "minimum": 0},
                    "reason": {"type": "string", "maxLength": 200},
                },
            },
        }
    },
}


def read_history(root: str | Path) -> list[dict[str, Any]]:
    """Every switch of ``current``, oldest first: ``[{"release", "at_unix", "reason"}, ...]``."""
    path = Path(root) / HISTORY
    try:
        data = read_json(path)
    except FileNotFoundError:
        return []
    except ValueError:
        raise PlanError(f"{path}: not valid JSON (restore it or remove it)") from None
    validate(data, HISTORY_SCHEMA, str(path), PlanError)
    return data["switches"]


def switch_current(root: str | Path, rid: str, reason: str = "render") -> str | None:
    """Make release ``rid`` the one that runs; returns the previous ``current`` (None if there was none).

    The ``current`` link is replaced atomically, then the per-file links of ``DIR`` are made to match the new
    release's manifest (new names linked, names it no longer has removed), and the switch is appended to
    ``DIR/history.json``. Switching to the release already current records nothing.
    """
    root = Path(root)
    target = release_path(root, rid)
    if not is_release(target):
        raise PlanError(f"{target}: no such release (no {RELEASE_META})")
    previous = current_id(root)
    old_names = set(_manifest_files(release_path(root, previous))) if previous else set()
    _replace_link(root / CURRENT, f"{RELEASES}/{rid}")
    new_names = _manifest_files(target)
    for name in new_names:
        link = root / name
        if not (link.is_symlink() and os.readlink(link) == f"{CURRENT}/{name}"):
            _replace_link(link, f"{CURRENT}/{name}")
    for name in old_names - set(new_names):
        link = root / name
        if link.is_symlink():
            link.unlink()
    if previous != rid:
        history = read_history(root)
        history.append({"release": rid, "at_unix": round(time.time(), 3), "reason": reason})
        atomic_write_json(root / HISTORY, {"switches": history[-200:]})
    return previous


def failed(release: str | Path) -> bool:
    """Whether the release's last start failed its gate and was rolled back (``reports/outcome.json``)."""
    with contextlib.suppress(OSError, ValueError):
        data = read_json(Path(release) / REPORTS / "outcome.json")
        return isinstance(data, dict) and data.get("ok") is False
    return False


def previous_id(root: str | Path) -> str | None:
    """The release that was current before the current one (what `rollback` switches to), if still on disk;
    a release whose last start failed and was rolled back is passed over."""
    now = current_id(root)
    for entry in reversed(read_history(root)):
        rid = entry["release"]
        path = release_path(root, rid)
        if rid != now and is_release(path) and not failed(path):
            return rid
    return None


def list_releases(root: str | Path) -> list[str]:
    """Release ids on disk, most recently made current (or rendered) first."""
    folder = Path(root) / RELEASES
    if not folder.is_dir():
        return []
    order = {e["release"]: i for i, e in enumerate(read_history(root))}
    ids = [p.name for p in folder.iterdir() if is_release(p)]
    return sorted(
        ids, key=lambda r: (order.get(r, -1), (folder / r / RELEASE_META).stat().st_mtime), reverse=True
    )


def read_release(release: str | Path) -> dict[str, Any]:
    """``release.json`` of a release folder (schema-checked)."""
    path = Path(release) / RELEASE_META
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise PlanError(f"{path}: not found (not a release folder)") from None
    except ValueError:
        raise PlanError(f"{path}: not valid JSON") from None
    if (
        not isinstance(data, dict)
        or data.get("schema") != RELEASE_SCHEMA
        or not isinstance(data.get("id"), str)
    ):
        raise PlanError(f"{path}: not a release description (schema {RELEASE_SCHEMA})")
    return data


def prune(root: str | Path, keep: int, protect: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Remove releases beyond the ``keep`` most recent; ``current``, the one before it and ``protect`` stay.

    Returns the removed ids."""
    if keep < 1:
        raise InputError(f"--keep {keep}: keep at least 1 release")
    root = Path(root)
    stay = {r for r in (current_id(root), previous_id(root), *protect) if r}
    removed = []
    for rid in list_releases(root)[keep:]:
        if rid in stay:
            continue
        shutil.rmtree(release_path(root, rid), ignore_errors=True)
        removed.append(rid)
    return removed


def write_report(release: str | Path, name: str, report: dict[str, Any]) -> Path:
    """Store a report of the release's last start (``check``, ``bench``) as ``reports/<name>.json``."""
    if not re.match(r"^[a-z][a-z0-9_-]{0,40}$", name):
        raise InputError(f"report name {name!r}: lowercase letters, digits, '-' or '_'")
    folder = Path(release) / REPORTS
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(folder / f"{name}.json", report)


def read_report(release: str | Path, name: str) -> dict[str, Any] | None:
    path = Path(release) / REPORTS / f"{name}.json"
    with contextlib.suppress(FileNotFoundError):
        try:
            data = read_json(path)
        except ValueError:
            raise PlanError(f"{path}: not valid JSON") from None
        return data if isinstance(data, dict) else None
    return None


# --------------------------------------------------------------------------- writing a composed release


@dataclass(frozen=True)
class RenderedFile:
    """One file of a release as composed (deploy.serving.render.compose_release): its text and its mode."""

    text: str
    mode: int = 0o644

    @property
    def sha256(self) -> str:
        """The digest of the bytes written (UTF-8)."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def json_file(data: Any, mode: int = 0o644) -> RenderedFile:
    """``data`` as deploy.fsutil.atomic_write_json writes it."""
    return RenderedFile(json.dumps(data, indent=2, sort_keys=False) + "\n", mode)


@dataclass
class Published:
    """What `publish` did: the release folder, the files written (their stable names under the rendered
    folder once ``current`` switched), promtool's results and the releases pruned."""

    path: Path
    files: list[Path]
    promtool: list[promtool.PromtoolResult] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)


def remove_stale(release: Path, keep: set[str]) -> None:
    """Files a previous render listed in its manifest and this one does not write (a node fewer)."""
    try:
        old = schema.load_json(release / MANIFEST, manifest_schema.MANIFEST_SCHEMA)
    except InputError:
        return  # none, or not ours: nothing is removed on its word
    for name in (old.get("files") or {}) if isinstance(old, dict) else ():
        if not isinstance(name, str) or name in keep or name == MANIFEST:
            continue
        parts = Path(name).parts
        if len(parts) == 1 or (parts[0] == MONITORING and ".." not in parts and not Path(name).is_absolute()):
            (release / name).unlink(missing_ok=True)


def write_meta(release: Path, meta: Mapping[str, Any]) -> Path:
    """``release.json``: ``meta`` after its schema, id and creation time (kept from an earlier write of the
    same release, so rendering the same inputs again does not make it newer)."""
    previous: dict[str, Any] = {}
    with contextlib.suppress(KimiDeployError):
        previous = read_release(release)
    return atomic_write_json(
        release / RELEASE_META,
        {
            "schema": RELEASE_SCHEMA,
            "id": release.name,
            "created_unix": previous.get("created_unix") or round(time.time(), 3),
            **meta,
        },
    )


def publish(
    root: str | Path,
    rid: str,
    files: Mapping[str, RenderedFile],
    meta: Mapping[str, Any],
    *,
    check_monitoring: bool = False,
    switch: bool = True,
    keep: int = DEFAULT_KEEP,
    reason: str = "render",
) -> Published:
    """Write a composed release into ``root/releases/<rid>`` and (``switch``) make it ``current``.

    The files its manifest lists are written first (atomically, each with its mode; files an earlier render
    of the same release listed and this one has not are removed), then promtool checks the monitoring files
    (``check_monitoring``; a failure stops here), then ``manifest.json``, ``plan.json`` and ``release.json``:
    a folder without them is no release. Switching ``current`` prunes releases beyond ``keep``."""
    root = Path(root)
    rel = release_path(root, rid)
    rel.mkdir(parents=True, exist_ok=True)
    listed = {name: f for name, f in files.items() if name not in (MANIFEST, PLAN_COPY)}
    remove_stale(rel, set(listed))
    written = [atomic_write_text(rel / name, f.text, mode=f.mode) for name, f in listed.items()]
    checked = promtool.check_dir(rel / MONITORING, unit_tests=False) if check_monitoring else []
    promtool.require_ok(checked)
    for name in (MANIFEST, PLAN_COPY):
        if name in files:
            path = atomic_write_text(rel / name, files[name].text, mode=files[name].mode)
            written += [path] if name == MANIFEST else []
    write_meta(rel, meta)
    pruned: list[str] = []
    if switch:
        switch_current(root, rid, reason=reason)
        pruned = prune(root, keep)
        # the stable names in the rendered folder, which follow `current`
        written = [root / p.relative_to(rel) for p in written]
    return Published(rel, written, checked, pruned)


__all__ = [
    "CURRENT",
    "DEFAULT_KEEP",
    "HISTORY",
    "MONITORING",
    "PLAN_COPY",
    "RELEASES",
    "RELEASE_META",
    "Published",
    "RenderedFile",
    "check_id",
    "current_id",
    "failed",
    "is_release",
    "json_file",
    "list_releases",
    "previous_id",
    "prune",
    "publish",
    "read_history",
    "read_release",
    "read_report",
    "release_id",
    "release_path",
    "remove_stale",
    "resolve",
    "root_of",
    "switch_current",
    "write_meta",
    "write_report",
]
