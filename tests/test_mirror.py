"""`kimi-deploy mirror serve` as a real process on loopback, spoken to by huggingface_hub and raw HTTP."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers.fake_repos import MirrorProcess, kd_env, make_gguf_repo, make_safetensors_repo, run_kd, stage
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.hf_api import RepoFile

from deploy.weights.lockfile import LOCK_NAME, read_lock, write_lock

GGUF = "unsloth/Kimi-K2.5-GGUF"
NATIVE = "moonshotai/Kimi-K2.5"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("mirror")
    stage(make_gguf_repo(base / "src-gguf", part_bytes=512 * 1024), GGUF, base / "root")
    stage(make_safetensors_repo(base / "src-native", shard_bytes=64 * 1024), NATIVE, base / "root")
    return base / "root"


@pytest.fixture(scope="module")
def mirror(root: Path):  # noqa: ANN201
    with MirrorProcess(root) as m:
        yield m


def _raw(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """A request with the path sent byte for byte (no client-side normalisation of `..`)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def test_listing_and_info_match_the_staged_files(mirror: MirrorProcess, root: Path) -> None:
    api = HfApi(endpoint=mirror.url, token=False)
    lock = read_lock(root / GGUF)
    assert api.model_info(GGUF, revision="main").sha == lock.commit
    entries = {
        e.path: e
        for e in api.list_repo_tree(GGUF, recursive=True, revision=lock.commit)
        if isinstance(e, RepoFile)
    }
    on_disk = {
        p.relative_to(root / GGUF).as_posix(): p
        for p in (root / GGUF).rglob("*")
        if p.is_file() and p.name != LOCK_NAME
    }
    assert set(entries) == set(on_disk)
    for path, p in on_disk.items():
        data = p.read_bytes()
        assert entries[path].size == len(data)
        assert entries[path].xet_hash is None
        if path.endswith(".gguf"):
            assert entries[path].lfs.sha256 == hashlib.sha256(data).hexdigest()
    top = [e.path for e in api.list_repo_tree(GGUF, revision=lock.commit)]
    assert "README.md" in top and "UD-TQ1_0" in top and not any("/" in p for p in top)


def test_resolve_headers_redirect_and_range(mirror: MirrorProcess, root: Path) -> None:
    lock = read_lock(root / GGUF)
    big = next(f for f in lock.files if f.sha256)
    head = _raw(mirror.url, "HEAD", f"/{GGUF}/resolve/main/{big.path}")
    assert head.status == 302
    assert head.getheader("X-Repo-Commit") == lock.commit
    assert head.getheader("X-Linked-Etag") == f'"{big.sha256}"'
    assert int(head.getheader("X-Linked-Size")) == big.size
    assert not [h for h in head.headers if h.lower().startswith("x-xet")]  # plain HTTP, never the Xet path
    location = head.getheader("Location")
    assert urlsplit(location).port != urlsplit(mirror.url).port  # a second origin, like the Hub's CDN
    data = (root / GGUF / big.path).read_bytes()
    lo, hi = big.size // 3, big.size // 2
    u = urlsplit(location)
    part = _raw(location, "GET", f"{u.path}?{u.query}", {"Range": f"bytes={lo}-{hi}"})
    assert part.status == 206
    assert part.getheader("Content-Range") == f"bytes {lo}-{hi}/{big.size}"
    assert part.body == data[lo : hi + 1]
    forged = _raw(location, "GET", u.path + "?exp=9999999999&sig=" + "0" * 64)
    assert forged.status == 403
    small = lock.file("README.md")
    head = _raw(mirror.url, "HEAD", f"/{GGUF}/resolve/{lock.commit}/README.md")
    assert head.status == 200 and head.getheader("ETag") == f'"{small.git_oid}"'


def test_real_client_downloads_through_redirect(mirror: MirrorProcess, root: Path, tmp_path: Path) -> None:
    lock = read_lock(root / NATIVE)
    f = next(f for f in lock.files if f.sha256)
    got = hf_hub_download(
        NATIVE, f.path, revision=lock.commit, endpoint=mirror.url, local_dir=tmp_path, token=False
    )
    assert hashlib.sha256(Path(got).read_bytes()).hexdigest() == f.sha256


@pytest.mark.parametrize(
    "path",
    [
        f"/{GGUF}/resolve/main/../../../etc/passwd",
        f"/{GGUF}/resolve/main/..%2F..%2F..%2Fetc%2Fpasswd",
        f"/{GGUF}/resolve/main/%2Fetc%2Fpasswd",
        f"/{GGUF}/resolve/main/UD-TQ1_0/%2E%2E/README.md",
        "/api/models/../../etc/tree/main",
    ],
)
def test_path_traversal_is_refused(mirror: MirrorProcess, path: str) -> None:
    resp = _raw(mirror.url, "GET", path)
    assert resp.status in (400, 404)
    assert b"root:" not in resp.body


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the mirror\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    repo_dir = stage(src, "acme/tiny", tmp_path / "root")
    (repo_dir / "leak.txt").symlink_to(outside)
    lock = read_lock(repo_dir)
    lock.files.append(type(lock.files[0])(path="leak.txt", size=outside.stat().st_size, git_oid="0" * 40))
    write_lock(repo_dir, lock)
    with MirrorProcess(tmp_path / "root") as m:
        resp = _raw(m.url, "GET", "/acme/tiny/resolve/main/leak.txt")
        assert resp.status == 404 and b"not for the mirror" not in resp.body
        assert _raw(m.url, "GET", "/acme/tiny/resolve/main/config.json").status == 200


def test_read_only(mirror: MirrorProcess) -> None:
    for method in ("POST", "PUT", "DELETE"):
        assert _raw(mirror.url, method, f"/api/models/{GGUF}/paths-info/main").status == 405


def test_token_required_and_never_logged(root: Path) -> None:
    canary = "hf_canary_" + os.urandom(8).hex()
    env = kd_env(MIRROR_TOKEN=canary)
    with MirrorProcess(root, "--token-env", "MIRROR_TOKEN", env=env) as m:
        assert _raw(m.url, "GET", f"/api/models/{GGUF}").status == 401
        bad = _raw(m.url, "GET", f"/api/models/{GGUF}", {"Authorization": "Bearer wrong"})
        assert bad.status == 401 and GGUF.encode() in bad.body
        ok = _raw(m.url, "GET", f"/api/models/{GGUF}", {"Authorization": f"Bearer {canary}"})
        assert ok.status == 200 and json.loads(ok.body)["sha"] == read_lock(root / GGUF).commit
        out = m.stop()
    assert canary not in out and canary not in m.log_path.read_text()


def test_path_prefix(root: Path) -> None:
    with MirrorProcess(root, "--path-prefix", "/hf/mirror") as m:
        assert m.url.endswith("/hf/mirror")
        assert HfApi(endpoint=m.url, token=False).model_info(NATIVE).sha == read_lock(root / NATIVE).commit
        assert _raw(m.url, "GET", f"/api/models/{NATIVE}").status == 404


def test_stage_cli_and_errors(tmp_path: Path) -> None:
    src = make_gguf_repo(tmp_path / "src", part_bytes=64 * 1024)
    r = run_kd("mirror", "stage", str(src), "--repo", GGUF, "--into", str(tmp_path / "root"))
    assert r.returncode == 0, r.stderr
    assert read_lock(tmp_path / "root" / GGUF).repo == GGUF
    bad = run_kd("mirror", "stage", str(src), "--repo", "no-slash", "--into", str(tmp_path / "root"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
    empty = run_kd("mirror", "serve", str(tmp_path / "src"))
    assert empty.returncode == 2 and "no staged repos" in empty.stderr
