"""Verification inside the download stream: every byte is hashed as it is written, so a finished file is
verified without reading it back.

    >>> import io
    >>> from deploy.weights.lockfile import LockedFile
    >>> import hashlib
    >>> data = b"weights"
    >>> w = HashingWriter(io.BytesIO(), LockedFile("a.bin", len(data), hashlib.sha256(data).hexdigest()))
    >>> w.write(data)
    7
    >>> w.problem()

The transfer itself is the library's ``http_get`` (its Range resume on a dropped connection, its timeouts,
its retries): it is handed a ``HashingWriter`` instead of a bare file, the documented way to give it a file
object. A resumed file hashes the prefix already on disk once, then the new bytes. If anything moves the
write position other than forward (the library rewinds and truncates when a server answers a Range request
with the whole file), the prefix up to the new position is hashed again from disk; a write at a position
that was not the end of what was hashed marks the stream unusable and the file is re-hashed from disk
after it lands, so a digest from the stream is only ever one of exactly the bytes in the file.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, BinaryIO

from deploy.weights.lockfile import LockedFile

_PREFIX_CHUNK = 8 * 1024 * 1024


def new_hasher(f: LockedFile) -> Any:  # noqa: ANN401 - hashlib's object has no public type
    """The digest the lock holds for ``f``: sha256 for LFS files, else the git blob sha1 (size-prefixed).

    >>> new_hasher(LockedFile("c.json", 2, None, "0" * 40)).name
    'sha1'
    """
    if f.sha256 is not None or f.git_oid is None:
        return hashlib.sha256()
    return hashlib.sha1(f"blob {f.size}\0".encode())


class HashingWriter:
    """A binary file object that hashes what is written through it, in order, as it is written.

    ``fh`` must be an unbuffered file opened for reading and writing (``open(p, "r+b", buffering=0)``), so a
    kill loses nothing already handed to ``write`` and the prefix can be read back on a rewind."""

    def __init__(self, fh: BinaryIO, f: LockedFile) -> None:
        self.fh, self.file = fh, f
        self._hash = new_hasher(f)
        self.hashed = 0  # bytes covered by the digest, always the file's first `hashed` bytes
        self.prefix_bytes = 0  # of those, bytes read back from disk (a resume's prefix, or a rewind)
        self.broken = False

    def absorb_prefix(self, upto: int) -> None:
        """Hash the file's first ``upto`` bytes from disk (the part a previous run already wrote)."""
        self._hash = new_hasher(self.file)
        self.hashed = 0
        self.fh.seek(0)
        left = upto
        while left > 0:
            chunk = self.fh.read(min(_PREFIX_CHUNK, left))
            if not chunk:
                self.broken = True  # shorter than its size said: the digest cannot describe the file
                break
            self._hash.update(chunk)
            left -= len(chunk)
            self.hashed += len(chunk)
        self.prefix_bytes += self.hashed
        self.fh.seek(upto)

    # -- the file-object surface http_get uses: write, tell, seek, truncate, flush
    def write(self, data: bytes) -> int:
        if self.fh.tell() != self.hashed:
            self.broken = True
        n = 0
        view = memoryview(data)
        while n < len(view):  # an unbuffered write may be short
            n += self.fh.write(view[n:]) or 0
        if not self.broken:
            self._hash.update(view)
            self.hashed += n
        return n

    def tell(self) -> int:
        return self.fh.tell()

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        return self.fh.seek(pos, whence)

    def truncate(self, size: int | None = None) -> int:
        size = self.fh.tell() if size is None else size
        out = self.fh.truncate(size)
        if size < self.hashed:
            where = self.fh.tell()
            self.absorb_prefix(size)
            self.fh.seek(where)
        return out

    def flush(self) -> None:
        self.fh.flush()

    def fileno(self) -> int:
        return self.fh.fileno()

    # -- the verdict
    def complete(self) -> bool:
        """True when the digest covers exactly the file's locked size, in order."""
        return not self.broken and self.hashed == self.file.size == os.fstat(self.fh.fileno()).st_size

    def problem(self) -> str | None:
        """None when what was written matches the lock, else the reason (like ``verify``'s)."""
        got = self._hash.hexdigest()
        if self.file.sha256 is not None:
            return None if got == self.file.sha256 else f"sha256 {got[:12]}… != {self.file.sha256[:12]}…"
        if self.file.git_oid is not None:
            return None if got == self.file.git_oid else f"git blob {got[:12]}… != {self.file.git_oid[:12]}…"
        return None
