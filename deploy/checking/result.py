"""Check verdicts and the report: one result per check, the table people read, the JSON machines read.

>>> r = CheckReport(target={}, results=[CheckResult("liveness", PASS, "GET /health 200")])
>>> r.ok, r.to_dict()["summary"]
(True, {'pass': 1, 'fail': 0, 'skip': 0})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from deploy import console

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class CheckResult:
    """One check's verdict. ``details`` holds measured values (latency, chunk count, ids seen)."""

    name: str
    status: str
    reason: str
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckReport:
    target: dict[str, Any]
    results: list[CheckResult]
    tool_call_set: dict[str, Any] | None = None
    #: trigger F1 against a reference (deploy.checking.trigger), when one was given
    trigger_f1: dict[str, Any] | None = None
    #: per endpoint: requests sent, 429s, seconds waited, tokens (deploy.checking.meter)
    usage: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed (skips are declared, so they do not count against)."""
        return all(r.status != FAIL for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def to_dict(self) -> dict[str, Any]:
        counts = Counter(r.status for r in self.results)
        return {
            "ok": self.ok,
            "summary": {s: counts.get(s, 0) for s in (PASS, FAIL, SKIP)},
            "target": self.target,
            "results": [asdict(r) for r in self.results],
            "tool_call_set": self.tool_call_set,
            "trigger_f1": self.trigger_f1,
            "usage": self.usage,
        }


def _header(report: CheckReport) -> list[str]:
    t = report.target
    return [
        f"target: {t['api_base']}  model: {t['model']}  flavor: {t['flavor']}",
        f"capabilities: {t['capabilities_source']}; tool-call ids: {t['id_rule_source']}",
        *_special_line(t),
    ]


def _special_line(t: dict[str, Any]) -> list[str]:
    tokens = t.get("special_tokens") or []
    if not tokens:
        return []
    samples = t.get("samples") or 1
    return [
        f"special tokens looked for ({len(tokens)}, {t.get('special_tokens_source')}): {' '.join(tokens)}",
        f"samples per probe: {samples}",
    ]


def _rows(report: CheckReport) -> list[tuple[str, str, str, str]]:
    return [(r.name, r.status.upper(), f"{r.seconds:.2f}s", r.reason) for r in report.results]


def _verdict(report: CheckReport) -> str:
    counts = Counter(r.status for r in report.results)
    passed, failed, skipped = (counts.get(s, 0) for s in (PASS, FAIL, SKIP))
    return f"{'OK' if report.ok else 'FAILED'}: {passed} passed, {failed} failed, {skipped} skipped"


def _usage(report: CheckReport) -> list[str]:
    return [
        f"usage ({u['endpoint']}): {u['requests']} requests, {u['total_tokens']} tokens "
        f"(prompt {u['prompt_tokens']}, completion {u['completion_tokens']}); "
        f"{u['rate_limited']} rate-limited, waited {u['waited_s']:g} s"
        for u in report.usage
    ]


def render_table(report: CheckReport) -> str:
    """The human table: one row per check, then the verdict."""
    lines = _header(report)
    rows = _rows(report)
    w0 = max([len("check")] + [len(r[0]) for r in rows])
    lines.append(f"{'check':<{w0}}  {'status':<6}  {'time':>7}  reason")
    for name, status, secs, reason in rows:
        lines.append(f"{name:<{w0}}  {status:<6}  {secs:>7}  {reason}")
    lines += _usage(report)
    lines.append(_verdict(report))
    return "\n".join(lines)


def print_table(report: CheckReport, scrub: Callable[[str], str] = str) -> None:
    """Print the report: a rich table on a terminal, :func:`render_table`'s plain lines elsewhere.

    ``scrub`` is applied to every text shown (the CLI passes the secret redaction)."""
    from rich.text import Text

    columns = ("check", "status", "time", "reason")
    rows = [tuple(scrub(cell) for cell in row) for row in _rows(report)]
    rich_parts = [
        Text(scrub("\n".join(_header(report)))),
        console.table(columns, rows, right=("time",), styled_column="status"),
        *[Text(scrub(line)) for line in _usage(report)],
        Text(_verdict(report), style="green" if report.ok else "bold red"),
    ]
    console.show(scrub(render_table(report)), *rich_parts)
