"""Option types for numbers: every number an option takes is finite and inside a range derived from what
it measures, refused by click with one ``error:`` line (exit 2) before any work starts.

    >>> SECONDS.convert("2.5", None, None)
    2.5
    >>> Finite(0, 10).convert("nan", None, None)
    Traceback (most recent call last):
    ...
    click.exceptions.BadParameter: 'nan' is not a finite number.
"""

from __future__ import annotations

import math
from typing import Any

import click

#: A week: no wait, deadline or run this toolkit starts is meant to last longer.
WEEK_S = 7 * 24 * 3600.0
#: Requests in flight per endpoint: far above any server's slots, far below what would exhaust file handles.
MAX_CONCURRENCY = 4096
#: Tokens per request (input or output): a thousand times the longest context any catalog model has.
MAX_TOKENS = 1 << 30


class Finite(click.ParamType):
    """A finite float in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN and infinity are refused."""

    name = "number"

    def __init__(self, low: float, high: float, *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        too_low = number <= self.low if self.low_open else number < self.low
        if too_low or number > self.high:
            bracket = "(" if self.low_open else "["
            self.fail(f"{value!r} is not in {bracket}{self.low:g}, {self.high:g}].", param, ctx)
        return number


class Whole(click.ParamType):
    """An integer in ``[low, high]`` (5,000 digits or ``1e20`` are refused, not converted)."""

    name = "integer"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        text = str(value).strip()
        if len(text.lstrip("+-")) > 20:
            self.fail(f"{text[:24]}... is not a plausible value.", param, ctx)
        try:
            number = int(text)
        except ValueError:
            self.fail(f"{value!r} is not an integer.", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{number} is not in [{self.low}, {self.high}].", param, ctx)
        return number


def whole_list(text: str | None, low: int, high: int) -> list[int] | None:
    """``"1,2,4"`` -> [1, 2, 4]; each must be a Whole in ``[low, high]`` (ValueError otherwise).

    >>> whole_list("1,2,4", 1, 8)
    [1, 2, 4]
    """
    if text is None:
        return None
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if len(part.lstrip("+-")) > 20 or not part.lstrip("+-").isdigit():
            raise ValueError(part)
        number = int(part)
        if not low <= number <= high:
            raise ValueError(part)
        out.append(number)
    return out


#: Seconds of a wait or a run: positive, at most a week.
SECONDS = Finite(0, WEEK_S, low_open=True)
#: Seconds a single request may take (the checker's own ceiling).
REQUEST_SECONDS = Finite(0, 3600, low_open=True)
FRACTION = Finite(0, 1)


class Port(Whole):
    """A TCP port: 1-65535 (``any_free``: 0 too, the kernel picks one)."""

    name = "port"

    def __init__(self, any_free: bool = False) -> None:
        super().__init__(0 if any_free else 1, 65535)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{str(value)[:24]} is not a port ({self.low}-65535).", param, ctx)


PORT = Port()
#: A port, or 0 for any free one.
PORT_OR_ANY = Port(any_free=True)

__all__ = [
    "FRACTION",
    "MAX_CONCURRENCY",
    "MAX_TOKENS",
    "PORT",
    "PORT_OR_ANY",
    "Port",
    "REQUEST_SECONDS",
    "SECONDS",
    "WEEK_S",
    "Finite",
    "Whole",
    "whole_list",
]
