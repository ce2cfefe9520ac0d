"""`kimi-deploy gc`: remove old releases, and weights no kept release references.

    >>> from deploy.releases.gc import collect
    >>> plan = collect("rendered", keep=2)              # doctest: +SKIP
    >>> [str(p) for p in plan.weights]                  # doctest: +SKIP
    ['/models/ggml-org/gemma-3-270m-GGUF@v1']

Releases: beyond the ``keep`` most recent, never ``current`` nor the one before it (what `rollback` returns
to). Weights: a folder is a candidate only when it holds a weights.lock for the same repo as a kept release's
weights and sits beside them (``<folder>`` or ``<folder>@<revision>``, as `upgrade` lays them out); it is
removed only if no kept release (after the releases are pruned) names it. Nothing else on disk is touched.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from deploy.errors import KimiDeployError
from deploy.serving import release_dir
from deploy.weights import lockfile


@dataclass
class Collection:
    """What `gc` removes (or would, with ``--dry-run``) and what it keeps."""

    releases: list[str] = field(default_factory=list)
    weights: list[Path] = field(default_factory=list)
    kept_releases: list[str] = field(default_factory=list)
    kept_weights: list[Path] = field(default_factory=list)
    freed_bytes: int = 0


def _weights_of(root: Path, rid: str) -> tuple[Path, str] | None:
    try:
        meta = release_dir.read_release(release_dir.release_path(root, rid))
    except KimiDeployError:
        return None
    w = meta.get("weights") or {}
    if not w.get("dir"):
        return None
    return Path(str(w["dir"])).resolve(), str(w.get("repo") or "")


def _size(folder: Path) -> int:
    """Bytes removing ``folder`` frees: files not hard-linked elsewhere (`upgrade` links unchanged files)."""
    total = 0
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            total += st.st_size if st.st_nlink == 1 else 0
    return total


def collect(root: str | Path, keep: int = release_dir.DEFAULT_KEEP) -> Collection:
    """Decide what to remove under the rendered folder ``root`` and beside its releases' weights."""
    root = Path(root)
    every = release_dir.list_releases(root)
    stay = {r for r in (release_dir.current_id(root), release_dir.previous_id(root)) if r}
    kept = [r for r in every if r in stay or every.index(r) < keep]
    out = Collection(releases=[r for r in every if r not in kept], kept_releases=kept)
    referenced: dict[Path, str] = {}
    for rid in kept:
        found = _weights_of(root, rid)
        if found is not None:
            referenced[found[0]] = found[1]
    out.kept_weights = sorted(referenced)
    seen: set[Path] = set()
    for folder, repo in referenced.items():
        base = folder.name.split("@", 1)[0]
        for sibling in sorted(folder.parent.iterdir()) if folder.parent.is_dir() else []:
            if sibling in seen or not sibling.is_dir() or sibling.resolve() in referenced:
                continue
            if sibling.name != base and not sibling.name.startswith(f"{base}@"):
                continue
            try:
                lock = lockfile.read_lock(sibling)
            except KimiDeployError:
                continue
            if lock.repo != repo:
                continue
            seen.add(sibling)
            out.weights.append(sibling)
    return out


def run_gc(root: str | Path, keep: int = release_dir.DEFAULT_KEEP, dry_run: bool = False) -> Collection:
    """Collect, then remove (unless ``dry_run``); the sizes of removed weights add up in ``freed_bytes``."""
    plan = collect(root, keep)
    for folder in plan.weights:
        plan.freed_bytes += _size(folder)
    if dry_run:
        return plan
    for rid in plan.releases:
        shutil.rmtree(release_dir.release_path(root, rid), ignore_errors=True)
    for folder in plan.weights:
        shutil.rmtree(folder, ignore_errors=True)
    return plan


def gc_deployment(
    state_dir: str | Path | None = None,
    rendered: str | Path | None = None,
    keep: int = release_dir.DEFAULT_KEEP,
    dry_run: bool = False,
) -> tuple[Path, Collection]:
    """`kimi-deploy gc` on the deployment found as `upgrade` finds it; refused while an upgrade runs or
    after one was interrupted (its releases and weights are still needed to finish it)."""
    from deploy.releases import journal
    from deploy.releases.upgrade import find_deployment

    state = Path(state_dir) if state_dir else None
    from deploy import constants

    state = state or constants.STATE_DIR
    with journal.exclusive(state):
        j = journal.load(state)
        if j is not None and j.status == journal.RUNNING:
            raise journal.UpgradeBusy(
                f"an interrupted {j.op} is recorded in {state / journal.JOURNAL}: run `kimi-deploy rollback` "
                "(or the upgrade again) first"
            )
        dep = find_deployment(state, rendered)
        return dep.root, run_gc(dep.root, keep, dry_run)


__all__ = ["Collection", "collect", "gc_deployment", "run_gc"]
