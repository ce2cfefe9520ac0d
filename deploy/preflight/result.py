"""One pre-flight check's outcome, and the table and JSON the CLI prints.

>>> from deploy.preflight.result import Check, format_table
>>> print(format_table([Check("shm", "pass", "16.0 GiB (need 1.0 GiB)", node="head")]))
CHECK  NODE  STATUS  VALUE
shm    head  pass    16.0 GiB (need 1.0 GiB)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["pass", "fail", "skip"]
STATUSES: tuple[str, ...] = ("pass", "fail", "skip")


@dataclass(frozen=True)
class Check:
    """``name`` is stable (scripts match on it); ``value`` what was measured; ``hint`` says what to do
    when the check failed, or why it was skipped (with the install line for a missing tool)."""

    name: str
    status: Status
    value: str = ""
    hint: str = ""
    node: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: ``{"name", "status", "value", "hint", "node"}``.

        >>> Check("mtu", "fail", "1400 != 1500", "set the same MTU", "worker").to_dict()["status"]
        'fail'
        """
        return asdict(self)


def failed(checks: Sequence[Check]) -> list[Check]:
    """The failed checks, in order.

    >>> failed([Check("a", "pass"), Check("b", "fail")])[0].name
    'b'
    """
    return [c for c in checks if c.status == "fail"]


def format_table(checks: Sequence[Check]) -> str:
    """Aligned columns; a failed or skipped check's hint follows on its own indented line."""
    rows = [("CHECK", "NODE", "STATUS", "VALUE")] + [(c.name, c.node, c.status, c.value) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )
        check = checks[i - 1] if i else None
        if check is not None and check.hint and check.status != "pass":
            lines.append(f"    -> {check.hint}")
    return "\n".join(line.rstrip() for line in lines)


def summary(checks: Sequence[Check]) -> str:
    """``"12 passed, 1 failed, 2 skipped"``.

    >>> summary([Check("a", "pass"), Check("b", "skip")])
    '1 passed, 0 failed, 1 skipped'
    """
    counts = {s: sum(1 for c in checks if c.status == s) for s in STATUSES}
    return f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
