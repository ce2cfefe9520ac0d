"""Check a weights folder against weights.lock inside a pod, before the engine starts (stdlib only: it runs
in the engine's image, where the toolkit is not installed). Shipped by `render --target k8s` in a ConfigMap.

    python3 k8s_weights_check.py LOCK WEIGHTS_DIR LOCK_SHA256

Exit 0 when the lock's own sha256 is LOCK_SHA256 and every locked file has its size and digest (sha256 for
LFS files, else the git blob sha1, as deploy.weights.lockfile); exit 1, naming each missing or mismatching
file, otherwise. Paths that leave WEIGHTS_DIR are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

CHUNK = 8 * 1024 * 1024


def digest(path: str, size: int, git: bool) -> str:
    h = hashlib.sha1(f"blob {size}\0".encode()) if git else hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def problems(lock: dict, root: str) -> list[str]:
    found = []
    base = os.path.realpath(root)
    for f in lock["files"]:
        path = os.path.realpath(os.path.join(root, f["path"]))
        if os.path.commonpath([base, path]) != base and not os.path.islink(os.path.join(root, f["path"])):
            found.append(f"{f['path']}: outside {root}")
        elif not os.path.isfile(path):
            found.append(f"{f['path']}: missing")
        elif os.path.getsize(path) != f["size"]:
            found.append(f"{f['path']}: {os.path.getsize(path)} bytes, the lock says {f['size']}")
        else:
            want = f.get("sha256") or f.get("git_oid")
            got = digest(path, f["size"], git=not f.get("sha256"))
            if got != want:
                found.append(f"{f['path']}: digest {got}, the lock says {want}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: k8s_weights_check.py LOCK WEIGHTS_DIR LOCK_SHA256", file=sys.stderr)
        return 2
    lock_file, root, want = argv
    with open(lock_file, "rb") as fh:
        raw = fh.read()
    if hashlib.sha256(raw).hexdigest() != want:
        print(
            f"{lock_file}: sha256 {hashlib.sha256(raw).hexdigest()}, the manifest pins {want}",
            file=sys.stderr,
        )
        return 1
    found = problems(json.loads(raw), root)
    for line in found:
        print(f"weights: {line}", file=sys.stderr)
    if found:
        print(
            f"weights: {len(found)} file(s) do not match weights.lock: the engine is not started",
            file=sys.stderr,
        )
        return 1
    print(f"weights: every file of {lock_file} matches")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
