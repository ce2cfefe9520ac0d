"""How systemd reads a unit's command line, for tests of what the renderer writes.

A reading of systemd.service(5), "Command lines": words are split on whitespace; double- and single-quoted
runs are one word; C escapes (``\\n``, ``\\\\``, ``\\"``) are unescaped; ``$$`` is a dollar and ``%%`` a
percent, while a lone ``$NAME``/``${NAME}`` (environment) or ``%x`` (specifier) would be substituted, which
this reader reports as an error so a test can assert no rendered value is ever substituted.
"""

from __future__ import annotations

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f", "r": "\r"}


class Substitution(ValueError):
    """The line has a ``$VAR`` or ``%x`` that systemd would replace."""


def command_words(line: str) -> list[str]:
    """``command_words('/bin/bash -c "echo $$HOME"')`` -> ['/bin/bash', '-c', 'echo $HOME']."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        word, quote = "", None
        while i < n and (quote or line[i] not in " \t"):
            ch = line[i]
            if quote is None and ch in "\"'":
                quote = ch
            elif ch == quote:
                quote = None
            elif ch == "\\" and i + 1 < n:
                i += 1
                if line[i] not in _ESCAPES:
                    raise ValueError(f"unknown escape \\{line[i]}")
                word += _ESCAPES[line[i]]
            elif ch in "$%":
                if i + 1 < n and line[i + 1] == ch:
                    word += ch
                    i += 1
                else:
                    raise Substitution(f"systemd would substitute {line[i : i + 8]!r}")
            else:
                word += ch
            i += 1
        if quote:
            raise ValueError("unterminated quote")
        words.append(word)
    return words
