#!/usr/bin/env python3
"""Regenerate the command output the docs show (docs/snippets/), or check that it is current.

    python scripts/docs_snippets.py            # rewrite the deterministic snippets (make docs-snippets)
    python scripts/docs_snippets.py --check    # exit 1 naming every stale snippet (tests/test_docs.py)
    python scripts/docs_snippets.py --machine  # also this machine's outputs: inventory, the demo (slow)

Every snippet is a real run of ``python -m deploy`` (the same code as ``kimi-deploy``) from the repository
root, with a clean environment (no ``KIMI_DEPLOY_*``/``HF_*`` variables, an empty calibration store, so
no one's measured starts change the plans); ``exit-codes.md`` is a table
made from deploy/errors.py. A snippet file starts with the command line it came from. Paths are shown
portably: a temporary folder as ``/srv/kimi-deploy``, the checkout as ``~/kimi-deploy``; the JSON snippets
are abridged as their ``transform`` says. The ``--machine`` snippets depend on the machine and the moment
(addresses, ports, timings), so ``--check`` does not compare them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SNIPPETS = ROOT / "docs" / "snippets"
SHOWN_TMP = "/srv/kimi-deploy"  # what a temporary folder is shown as


@dataclass
class Snippet:
    """One file under docs/snippets/: the output of ``kimi-deploy ARGS`` (or a file that command wrote)."""

    name: str
    args: list[str]
    rc: int = 0
    env: dict[str, str] = field(default_factory=dict)
    # a file the command wrote (relative to the temporary folder) instead of its output
    from_file: str | None = None
    prompt: bool = True  # first line: "$ kimi-deploy ARGS"
    transform: Callable[[str], str] | None = None
    machine: bool = False  # depends on this machine and moment: not compared by --check
    profile: str | None = None  # render: plan this hardware profile into {tmp}/plan.json first
    # a server started first (`python -m ARGS`), stopped after; the URL its first line prints is {url}
    server: list[str] | None = None


def _manifest_abridged(text: str) -> str:
    data = json.loads(text)
    data.pop("files", None)
    return json.dumps(data, indent=2) + "\n"


def _chosen_candidate(text: str) -> str:
    plan = json.loads(text)
    chosen = next(c for c in plan["candidates"] if c["id"] == plan["chosen"])
    chosen["memory"]["sources"] = {k: "..." for k in chosen["memory"]["sources"]}
    top = {k: v for k, v in plan.items() if k != "candidates"}
    top["hardware"] = "... the profile (hardware/h200x8.yaml) ..."
    top["candidates"] = [chosen, "... 12 more, ranked ..."]
    return json.dumps(top, indent=2) + "\n"


def _fleet_only(text: str) -> str:
    return json.dumps({"fleet": json.loads(text)["fleet"]}, indent=2) + "\n"


def _from_fleet_options(text: str) -> str:
    """The command line, then the report from its fleet options on (the table and memory are elsewhere)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Fleet options"))
    return "\n".join([lines[0], *lines[start:]]) + "\n"


PROFILES = ["h200x8", "h100x8", "h100x8-2nodes", "rtx4090-256g", "kt-4x4090-768g", "cpu-512g"]
KEY = {"KIMI_API_KEY": "docs-example-key"}
FAULTSERVER = ["deploy.fakes.faultserver"]


def snippets() -> list[Snippet]:
    out: list[Snippet] = []
    for p in PROFILES:
        out.append(Snippet(f"plan-{p}.txt", ["plan", "--hardware", f"hardware/{p}.yaml"]))
    out.append(Snippet("plan-ci-24g.txt", ["plan", "--hardware", "hardware/ci-24g.yaml"], rc=3))
    out.append(
        Snippet(
            "plan-h200x8.json",
            ["plan", "--hardware", "hardware/h200x8.yaml", "--json"],
            prompt=False,
            transform=_chosen_candidate,
        )
    )
    # replicas: a layout on part of the nodes, once per node group, behind a router (issue 21)
    four = ["plan", "--hardware", "hardware/h100x8-4nodes.yaml", "--engine", "vllm", "--variant", "int4"]
    out.append(Snippet("plan-h100x8-4nodes-vllm.txt", four))
    # a prefill/decode split on four 8x H200 nodes with InfiniBand (issue 26): the options and the Fleet line
    split = ["plan", "--hardware", "hardware/h200x8-4nodes.yaml", "--engine", "sglang", "--workload", "long"]
    out.append(Snippet("plan-h200x8-4nodes-split.txt", split, transform=_from_fleet_options))
    demo2 = ["plan", "--hardware", "hardware/ci-24g.yaml", "--model", "demo", "--replicas", "2", "--json"]
    out.append(Snippet("plan-demo-replicas-2.json", demo2, prompt=False, transform=_fleet_only))
    # render: one folder per profile, the plan written first into the temporary folder
    renders = {
        "h200x8": (
            ["--bind", "0.0.0.0"],
            KEY,
            ["launch-node0.sh", "kimi-deploy.env", "install-node0.sh", "kimi-deploy-node0.service"],
        ),
        "h100x8-2nodes": (["--bind", "0.0.0.0"], KEY, ["launch-worker1.sh", "kimi-deploy-worker1.env"]),
        "kt-4x4090-768g": ([], {}, ["launch-kt0.sh"]),
    }
    for p, (extra, env, files) in renders.items():
        base = ["render", "--plan", "{tmp}/plan.json", "--out", "{tmp}/rendered", *extra]
        out.append(Snippet(f"render-{p}.txt", base, env=env, profile=p))
        for f in files:
            out.append(
                Snippet(f"render-{p}-{f}", base, env=env, profile=p, from_file=f"rendered/{f}", prompt=False)
            )
        if p != "h200x8":
            continue
        out.append(
            Snippet(
                f"render-{p}-manifest.json",
                base,
                env=env,
                profile=p,
                from_file="rendered/manifest.json",
                prompt=False,
                transform=_manifest_abridged,
            )
        )
    # Kubernetes: the same plan as a LeaderWorkerSet (docs/how-to/kubernetes.md)
    k8s = ["render", "--plan", "{tmp}/plan.json", "--target", "k8s", "--out", "{tmp}/k8s"]
    out.append(Snippet("render-k8s-h100x8-2nodes.txt", k8s, profile="h100x8-2nodes"))
    for f in ("02-leaderworkerset-kimi-deploy.yaml", "03-service-kimi-deploy-api.yaml"):
        name = f"render-k8s-h100x8-2nodes-{f.split('-', 1)[1]}"
        out.append(Snippet(name, k8s, profile="h100x8-2nodes", from_file=f"k8s/{f}", prompt=False))
    out.append(Snippet("inventory.txt", ["inventory"], machine=True))
    out.append(
        Snippet(
            "check-bad-tool-id.txt",
            ["check", "--url", "{url}", "--model", "kimi-k2.5", "--flavor", "sglang"],
            rc=7,
            server=[*FAULTSERVER, "--mode", "bad-tool-id", "--engine", "sglang", "--port", "0"],
            machine=True,
        )
    )
    out.append(Snippet("demo.txt", ["demo"], machine=True))
    return out


def _exit_codes() -> str:
    """A Markdown table of the error hierarchy in deploy/errors.py (and the few it lists as defined
    elsewhere): class, exit code, docstring."""
    import importlib

    import deploy.errors as errors

    rows = ["| exit code | error class | when |", "|---|---|---|"]
    classes = [
        c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.KimiDeployError)
    ]
    for qualified in errors.DEFINED_ELSEWHERE:
        module, name = qualified.rsplit(".", 1)
        classes.append(getattr(importlib.import_module(module), name))
    for c in sorted(
        classes, key=lambda c: (c.exit_code, c.__mro__.index(errors.KimiDeployError), c.__name__)
    ):
        base = next(
            b.__name__ for b in c.__mro__[1:] if issubclass(b, errors.KimiDeployError) or b is Exception
        )
        doc = " ".join((c.__doc__ or "").split())
        rows.append(f"| {c.exit_code} | `{c.__name__}` ({base}) | {doc} |")
    return "\n".join(rows) + "\n"


README = ROOT / "README.md"
README_START = "<!-- docs-snippets: plan-h200x8 (make docs-snippets rewrites this block) -->\n"
README_END = "<!-- /docs-snippets -->\n"


def _readme_with_excerpt(plan_text: str) -> str:
    """README.md with its plan excerpt (title, header, three rows, Chosen, Why) taken from ``plan_text``."""
    lines = plan_text.splitlines()[1:]  # without the "$ kimi-deploy ..." line
    keep = lines[:5] + ["..."] + [ln for ln in lines if ln.startswith(("Chosen:", "Why:"))]
    readme = README.read_text()
    start, end = readme.index(README_START) + len(README_START), readme.index(README_END)
    return readme[:start] + "```text\n" + "\n".join(keep) + "\n```\n" + readme[end:]


GENERATED: dict[str, Callable[[], str]] = {"exit-codes.md": _exit_codes}


#: the deterministic snippets plan without anyone's measured starts: an empty calibration store (set in main)
EMPTY_CALIBRATION: dict[str, str] = {}


def _env(extra: dict[str, str], machine: bool = False) -> dict[str, str]:
    """A clean environment; the machine snippets (the demo) keep the user's own calibration store."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIMI_DEPLOY_", "HF_", "KIMI_API"))}
    env.update({"PYTHONUNBUFFERED": "1", "NO_COLOR": "1"})
    own = os.environ.get("KIMI_DEPLOY_CALIBRATION_DIR")
    env.update(({"KIMI_DEPLOY_CALIBRATION_DIR": own} if own else {}) if machine else EMPTY_CALIBRATION)
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def _plan_for(tmp: Path, profile: str) -> None:
    cmd = [sys.executable, "-m", "deploy", "plan", "--hardware", f"hardware/{profile}.yaml"]
    cmd += ["-o", str(tmp / "plan.json")]
    subprocess.run(cmd, cwd=ROOT, env=_env({}), check=True, capture_output=True, timeout=120)


_RUNS: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}


@contextlib.contextmanager
def _server(argv: list[str] | None) -> Iterator[str]:
    """Start ``python -m ARGV`` (it prints a line ending in its URL), yield the URL, stop it."""
    if argv is None:
        yield ""
        return
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        cwd=ROOT,
        env=_env({}),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"(https?://\S+)\s*$", line)
        if not match:
            raise SystemExit(f"error: `python -m {shlex.join(argv)}` printed no URL: {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(snippet: Snippet, top: Path) -> str:
    tmp = top / (snippet.profile or "cwd")
    tmp.mkdir(exist_ok=True)
    args = [a.replace("{tmp}", str(tmp)) for a in snippet.args]
    key = (*args, *(f"{k}={v}" for k, v in sorted(snippet.env.items())))
    if snippet.profile and not (tmp / "plan.json").exists():
        _plan_for(tmp, snippet.profile)
    with _server(snippet.server) as url:
        args = [a.replace("{url}", url) for a in args]
        proc = _RUNS.get(key) or subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            cwd=ROOT,
            env=_env(snippet.env, machine=snippet.machine),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=1800 if snippet.machine else 120,
        )
    _RUNS[key] = proc
    if proc.returncode != snippet.rc:
        raise SystemExit(
            f"error: `kimi-deploy {shlex.join(args)}` exited {proc.returncode}, expected {snippet.rc}:\n"
            + proc.stdout[-2000:]
        )
    text = (tmp / snippet.from_file).read_text() if snippet.from_file else proc.stdout
    if snippet.transform:
        text = snippet.transform(text)
    if snippet.prompt:
        shown = [a.replace("{tmp}", SHOWN_TMP).replace("{url}", url) for a in snippet.args]
        text = f"$ kimi-deploy {shlex.join(shown)}\n{text}"
    text = text.replace(str(tmp), SHOWN_TMP).replace(str(ROOT), "~/kimi-deploy")
    return text if text.endswith("\n") else text + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with docs/snippets/, write nothing")
    ap.add_argument("--machine", action="store_true", help="also this machine's snippets (inventory, demo)")
    ap.add_argument("names", nargs="*", help="only these snippet files")
    opts = ap.parse_args(argv)
    todo = [
        s for s in snippets() if (opts.machine or not s.machine) and (not opts.names or s.name in opts.names)
    ]
    if opts.check:
        todo = [s for s in todo if not s.machine]
    if any(s.profile for s in todo) and shutil.which("promtool") is None:
        # render checks its monitoring/ files with promtool when it is on PATH and says so: output differs
        print(
            "error: promtool is not on PATH (make setup-system): render's output shows its checks",
            file=sys.stderr,
        )
        return 2
    stale: list[str] = []
    for name, make in GENERATED.items():
        if opts.names and name not in opts.names:
            continue
        text, path = make(), SNIPPETS / name
        if opts.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            SNIPPETS.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote docs/snippets/{name}")
    with tempfile.TemporaryDirectory(prefix="docs-snippets-") as tmp:
        (Path(tmp) / "calibration").mkdir()
        EMPTY_CALIBRATION["KIMI_DEPLOY_CALIBRATION_DIR"] = str(Path(tmp) / "calibration")
        for s in todo:
            text = run(s, Path(tmp))
            path = SNIPPETS / s.name
            if opts.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(s.name)
            else:
                SNIPPETS.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote docs/snippets/{s.name}")
            if s.name == "plan-h200x8.txt":
                readme = _readme_with_excerpt(text)
                if opts.check and readme != README.read_text():
                    stale.append("README.md (its plan excerpt)")
                elif not opts.check and readme != README.read_text():
                    README.write_text(readme)
                    print("wrote README.md (its plan excerpt)")
    if stale:
        print(
            f"stale docs snippets (the commands print something else now): {', '.join(stale)}\n"
            "regenerate them with `make docs-snippets` and review the diff",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
