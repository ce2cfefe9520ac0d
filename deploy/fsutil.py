"""Small filesystem helpers shared by every stage: nothing half-written is left looking complete, and
nothing but a regular file is ever read as one or replaced by one.

    >>> from deploy.fsutil import atomic_write_text, read_regular_bytes
    >>> p = atomic_write_text("/tmp/kimi-doc.txt", "hi\\n")    # doctest: +SKIP
    >>> read_regular_bytes(p, limit=1024)                      # doctest: +SKIP
    b'hi\\n'

Writes follow a symlink to the file it names (as ``>`` in a shell does) and refuse a device, FIFO, socket
or directory instead of replacing it; reads refuse the same without blocking (a FIFO is opened
``O_NONBLOCK`` and checked with ``fstat`` before a byte is read) and stop at a size limit.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from deploy.errors import DiskSpaceError, InputError, NotJson, NotReadable

#: The largest input file (plan, profile, lock, manifest, state) any reader accepts.
MAX_INPUT_BYTES = 64 * 1024 * 1024
#: The most digits an integer in an input file may have: 20 holds every 64-bit count, byte size or
#: timestamp in ns; more is a typo or an attack (Python would spend quadratic time converting it).
MAX_INT_DIGITS = 20


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number this toolkit accepts")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits is not a plausible value")
    return int(text)


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses what no measurement is: NaN, Infinity, a float that overflows to
    infinity (``1e999``) and integers of more than MAX_INT_DIGITS digits (ValueError). Every JSON
    reader in the toolkit parses through it, so each refuses them in the same words.

    >>> loads_strict('{"gib": 1.5}')
    {'gib': 1.5}
    >>> loads_strict('[1e999]')
    Traceback (most recent call last):
    ...
    ValueError: 1e999 is not a finite number
    """
    return json.loads(
        text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int
    )


def kind_of(mode: int) -> str:
    """A file type in words: ``kind_of(os.stat('/dev/null').st_mode)`` -> 'character device'."""
    for test, name in (
        (stat.S_ISREG, "regular file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symlink"),
    ):
        if test(mode):
            return name
    return "special file"


def write_destination(path: str | Path) -> Path:
    """The path an atomic write replaces: ``path`` itself, or for a symlink the file it finally names
    (written through, never replaced by a regular file). A directory, device, FIFO or socket there is
    refused with InputError (exit 2)."""
    p = Path(path)
    if p.is_symlink():
        p = Path(os.path.realpath(p))
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return p
    except OSError as exc:
        raise InputError(f"{path}: cannot write here ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is a {kind_of(st.st_mode)}; refusing to replace it with a regular file")
    return p


def atomic_write_text(path: str | Path, text: str, mode: int = 0o644) -> Path:
    """Write ``text`` to a temp file beside ``path``, fsync, chmod, then rename over ``path``.

    The mode is set before the rename, so a secret-bearing file is never visible world-readable. A symlink
    at ``path`` is written through (its target is replaced); a non-regular file there is refused. A full
    disk (ENOSPC, EDQUOT) is ``deploy.errors.DiskSpaceError`` (exit 4) naming the path.
    """
    path = Path(path)
    dest = write_destination(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskSpaceError(f"{path}: disk full while writing ({exc.strerror})") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any, mode: int = 0o644) -> Path:
    """Write ``data`` as JSON; a NaN or infinity in it is InputError, never written (a reader would refuse
    the whole file afterwards, so one bad figure would brick a store)."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        raise InputError(f"{path}: refusing to write NaN or infinity") from None
    return atomic_write_text(path, text + "\n", mode=mode)


def read_regular_bytes(path: str | Path, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, without ever blocking.

    Raises FileNotFoundError when nothing is there (callers add their own hint) and InputError (exit 2)
    for a directory, FIFO, device or socket, an unreadable file, or one over ``limit``.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise NotReadable(f"{p}: is a directory, expected a file") from None
    except PermissionError:
        raise NotReadable(f"{p}: not readable (permission denied)") from None
    except OSError as exc:
        raise NotReadable(f"{p}: cannot open ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotReadable(f"{p}: is a {kind_of(st.st_mode)}, expected a regular file")
        if st.st_size > limit:
            raise NotReadable(f"{p}: {st.st_size} bytes, more than the {limit} this toolkit reads")
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise NotReadable(f"{p}: more than the {limit} bytes this toolkit reads")
        return b"".join(chunks)
    except NotReadable:
        raise
    except OSError as exc:
        raise NotReadable(f"{p}: cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)


def read_regular_text(path: str | Path, limit: int = MAX_INPUT_BYTES) -> str:
    """``read_regular_bytes`` decoded as UTF-8; binary content is InputError naming the file."""
    data = read_regular_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJson(f"{path}: not UTF-8 text (byte {exc.start})") from None


def read_json(path: str | Path, limit: int = MAX_INPUT_BYTES) -> Any:
    """A drop-in for ``json.loads(Path(path).read_text())`` that never blocks on a FIFO, never reads a
    device or an unbounded file, and never recurses out of the stack: FileNotFoundError when nothing is
    there, NotReadable (an OSError) for what is not a regular file, NotJson (a ValueError) for what is not
    JSON. Files with a schema go through ``deploy.schema.load_json`` instead."""
    text = read_regular_text(path, limit)
    try:
        return loads_strict(text)
    except RecursionError:
        raise NotJson(f"{path}: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise NotJson(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except ValueError as exc:
        raise NotJson(f"{path}: not valid JSON ({exc})") from None
