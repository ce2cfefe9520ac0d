"""Check verdicts and the report: one result per check, the table people read, the JSON machines read.

>>> r = CheckReport(target={}, results=[CheckResult("liveness", PASS, "GET /health 200")])
>>> r.ok, r.to_dict()["summary"]
(True, {'pass': 1, 'fail': 0, 'skip': 0})
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

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


def render_table(report: CheckReport) -> str:
    """The human table: one row per check, then the verdict."""
    t = report.target
    lines = [
        f"target: {t['api_base']}  model: {t['model']}  flavor: {t['flavor']}",
        f"capabilities: {t['capabilities_source']}; tool-call ids: {t['id_rule_source']}",
    ]
    rows = [(r.name, r.status.upper(), f"{r.seconds:.2f}s", r.reason) for r in report.results]
    w0 = max([len("check")] + [len(r[0]) for r in rows])
    lines.append(f"{'check':<{w0}}  {'status':<6}  {'time':>7}  reason")
    for name, status, secs, reason in rows:
        lines.append(f"{name:<{w0}}  {status:<6}  {secs:>7}  {reason}")
    for u in report.usage:
        lines.append(
            f"usage ({u['endpoint']}): {u['requests']} requests, {u['total_tokens']} tokens "
            f"(prompt {u['prompt_tokens']}, completion {u['completion_tokens']}); "
            f"{u['rate_limited']} rate-limited, waited {u['waited_s']:g} s"
        )
    counts = Counter(r.status for r in report.results)
    verdict = "OK" if report.ok else "FAILED"
    passed, failed, skipped = (counts.get(s, 0) for s in (PASS, FAIL, SKIP))
    lines.append(f"{verdict}: {passed} passed, {failed} failed, {skipped} skipped")
    return "\n".join(lines)
