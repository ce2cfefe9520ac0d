"""Verification inside the download stream (deploy/weights/stream.py): the digest is taken as the bytes are
written, so `download` verifies with no second read of what it fetched.

The end-to-end tests run the real huggingface_hub client (its ``http_get`` writes into our ``HashingWriter``)
against a real mirror process; they fail if the hook stops seeing the bytes (the digests would then come
from a second read, which ``verify`` reports in ``bytes_hashed``). The writer's own tests use real files.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers.fake_repos import KD, MirrorProcess, kd_env, make_gguf_repo, run_kd, stage, write_plan

from deploy.weights.lockfile import LockedFile, is_verified, read_lock
from deploy.weights.stream import HashingWriter

GGUF = "unsloth/Kimi-K2.5-GGUF"
QUANT = "UD-TQ1_0"
PART = 2 * 1024 * 1024


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "hf-home").mkdir()
    return kd_env(hf_home=tmp_path / "hf-home")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("repos")
    stage(make_gguf_repo(base / "src-gguf", part_bytes=PART), GGUF, base / "root")
    return base / "root"


def _download(root: Path, tmp_path: Path, env: dict[str, str], *mirror_args: str) -> tuple[dict, Path]:
    dest = tmp_path / "weights"
    plan = write_plan(tmp_path / "plan.json", GGUF, [f"{QUANT}/*", "README.md"], dest)
    with MirrorProcess(root, *mirror_args, env=env) as m:
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), dest


def test_fresh_download_is_verified_from_the_stream_alone(
    root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    out, dest = _download(root, tmp_path, env)
    lock = read_lock(dest)
    n = len(lock.files)
    assert any(f.git_oid and not f.sha256 for f in lock.files)  # README.md: a git blob sha1, not LFS
    # every byte fetched was hashed as it arrived, and verify read none of them back
    assert out["stream"] == {"files": n, "bytes_hashed": out["bytes_fetched"], "bytes_prefix": 0}
    assert out["verify"]["prechecked"] == n and out["verify"]["bytes_hashed"] == 0
    assert out["verify"]["bytes_prechecked"] == lock.total_bytes and out["verified"] and is_verified(dest)
    assert f"{n} hashed ({n} while downloading" in run_kd_summary(root, tmp_path, env)
    # the explicit re-hash still reads every byte
    v = run_kd("verify", str(dest), "--json", env=env)
    assert v.returncode == 0 and json.loads(v.stdout)["bytes_hashed"] == lock.total_bytes


def run_kd_summary(root: Path, tmp_path: Path, env: dict[str, str]) -> str:
    """The human summary line of a fresh download into another folder."""
    dest = tmp_path / "again"
    plan = write_plan(tmp_path / "plan2.json", GGUF, [f"{QUANT}/*", "README.md"], dest)
    with MirrorProcess(root, env=env) as m:
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_dropped_connection_resumed_in_process_keeps_one_digest(
    root: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """The library resumes a cut transfer by Range into the same writer: the digest goes on, no re-read."""
    out, dest = _download(root, tmp_path, env, "--fault-drop-after", str(PART * 3 // 4))
    assert out["stream"]["bytes_hashed"] == out["bytes_fetched"] and out["verify"]["bytes_hashed"] == 0
    assert is_verified(dest)


def test_corrupt_byte_in_the_stream_is_set_aside(root: Path, tmp_path: Path, env: dict[str, str]) -> None:
    dest = tmp_path / "weights"
    plan = write_plan(tmp_path / "plan.json", GGUF, [f"{QUANT}/*"], dest)
    victim = sorted(f.path for f in read_lock(root / GGUF).files if f.path.startswith(QUANT + "/"))[0]
    with MirrorProcess(root, "--fault-corrupt", victim, env=env) as m:
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--json", env=env)
    assert r.returncode == 5 and victim in r.stderr, r.stderr
    assert not (dest / victim).exists() and not is_verified(dest)


@pytest.mark.slow
def test_killed_download_hashes_its_prefix_once_then_the_new_bytes(
    tmp_path: Path, env: dict[str, str]
) -> None:
    size = 24 * 1024 * 1024
    src = tmp_path / "src"
    src.mkdir()
    (src / "model-00001-of-000001.safetensors").write_bytes(random.Random(5).randbytes(size))
    stage(src, "acme/prefix", tmp_path / "root")
    dest = tmp_path / "dest"
    plan = write_plan(tmp_path / "plan.json", "acme/prefix", ["*.safetensors"], dest)
    with MirrorProcess(tmp_path / "root", "--throttle", str(8 * 1024 * 1024), env=env) as m:
        proc = subprocess.Popen(
            [KD, "download", "--plan", str(plan), "--endpoint", m.url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        have, deadline = 0, time.monotonic() + 60
        while have < size // 2 and time.monotonic() < deadline:
            parts = list((dest / ".cache").rglob("*.incomplete")) if (dest / ".cache").exists() else []
            have = max((p.stat().st_size for p in parts), default=0)
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) != 0 and size // 2 <= have < size
        r = run_kd("download", "--plan", str(plan), "--endpoint", m.url, "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    kept = out["bytes_resumed"]
    assert kept >= size // 2
    # the kept prefix was read back once, the rest hashed as it arrived: one digest over the whole file
    assert out["stream"] == {"files": 1, "bytes_hashed": size, "bytes_prefix": kept}
    assert out["verify"]["bytes_hashed"] == 0 and is_verified(dest)


# ---------------------------------------------------------------- the writer on real files


def _writer(path: Path, data: bytes) -> tuple[HashingWriter, object]:
    path.touch()
    fh = open(path, "r+b", buffering=0)  # noqa: SIM115 - closed by the caller
    return HashingWriter(fh, LockedFile(path.name, len(data), hashlib.sha256(data).hexdigest())), fh


def test_writer_rewind_and_truncate_rehashes_the_kept_prefix(tmp_path: Path) -> None:
    """What http_get does when a server answers a Range request with the whole file: rewind, truncate,
    write everything again. The digest must describe the file's final bytes."""
    data = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    w, fh = _writer(tmp_path / "f", data)
    with fh:
        w.write(b"\0" * 1024)  # a wrong prefix that the rewind throws away
        w.seek(0)
        w.truncate()
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])
        assert w.complete() and w.problem() is None
    w2, fh2 = _writer(tmp_path / "g", data)
    with fh2:
        w2.write(data[:1000])
        w2.seek(500)
        w2.truncate()  # keeps 500 bytes: they are read back and hashed again
        w2.write(data[500:])
        assert w2.complete() and w2.problem() is None and w2.prefix_bytes == 500


def test_writer_refuses_to_vouch_for_an_out_of_order_write(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(4096)
    w, fh = _writer(tmp_path / "f", data)
    with fh:
        w.write(data[:1024])
        w.seek(2048)
        w.write(data[2048:])
        w.seek(1024)
        w.write(data[1024:2048])
        assert not w.complete()  # the file is right, but the stream cannot say so: verify re-hashes it


def test_writer_resumes_from_a_prefix_on_disk(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(100_000)
    (tmp_path / "f").write_bytes(data[:60_000])
    w, fh = _writer(tmp_path / "f", data)
    with fh:
        w.absorb_prefix(60_000)
        w.write(data[60_000:])
        assert w.complete() and w.problem() is None and w.prefix_bytes == 60_000
    bad = bytearray(data[:60_000])
    bad[7] ^= 1
    (tmp_path / "g").write_bytes(bytes(bad))
    w, fh = _writer(tmp_path / "g", data)
    with fh:
        w.absorb_prefix(60_000)
        w.write(data[60_000:])
        assert w.complete() and w.problem() is not None and w.problem().startswith("sha256")
