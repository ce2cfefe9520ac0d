"""Download progress: a live status on a terminal, plain periodic lines otherwise (Ansible, CI logs).

The download samples byte counts from disk and calls ``update``; this module only formats:

    >>> p = Progress(total=10 * 2**30, files=64, stream=sys.stderr, mode="plain")   # doctest: +SKIP
    >>> p.update(done=2**30, active={"model-00001-of-000064.safetensors": (2**29, 2**30)})  # doctest: +SKIP
    download  1.07/10.74 GB  10.0%  120.3 MB/s  ETA 1m20s  files 0/64
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, TextIO

TTY = "tty"
PLAIN = "plain"
QUIET = "quiet"


def human_bytes(n: float) -> str:
    """``human_bytes(1.5e9)`` -> ``'1.50 GB'`` (decimal units, as disk vendors and the Hub count)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def human_duration(seconds: float | None) -> str:
    """``human_duration(3725)`` -> ``'1h02m'``; None -> ``'?'``."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def pick_mode(stream: TextIO) -> str:
    """TTY status on an interactive terminal (not TERM=dumb), plain lines otherwise."""
    from deploy import console

    return TTY if console.is_terminal(stream) else PLAIN


class Progress:
    """Formats byte counts as a rate/ETA display; ``interval`` is the plain-line period in seconds."""

    def __init__(
        self,
        total: int,
        files: int,
        stream: TextIO | None = None,
        mode: str = PLAIN,
        interval: float = 10.0,
        label: str = "download",
    ) -> None:
        self.total = total
        self.files = files
        self.stream = stream or sys.stderr
        self.mode = mode
        self.interval = interval
        self.label = label
        self.start = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque(maxlen=30)
        self._last_line = float("-inf")
        self._live: Any = None
        self.done = 0

    def rate(self) -> float:
        """Bytes per second over the last ~30 samples."""
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def line(self, files_done: int = 0) -> str:
        rate = self.rate()
        if rate <= 0 and self.done:
            # Too few samples for a recent rate (a short run): use the average since the start.
            elapsed = time.monotonic() - self.start
            first = self._samples[0][1] if self._samples else 0
            rate = (self.done - first) / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        return (
            f"{self.label}  {human_bytes(self.done)}/{human_bytes(self.total)}  {pct:5.1f}%  "
            f"{human_bytes(rate)}/s  ETA {human_duration(eta)}  files {files_done}/{self.files}"
        )

    def update(
        self,
        done: int,
        active: dict[str, tuple[int, int]] | None = None,
        files_done: int = 0,
        force: bool = False,
    ) -> None:
        now = time.monotonic()
        self.done = done
        self._samples.append((now, done))
        if self.mode == QUIET:
            return
        if self.mode == PLAIN:
            if force or now - self._last_line >= self.interval:
                self._last_line = now
                self.stream.write(self.line(files_done) + "\n")
                self.stream.flush()
            return
        self._live_view().update(self._renderable(files_done, active or {}), refresh=True)

    def message(self, text: str) -> None:
        """A line that stays (retries, stalls), printed above the live status."""
        if self.mode == QUIET:
            return
        if self.mode == TTY:
            self._live_view().console.print(text, markup=False, highlight=False)
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live view (the last frame stays on screen); plain and quiet modes have nothing to end."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _live_view(self) -> Any:
        if self._live is None:
            from rich.live import Live

            from deploy import console

            self._live = Live(console=console.make_console(self.stream), auto_refresh=False, transient=False)
            self._live.start()
        return self._live

    def _renderable(self, files_done: int, active: dict[str, tuple[int, int]]) -> Any:
        """The overall line, then a bar for each of the (at most four) files being fetched."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        files = Table.grid(padding=(0, 1))
        for name, (have, size) in sorted(active.items())[:4]:
            pct = 100.0 * have / size if size else 100.0
            bar = ProgressBar(total=size or 1, completed=have, width=30)
            files.add_row(
                Text(f"  {name[-60:]}"), bar, Text(f"{human_bytes(have)}/{human_bytes(size)} {pct:5.1f}%")
            )
        return Group(Text(self.line(files_done)), files)
