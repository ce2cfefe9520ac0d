"""Terminal output: rich tables and live views on a terminal, the same content as plain lines elsewhere.

Every human report has one plain form (stable, line by line, what CI logs, Ansible and ``grep`` read) and,
on a terminal, a rich form built from the same rows. ``--json`` never comes through here.

    >>> from deploy import console
    >>> console.show("a  b\\n1  2", console.table(["a", "b"], [("1", "2")]))
    a  b
    1  2
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

#: Style of a status word wherever one is shown (plan candidates, check verdicts).
STATUS_STYLES = {
    "ready": "green",
    "running, not ready": "yellow",
    "not running": "red",
    "runnable": "green",
    "reduced": "yellow",
    "tight": "yellow",
    "not_runnable": "red",
    "incompatible": "dim",
    "PASS": "green",
    "FAIL": "bold red",
    "SKIP": "dim",
}


def is_terminal(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (default stdout) is an interactive terminal that can take rich output."""
    stream = stream or sys.stdout
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def make_console(stream: TextIO | None = None) -> Console:
    """A rich console on ``stream``; callers have already decided it is a terminal (:func:`is_terminal`)."""
    from rich.console import Console

    return Console(file=stream or sys.stdout, highlight=False, force_terminal=True)


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str | None = None,
    right: Iterable[str] = (),
    styled_column: str | None = None,
) -> Table:
    """A rich table of string cells, ``right`` columns right-aligned, ``styled_column`` coloured by status."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    right = set(right)
    rows = [list(row) for row in rows]
    out = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", title_justify="left")
    for i, name in enumerate(columns):
        # numbers and statuses never wrap (a cut-off number misleads); text columns wrap on words
        keep = name in right or name == styled_column
        widest = max([len(name)] + [len(str(row[i])) for row in rows]) if keep else None
        out.add_column(name, justify="right" if name in right else "left", no_wrap=keep, min_width=widest)
    styled = list(columns).index(styled_column) if styled_column in columns else None
    for row in rows:
        if styled is not None:
            row[styled] = Text(row[styled], style=STATUS_STYLES.get(row[styled], ""))
        out.add_row(*row)
    return out


def show(plain: str, *renderables: Any, stream: TextIO | None = None) -> None:
    """Print ``renderables`` with rich on a terminal, else the plain text exactly."""
    stream = stream or sys.stdout
    if renderables and is_terminal(stream):
        make_console(stream).print(*renderables)
    else:
        stream.write(plain + "\n")
        stream.flush()


__all__ = ["STATUS_STYLES", "is_terminal", "make_console", "show", "table"]
