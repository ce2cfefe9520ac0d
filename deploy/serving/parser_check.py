"""Check rendered vLLM / SGLang commands with the engines' real argument parsers (in the parser venv).

    >>> from deploy.serving.parser_check import check_argvs
    >>> report = check_argvs([("sglang", ["python3", "-m", "sglang.launch_server", "--model-path", "/m",
    ...                                   "--tp-size", "8"])])            # doctest: +SKIP
    >>> report.results[0].ok                                                # doctest: +SKIP
    True

The engines are not the toolkit's dependencies: the check runs ``deploy/data/parser_probe.py`` with the python
of the venv that `kimi-deploy engine install parsers` builds (KTransformers commands: `parsers-kt`, the venv
of kvcache-ai's SGLang fork), one process per venv for a whole batch (importing vLLM takes seconds). A
missing venv is an error, never a silent pass.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.engines import builds as engines
from deploy.engines import registry
from deploy.serving.argv import Arg, EnvRef, NodeCommand

PROBE = constants.PACKAGE_DIR / "data" / "parser_probe.py"
#: Engines whose commands the probe checks (those with a parser venv); ray/rpc-server/llama-server commands
#: are checked elsewhere.
CHECKED = tuple(e.name for e in registry.all() if e.install.parser_venv)
#: The distribution whose version names each engine's parser in a report.
VERSION_KEYS = {e.name: e.install.parser_version_key for e in registry.all() if e.install.parser_version_key}
#: Stands in for "${KIMI_API_KEY}" in the argv given to the parsers (they only see its shape).
PROBE_API_KEY = "probe-api-key"


class ParserVenvMissing(engines.EngineInstallError):
    """The parser venv is not built."""


@dataclass
class ParserResult:
    engine: str
    argv: list[str]
    ok: bool
    errors: list[str] = field(default_factory=list)
    inexact_flags: list[str] = field(default_factory=list)
    unknown_parsers: list[str] = field(default_factory=list)
    #: what the engine's check did not run, and why (the fork's post-parse validation needs a GPU)
    notes: list[str] = field(default_factory=list)
    #: KTransformers: the fork's parsed values of its kt_* settings and chunked_prefill_size
    parsed: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        problems = self.errors + [f"inexact flag {f}" for f in self.inexact_flags] + self.unknown_parsers
        return "ok" if self.ok else "; ".join(problems)


@dataclass
class ParserReport:
    versions: dict[str, str]
    results: list[ParserResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


def _probe_argv(argv: list[Arg], key_config: Path | None = None) -> list[str]:
    """The argv as the engine sees it: env references replaced by the probe key; SGLang's ``--config``
    reference (the API key file the launch script writes) by ``key_config``, a file holding the probe key."""
    out = []
    for i, a in enumerate(argv):
        if isinstance(a, EnvRef) and i and argv[i - 1] == "--config" and key_config is not None:
            out.append(str(key_config))
        else:
            out.append(PROBE_API_KEY if isinstance(a, EnvRef) else str(a))
    return out


def _parser_venv(program: str) -> str | None:
    """The parser venv (``Engine.install.parser_venv``) of a command's program (None: not an engine's)."""
    eng = registry.find(program)
    return eng.install.parser_venv if eng is not None else None


def check_argvs(
    commands: list[tuple[str, list[Arg]]],
    python: Path | None = None,
    timeout_s: float = 900,
    kt_python: Path | None = None,
) -> ParserReport:
    """Parse each ``(engine, argv)`` with the engine's parser; results come back in the same order.

    KTransformers commands go to the parser of kvcache-ai's SGLang fork, in the venv `kimi-deploy engine
    install parsers-kt` builds (``kt_python``); the rest to the upstream engines' parsers in the parser venv
    (``python``)."""
    kt = [i for i, (e, _a) in enumerate(commands) if _parser_venv(e) == "parsers-kt"]
    rest = [i for i in range(len(commands)) if i not in set(kt)]
    report = _check_in([commands[i] for i in rest], python or engines.parser_python(), timeout_s, "parsers")
    kt_report = _check_in(
        [commands[i] for i in kt], kt_python or engines.kt_parser_python(), timeout_s, "parsers-kt"
    )
    results: list[ParserResult | None] = [None] * len(commands)
    for i, r in zip(rest, report.results, strict=True):
        results[i] = r
    for i, r in zip(kt, kt_report.results, strict=True):
        results[i] = r
    versions = dict(report.versions)
    if "sglang-kt" in kt_report.versions:
        versions["sglang-kt"] = kt_report.versions["sglang-kt"]
    return ParserReport(versions=versions, results=[r for r in results if r is not None])


def _check_in(
    commands: list[tuple[str, list[Arg]]], python: Path, timeout_s: float, venv_name: str
) -> ParserReport:
    if not commands:
        return ParserReport(versions={}, results=[])
    if not python.is_file():
        raise ParserVenvMissing(
            f"{python}: the {venv_name} venv is missing; run `kimi-deploy engine install {venv_name}`"
        )
    scratch = tempfile.TemporaryDirectory(prefix="kimi-probe-")
    key_config = Path(scratch.name) / "api-key.yaml"
    key_config.write_text(f'api-key: "{PROBE_API_KEY}"\n')
    request = {"commands": [{"engine": e, "argv": _probe_argv(a, key_config)} for e, a in commands]}
    try:
        done = subprocess.run(
            [str(python), str(PROBE)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={
                "VLLM_TARGET_DEVICE": "cpu",
                "PATH": "/usr/bin:/bin",
                "HOME": str(Path.home()),
                "HF_HUB_OFFLINE": "1",
            },
        )
    except subprocess.TimeoutExpired:
        raise engines.EngineInstallError(f"the parser probe took over {timeout_s:.0f} s") from None
    finally:
        scratch.cleanup()
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise engines.EngineInstallError(f"the parser probe failed (exit {done.returncode}): {tail}")
    data = json.loads(done.stdout)
    results = [
        ParserResult(engine=e, argv=_probe_argv(a, key_config), **r)
        for (e, a), r in zip(commands, data["results"], strict=True)
    ]
    return ParserReport(versions=data["versions"], results=results)


def check_nodes(nodes: list[NodeCommand], python: Path | None = None) -> ParserReport:
    """Check every node command that runs vLLM or SGLang (ray/rpc-server/llama-server ones are skipped)."""
    return check_argvs([(n.program, n.argv) for n in nodes if n.program in CHECKED], python=python)


__all__ = [
    "CHECKED",
    "VERSION_KEYS",
    "ParserReport",
    "ParserResult",
    "ParserVenvMissing",
    "check_argvs",
    "check_nodes",
]
