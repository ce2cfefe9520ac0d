"""`kimi-deploy plan diff OLD NEW`: what changes between two plans or releases, in operator terms.

    >>> from deploy.releases.diff import diff, load_side, render_diff
    >>> d = diff(load_side("plan-k25.json"), load_side("plan-k26.json"))      # doctest: +SKIP
    >>> print(render_diff(d))                                                 # doctest: +SKIP
    what              old                      new
    model             Kimi-K2.5                Kimi-K2.6
    ...

A side is a plan.json, a release folder (``rendered/releases/<id>``, which carries its plan, manifest and
weights lock reference) or a rendered folder (its ``current`` release). Rows compare the engine and its
pinned version, the weights (repo, revision, variant, files, and how many bytes a switch must download),
the layout and nodes, context and KV cache, and memory; then every launch flag of every node is compared
from the argv lists (deploy.serving.argv: the manifest's argv for a release, the one `render` would write
for a plan), so a flag that appears, disappears or changes value is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import pins
from deploy.engines import registry
from deploy.errors import KimiDeployError, PlanError
from deploy.fsutil import read_json
from deploy.planning.contract import Candidate, Plan, load_plan, plan_from_dict
from deploy.serving import release_dir, render
from deploy.serving.argv import Endpoint, argv_strings, node_commands
from deploy.weights import lockfile


@dataclass
class Side:
    """One side of a diff: a plan's chosen candidate, and what a release adds (its manifest and lock)."""

    label: str
    plan: Plan
    cand: Candidate
    manifest: dict[str, Any] = field(default_factory=dict)
    release: dict[str, Any] = field(default_factory=dict)
    lock: lockfile.Lock | None = None


def load_side(path: str | Path) -> Side:
    """A plan.json, a release folder, or a rendered folder (its current release)."""
    p = Path(path)
    if p.is_dir():
        folder = release_dir.resolve(p)
        if not release_dir.is_release(folder):
            raise PlanError(f"{p}: neither a plan.json nor a release folder (no {release_dir.RELEASE_META})")
        meta = release_dir.read_release(folder)
        plan = load_plan(folder / release_dir.PLAN_COPY)
        cand = plan.candidate(str(meta.get("candidate") or plan.chosen))
        manifest = read_json(folder / release_dir.MANIFEST)
        lock = None
        weights = meta.get("weights") or {}
        if weights.get("dir") and lockfile.lock_path(weights["dir"]).is_file():
            try:
                lock = lockfile.read_lock(weights["dir"])
            except KimiDeployError:
                lock = None
        return Side(f"release {meta['id']}", plan, cand, manifest, meta, lock)
    plan = load_plan(p)
    return Side(str(p), plan, plan.chosen_candidate)


def plan_side(plan: dict[str, Any], label: str = "<plan>") -> Side:
    """A side from a plan already in memory (plan.json's dict)."""
    parsed = plan_from_dict(plan, label)
    return Side(label, parsed, parsed.chosen_candidate)


# --------------------------------------------------------------------------------------------- argv


def _model_path(side: Side) -> str:
    if side.manifest.get("model_path"):
        return str(side.manifest["model_path"])
    weights_dir = render.weights_dir_for(side.plan, side.cand)
    try:
        return render.resolve_model_path(side.cand, weights_dir)
    except KimiDeployError:
        # no weights on this machine yet: the folder stands for the file
        return str(weights_dir)


def node_argvs(side: Side) -> dict[str, list[str]]:
    """Each node's argv (node name -> argv): the manifest's for a release, else what `render` would write."""
    if side.manifest.get("nodes"):
        return {str(n["name"]): [str(a) for a in n.get("argv") or []] for n in side.manifest["nodes"]}
    a = side.cand.engine_args
    template = None
    if a.get("chat_template"):
        try:
            template = render.resolve_chat_template(a.get("chat_template"), side.cand)
        except KimiDeployError:
            template = Path(str(a["chat_template"]))
    ep = Endpoint(bind=str(a.get("host") or "127.0.0.1"), api_key_env=a.get("api_key_env"))
    try:
        nodes = node_commands(side.plan, side.cand, _model_path(side), ep, template)
    except KimiDeployError as exc:
        raise PlanError(f"{side.label}: cannot build its launch command: {exc}") from None
    return {n.node: argv_strings(n.argv) for n in nodes}


def _is_flag(tok: str) -> bool:
    if not tok.startswith("-") or tok == "-":
        return False
    try:
        float(tok)
    except ValueError:
        return True
    return False


def parse_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """(program words, {flag: value}) of an argv; a flag without a value is ``""``, a repeated flag's
    values are joined by a space.

    >>> parse_flags(["vllm", "serve", "/m", "--tensor-parallel-size", "8", "--trust-remote-code"])
    (['vllm', 'serve', '/m'], {'--tensor-parallel-size': '8', '--trust-remote-code': ''})
    """
    program: list[str] = []
    flags: dict[str, str] = {}
    current: str | None = None
    for tok in argv:
        python_m = (
            tok == "-m" and current is None and Path(program[-1] if program else "").name.startswith("python")
        )
        if _is_flag(tok) and not python_m:
            name, eq, value = tok.partition("=")
            current = name
            flags[name] = (flags[name] + " " if name in flags else "") + (value if eq else "")
            flags[name] = flags[name].strip()
        elif current is None:
            program.append(tok)
        else:
            flags[current] = f"{flags[current]} {tok}".strip()
    return program, flags


def flag_changes(old: list[str], new: list[str]) -> dict[str, Any]:
    """``{"program": (old, new) | None, "added": {...}, "removed": {...}, "changed": {flag: [old, new]}}``."""
    old_prog, old_flags = parse_flags(old)
    new_prog, new_flags = parse_flags(new)
    return {
        "program": [" ".join(old_prog), " ".join(new_prog)] if old_prog != new_prog else None,
        "added": {k: v for k, v in new_flags.items() if k not in old_flags},
        "removed": {k: v for k, v in old_flags.items() if k not in new_flags},
        "changed": {
            k: [old_flags[k], new_flags[k]]
            for k in old_flags
            if k in new_flags and old_flags[k] != new_flags[k]
        },
    }


# --------------------------------------------------------------------------------------------- rows


def _gib(x: float) -> str:
    return f"{x:.1f} GiB"


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _engine_version(side: Side) -> str:
    if side.release.get("engine_version"):
        return str(side.release["engine_version"])
    pinned = side.manifest.get("pins") or {}
    eng = registry.find(side.cand.engine)
    dist = eng.source_dist if eng is not None else None
    key = dist or side.cand.engine
    if pinned.get(key):
        return f"{key}-{pinned[key]}" if dist else str(pinned[key])
    if eng is not None and eng.uses_cpu_build(side.cand.engine_args):
        return f"{eng.name}-cpu {eng.cpu_build_version}"
    return pins.ENGINE_PINS.get(side.cand.engine, "?")


def _revision(side: Side) -> str:
    w = side.cand.weights
    commit = (side.release.get("weights") or {}).get("commit") or (side.lock.commit if side.lock else "")
    return f"{w.revision} ({commit[:12]})" if commit and commit != w.revision else w.revision


def _nodes(side: Side) -> str:
    names = [str(n.get("name")) for n in (side.plan.hardware.get("nodes") or [])][: max(1, side.cand.nodes)]
    return f"{side.cand.nodes}: {', '.join(names)}" if names else str(side.cand.nodes)


def _gpus(side: Side) -> str:
    c = side.cand
    if not c.gpus_per_node:
        return "none (CPU)"
    gpu = next(iter(side.plan.hardware.get("nodes") or [{}])).get("gpu") or {}
    name = gpu.get("name") or gpu.get("model") or ""
    return f"{c.gpus_per_node} per node{' ' + str(name) if name else ''}"


def _weights_bytes(side: Side) -> int:
    if side.lock is not None:
        return side.lock.total_bytes
    return int(side.cand.weights.bytes or side.cand.weights.computed_bytes or 0)


def download_bytes(old: Side, new: Side) -> tuple[int, str]:
    """Bytes a switch from ``old`` to ``new`` must download, and how that was counted.

    With both weights locks known, the files of the new lock whose digest the old lock lacks; else the whole
    new variant when repo, revision, variant or files differ, and 0 when they are the same."""
    if old.lock is not None and new.lock is not None:
        have = {f.etag for f in old.lock.files}
        return sum(
            f.size for f in new.lock.files if f.etag not in have
        ), "files whose digest the old lock lacks"
    ow, nw = old.cand.weights, new.cand.weights
    same = (ow.repo, ow.revision, ow.variant, sorted(ow.allow_patterns)) == (
        nw.repo,
        nw.revision,
        nw.variant,
        sorted(nw.allow_patterns),
    )
    if same:
        return 0, "same repo, revision and files"
    return _weights_bytes(new), "the new weights in full: no lock to compare files with"


def rows(old: Side, new: Side) -> list[tuple[str, str, str]]:
    """(what, old, new) for every operator-facing field, changed or not."""
    o, n = old.cand, new.cand
    om, nm = o.memory, n.memory
    out = [
        ("model", str(old.plan.model.get("display_name")), str(new.plan.model.get("display_name"))),
        (
            "served as",
            str(o.engine_args.get("served_model_name")),
            str(n.engine_args.get("served_model_name")),
        ),
        ("engine", o.engine, n.engine),
        ("engine version", _engine_version(old), _engine_version(new)),
        ("weights repo", o.weights.repo, n.weights.repo),
        ("weights revision", _revision(old), _revision(new)),
        (
            "weights variant",
            f"{o.weights.variant} ({o.weights.format})",
            f"{n.weights.variant} ({n.weights.format})",
        ),
        ("weights files", " ".join(o.weights.allow_patterns), " ".join(n.weights.allow_patterns)),
        ("weights size", _gb(_weights_bytes(old)), _gb(_weights_bytes(new))),
        (
            "weights folder",
            str((old.release or {}).get("weights_dir") or o.weights.local_dir),
            str((new.release or {}).get("weights_dir") or n.weights.local_dir),
        ),
        ("layout", f"{o.layout or '-'} ({o.placement})", f"{n.layout or '-'} ({n.placement})"),
        ("nodes", _nodes(old), _nodes(new)),
        ("GPUs", _gpus(old), _gpus(new)),
        ("context (max_model_len)", f"{o.max_model_len:,}", f"{n.max_model_len:,}"),
        (
            "KV cache",
            f"{o.kv_cache_tokens:,} tokens, {o.kv_cache_dtype}",
            f"{n.kv_cache_tokens:,} tokens, {n.kv_cache_dtype}",
        ),
    ]
    if o.gpus_per_node or n.gpus_per_node:
        out += [
            (
                "GPU memory used",
                f"{_gib(om.budget)} of {_gib(om.total)}",
                f"{_gib(nm.budget)} of {_gib(nm.total)}",
            ),
            ("  weights / GPU", _gib(om.weights), _gib(nm.weights)),
            ("  KV cache / GPU", _gib(om.kv_cache), _gib(nm.kv_cache)),
            ("  activations / GPU", _gib(om.activations), _gib(nm.activations)),
        ]
    out += [
        ("host RAM", _gib(om.host), _gib(nm.host)),
        ("ready within", f"{o.time_to_ready_s} s", f"{n.time_to_ready_s} s"),
        ("serves on", _serves(old), _serves(new)),
    ]
    return out


def _serves(side: Side) -> str:
    m, a = side.manifest, side.cand.engine_args
    return f"{m.get('bind') or a.get('host') or '127.0.0.1'}:{m.get('port') or a.get('port')}"


@dataclass
class Diff:
    old: str
    new: str
    changes: list[tuple[str, str, str]]
    unchanged: list[str]
    flags: dict[str, dict[str, Any]]
    download_bytes: int
    download_basis: str
    notes: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.changes and not any(_has_flag_changes(f) for f in self.flags.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "same": self.same,
            "changes": [{"field": w.strip(), "old": o, "new": n} for w, o, n in self.changes],
            "unchanged": [u.strip() for u in self.unchanged],
            "download_bytes": self.download_bytes,
            "download_basis": self.download_basis,
            "notes": self.notes,
            "flags": self.flags,
        }


def _has_flag_changes(f: dict[str, Any]) -> bool:
    return bool(f.get("program") or f.get("added") or f.get("removed") or f.get("changed") or f.get("node"))


def diff(old: Side, new: Side) -> Diff:
    """Compare two sides: changed rows, unchanged row names, per-node flag changes, bytes to download."""
    changes, unchanged = [], []
    for what, o, n in rows(old, new):
        (changes.append((what, o, n)) if o != n else unchanged.append(what))
    old_argv, new_argv = node_argvs(old), node_argvs(new)
    flags: dict[str, dict[str, Any]] = {}
    for name in list(old_argv) + [x for x in new_argv if x not in old_argv]:
        if name not in new_argv:
            flags[name] = {"node": "removed", "program": None, "added": {}, "removed": {}, "changed": {}}
        elif name not in old_argv:
            flags[name] = {"node": "added", **flag_changes([], new_argv[name])}
        else:
            flags[name] = {"node": None, **flag_changes(old_argv[name], new_argv[name])}
    nbytes, basis = download_bytes(old, new)
    return Diff(old.label, new.label, changes, unchanged, flags, nbytes, basis, _notes(old, new))


def _notes(old: Side, new: Side) -> list[str]:
    """What the change means for clients and for the switch itself."""
    o, n = old.cand, new.cand
    notes = []
    old_name, new_name = o.engine_args.get("served_model_name"), n.engine_args.get("served_model_name")
    if old_name != new_name:
        notes.append(f"clients must send model {new_name!r} instead of {old_name!r}")
    if _serves(old) != _serves(new):
        notes.append(f"the endpoint moves from {_serves(old)} to {_serves(new)}")
    if n.max_model_len < o.max_model_len:
        notes.append(
            f"requests longer than {n.max_model_len:,} tokens (up to {o.max_model_len:,} today) are refused"
        )
    if o.engine != n.engine:
        notes.append(f"a different engine: {n.engine} installs beside {o.engine}; check tool-call parsing")
    if max(1, n.nodes) != max(1, o.nodes):
        notes.append(
            f"{max(1, n.nodes)} node(s) instead of {max(1, o.nodes)}: upgrade head and workers together"
        )
    return notes


def render_diff(d: Diff) -> str:
    """The diff as an operator reads it: a table of what changes, then each node's launch flags."""
    lines = [f"plan diff: {d.old}  ->  {d.new}"]
    if d.same:
        lines.append("no change: the same deployment (nothing to download, the same launch command)")
        return "\n".join(lines)
    if d.changes:
        w1 = max(len("what"), *(len(w) for w, _, _ in d.changes))
        w2 = max(len("old"), *(len(o) for _, o, _ in d.changes))
        lines.append("")
        lines.append(f"{'what':<{w1}}  {'old':<{w2}}  new")
        for what, o, n in d.changes:
            lines.append(f"{what:<{w1}}  {o:<{w2}}  {n}")
    lines.append("")
    shown = _gb(d.download_bytes) if d.download_bytes else "nothing"
    lines.append(f"to download: {shown} ({d.download_basis})")
    lines += [f"note: {note}" for note in d.notes]
    for node, f in d.flags.items():
        if not _has_flag_changes(f):
            continue
        lines.append("")
        if f.get("node") == "removed":
            lines.append(f"launch flags, node {node}: the node leaves the deployment")
            continue
        lines.append(f"launch flags, node {node}{' (new node)' if f.get('node') == 'added' else ''}:")
        if f.get("program"):
            lines.append(f"  ~ program  {f['program'][0] or '-'}  ->  {f['program'][1]}")
        for k, v in f["added"].items():
            lines.append(f"  + {k} {v}".rstrip())
        for k, v in f["removed"].items():
            lines.append(f"  - {k} {v}".rstrip())
        for k, (o, n) in f["changed"].items():
            lines.append(f"  ~ {k}  {o or '(set)'}  ->  {n or '(set)'}")
    if d.unchanged:
        lines.append("")
        lines.append("unchanged: " + ", ".join(u.strip() for u in d.unchanged))
    return "\n".join(lines)


__all__ = [
    "Diff",
    "Side",
    "diff",
    "download_bytes",
    "flag_changes",
    "load_side",
    "node_argvs",
    "parse_flags",
    "plan_side",
    "render_diff",
    "rows",
]
