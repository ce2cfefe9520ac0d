"""weights.lock, `verify` and the verification stamp, on real files (git computes the expected blob ids)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.fake_repos import make_gguf_repo, stage

from deploy.cli import cli
from deploy.cli.download_cmd import COMMANDS
from deploy.errors import InputError
from deploy.weights.lockfile import (
    LOCK_NAME,
    QUARANTINE_DIR,
    STAMP_NAME,
    git_blob_oid,
    is_verified,
    missing_files,
    read_lock,
    sha256_file,
    verification_status,
    verify,
)

REPO = "unsloth/Kimi-K2.5-GGUF"

for _c in COMMANDS:
    cli.add_command(_c)


@pytest.fixture()
def staged(tmp_path: Path) -> Path:
    src = make_gguf_repo(tmp_path / "src", part_bytes=256 * 1024)
    return stage(src, REPO, tmp_path / "mirror")


def test_lock_digests_match_hashlib_and_git(staged: Path) -> None:
    lock = read_lock(staged)
    assert lock.repo == REPO and len(lock.commit) == 40
    for f in lock.files:
        data = (staged / f.path).read_bytes()
        assert f.size == len(data)
        if f.path.endswith(".gguf"):
            assert f.sha256 == hashlib.sha256(data).hexdigest()
        else:
            assert f.sha256 is None  # small non-LFS file: only the git blob id, as the Hub lists it
        if shutil.which("git"):
            git = subprocess.run(["git", "hash-object", str(staged / f.path)], capture_output=True, text=True)
            assert f.git_oid == git.stdout.strip()
    assert (
        sha256_file(staged / lock.files[0].path)
        == hashlib.sha256((staged / lock.files[0].path).read_bytes()).hexdigest()
    )
    assert git_blob_oid(staged / "README.md") == lock.file("README.md").git_oid


def test_verify_writes_stamp_and_is_verified_is_stat_only(staged: Path) -> None:
    assert not is_verified(staged)
    assert "never verified" in verification_status(staged).reason
    report = verify(staged)
    assert report.ok and report.checked == len(read_lock(staged).files)
    assert is_verified(staged)
    stamp = json.loads((staged / STAMP_NAME).read_text())
    assert stamp["lock_sha256"] == hashlib.sha256((staged / LOCK_NAME).read_bytes()).hexdigest()
    # Touching a file (same bytes, new mtime) is enough to lose the "verified" state without hashing.
    target = staged / read_lock(staged).files[0].path
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    status = verification_status(staged)
    assert not status.verified and status.changed == [read_lock(staged).files[0].path]
    again = verify(staged, trust_stamp=True)
    assert again.ok and again.checked == 1 and again.skipped == len(read_lock(staged).files) - 1


def test_corrupt_file_is_quarantined_and_stamp_dropped(staged: Path) -> None:
    verify(staged)
    f = next(f for f in read_lock(staged).files if f.sha256)
    p = staged / f.path
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    report = verify(staged)
    assert not report.ok and list(report.mismatched) == [f.path]
    assert not p.exists()
    moved = staged / report.quarantined[f.path]
    assert moved.is_file() and moved.is_relative_to(staged / QUARANTINE_DIR)
    assert not (staged / STAMP_NAME).exists() and not is_verified(staged)
    assert missing_files(staged) == [f.path]


def test_changed_lock_invalidates_stamp(staged: Path) -> None:
    verify(staged)
    lock_file = staged / LOCK_NAME
    lock_file.write_text(lock_file.read_text().replace('"revision": "main"', '"revision": "v2"'))
    assert "changed since" in verification_status(staged).reason


def test_verify_cli_exit_codes_and_json(staged: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["verify", str(staged), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    (staged / "README.md").write_text("tampered\n")
    bad = runner.invoke(cli, ["verify", str(staged)], standalone_mode=False)
    assert bad.exception is not None and getattr(bad.exception, "exit_code", None) == 5
    assert "README.md" in str(bad.exception)


def test_malformed_lock_is_input_error(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_lock(tmp_path)
    with pytest.raises(InputError, match="no weights.lock"):
        read_lock(tmp_path / "empty")
