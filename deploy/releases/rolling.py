"""A fleet's upgrade, replica by replica behind its router: no request is dropped on the way.

    >>> from deploy.releases.rolling import rolls
    >>> rolls(old_manifest, new_manifest)          # doctest: +SKIP
    True

For each replica in turn: take it out of the router and let its requests in flight finish (drain, up to a
deadline), stop it, start it from the new release, gate it with the conformance suite on its own URL, put it
back in the router; then the next. The router keeps running (the replicas keep their URLs), so users see
one replica fewer for a while, never an error. ``current`` moves to the new release once every replica runs
it. A replica that fails its gate is stopped and the replicas already moved are put back on the old release
the same way (drained, restarted, back in the router), last first; the upgrade then stops, rolled back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.errors import GateFailed
from deploy.planning.contract import load_plan
from deploy.serving import fleet_launch, launch, release_dir


@dataclass(frozen=True)
class Step:
    """One replica's move: which release it leaves and which it joins."""

    replica: str
    head: str
    nodes: tuple[str, ...]


def _fleet(root: Path, rid: str) -> dict[str, Any] | None:
    return fleet_launch.fleet(release_dir.release_path(root, rid))


def rolls(root: Path, old: str, new: str) -> bool:
    """Whether ``old`` -> ``new`` can roll: both are fleets whose replicas keep their ids, nodes and URLs
    (the router in front goes on routing to them) and whose router is the same."""
    a, b = _fleet(root, old), _fleet(root, new)
    if not a or not b:
        return False
    shape = [(r["id"], tuple(r["nodes"]), r["url"]) for r in a["replicas"]]
    if shape != [(r["id"], tuple(r["nodes"]), r["url"]) for r in b["replicas"]]:
        return False
    keep = ("program", "version", "bind", "port", "argv")
    return all(a["router"].get(k) == b["router"].get(k) for k in keep)


def steps(root: Path, rid: str) -> list[Step]:
    spec = _fleet(root, rid) or {"replicas": []}
    return [Step(str(r["id"]), str(r["head"]), tuple(r["nodes"])) for r in spec["replicas"]]


def _move(
    root: Path,
    step: Step,
    to: str,
    state: Path,
    say: Callable[[str], None],
    deadline_s: float | None,
    drain_deadline_s: float,
) -> None:
    """Drain ``step``'s replica out of the router, stop it, start it from release ``to``."""
    running = release_dir.release_path(root, to)
    fleet_launch.wait_routable(running, step.replica)
    fleet_launch.drain(running, step.replica, deadline_s=drain_deadline_s, stream=sys.stderr)
    for node in reversed(step.nodes):
        for line in launch.down(node=node, state_dir=state):
            say(f"  {line}")
    for node in step.nodes[1:] + step.nodes[:1]:
        # workers first, the head (which serves HTTP) last, as a multi-node replica starts
        launch.up(
            release_dir.release_path(root, to) / release_dir.PLAN_COPY,
            running,
            node=node,
            state_dir=state,
            deadline_s=deadline_s,
            stream=sys.stderr,
        )


def gate(root: Path, rid: str, step: Step, timeout_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    """The whole conformance suite on the replica's own URL (the router does not send it traffic yet)."""
    from deploy.checking import fleet as fleet_check
    from deploy.checking import suite as check

    release = release_dir.release_path(root, rid)
    plan = load_plan(release / release_dir.PLAN_COPY)
    front = check.target_from_rendered(plan, release, None, timeout_s=timeout_s)
    target = dict(fleet_check.replica_targets(plan, front)).get(step.replica)
    if target is None:
        raise GateFailed(f"{rid}: the plan has no replica {step.replica} to check")
    return verdict(check.run_checks(target), f"{step.replica} of {rid}", say, label=f"{step.replica} check")


def verdict(report: Any, where: str, say: Callable[[str], None], label: str = "check") -> dict[str, Any]:
    """A gate's check report (deploy.checking.result.CheckReport) as a dict, its counts said; GateFailed
    naming every failed check when it did not pass."""
    data = report.to_dict()
    summary = data.get("summary", {})
    say(
        f"  {label}: {summary.get('pass', 0)} passed, {summary.get('fail', 0)} failed, "
        f"{summary.get('skip', 0)} skipped"
    )
    if not report.ok:
        failed = "; ".join(f"{r.name}: {r.reason}" for r in report.failed)
        raise GateFailed(f"check failed on {where}: {failed}")
    return data


def roll(
    root: Path,
    old: str,
    new: str,
    state: Path,
    say: Callable[[str], None],
    *,
    deadline_s: float | None,
    timeout_s: float,
    drain_deadline_s: float = fleet_launch.DRAIN_DEADLINE_S,
    on_step: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """Move every replica from ``old`` to ``new`` (see the module docstring); returns each replica's check
    report. Raises the gate's error after putting the replicas already moved back on ``old``."""
    moved: list[Step] = []
    reports: dict[str, Any] = {}
    for step in steps(root, new):
        on_step(f"replica {step.replica}")
        say(f"replica {step.replica}: {old} -> {new}")
        try:
            moved.append(step)
            _move(root, step, new, state, say, deadline_s, drain_deadline_s)
            reports[step.replica] = gate(root, new, step, timeout_s, say)
            fleet_launch.rejoin(release_dir.release_path(root, new), step.replica, stream=sys.stderr)
        except BaseException:
            # the old release starts within its own predicted deadline: an override was for the new one
            put_back(root, moved, old, state, say, None, drain_deadline_s)
            raise
    return reports


def put_back(
    root: Path,
    moved: list[Step],
    old: str,
    state: Path,
    say: Callable[[str], None],
    deadline_s: float | None,
    drain_deadline_s: float,
) -> None:
    """Put the replicas in ``moved`` back on ``old``, last first, each drained and back in the router."""
    for step in reversed(moved):
        say(f"replica {step.replica}: back to {old}")
        _move(root, step, old, state, say, deadline_s, drain_deadline_s)
        fleet_launch.rejoin(release_dir.release_path(root, old), step.replica, stream=sys.stderr)


__all__ = ["Step", "gate", "put_back", "roll", "rolls", "steps", "verdict"]
