"""Check rendered monitoring files with Prometheus' own ``promtool`` (Debian's ``prometheus`` package).

    >>> from deploy.monitoring.promtool import check_dir
    >>> [r.summary() for r in check_dir("rendered/monitoring")]            # doctest: +SKIP
    ['check config prometheus.yml: ok', 'check rules kimi-deploy-llamacpp.yml: ok', 'test rules ...: ok']

``check_dir`` runs ``promtool check config`` (which also checks the rule files it names), ``check rules``
on every rule file and ``test rules`` on every ``*.test.yml``. Without promtool on PATH it returns nothing
and ``available()`` says so; callers decide whether that is an error.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import PromtoolError

#: Seconds one promtool run may take (they take well under one here).
TIMEOUT_S = 120


@dataclass(frozen=True)
class PromtoolResult:
    command: str
    file: str
    ok: bool
    output: str

    def summary(self) -> str:
        if self.ok:
            return f"promtool {self.command} {self.file}: ok"
        last = [line for line in self.output.splitlines() if line.strip()][-3:]
        return f"promtool {self.command} {self.file}: FAILED: {' | '.join(s.strip() for s in last)}"


def available() -> str | None:
    """The promtool path, or None."""
    return shutil.which("promtool")


def run(command: list[str], path: Path) -> PromtoolResult:
    """``promtool <command...> <path>`` in the file's folder (relative paths resolve as Prometheus does)."""
    exe = available()
    if exe is None:
        raise PromtoolError("promtool not found on PATH (Debian: apt-get install prometheus)")
    try:
        proc = subprocess.run(
            [exe, *command, path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return PromtoolResult(" ".join(command), path.name, False, f"timed out after {TIMEOUT_S} s")
    return PromtoolResult(" ".join(command), path.name, proc.returncode == 0, proc.stdout + proc.stderr)


def check_dir(monitoring_dir: str | Path, unit_tests: bool = True) -> list[PromtoolResult]:
    """Every promtool check for a rendered ``monitoring/`` folder (``unit_tests``: the ``*.test.yml`` too);
    empty when promtool is missing."""
    root = Path(monitoring_dir)
    if available() is None:
        return []
    results = [run(["check", "config"], root / "prometheus.yml")]
    rule_files = sorted(p for p in (root / "rules").glob("*.yml") if not p.name.endswith(".test.yml"))
    results += [run(["check", "rules"], p) for p in rule_files]
    if unit_tests:
        results += [run(["test", "rules"], p) for p in sorted((root / "rules").glob("*.test.yml"))]
    return results


def require_ok(results: list[PromtoolResult]) -> None:
    """Raise PromtoolError naming the first failure."""
    for r in results:
        if not r.ok:
            raise PromtoolError(r.summary())


__all__ = ["PromtoolError", "PromtoolResult", "available", "check_dir", "require_ok", "run"]
