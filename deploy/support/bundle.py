"""`kimi-deploy support-bundle -o FILE.tar.gz`: what support needs about a node in one file, no secret in it.

    >>> from deploy.support.bundle import BundleOptions, write_bundle
    >>> result = write_bundle(BundleOptions(output="support.tar.gz"))      # doctest: +SKIP
    >>> result.path, len(result.manifest["files"]) > 5                    # doctest: +SKIP
    (PosixPath('support.tar.gz'), True)

Inside ``kimi-deploy-support-<host>-<UTC time>/``:

- ``MANIFEST.json``: every file with its size, sha256 and source; what is missing and why; how many secrets
  were redacted (never which);
- ``versions.json``: toolkit, Python, OS, the engine pins, the cached engine builds (llama.cpp's BUILD_INFO
  and ``llama-server --version``, the vLLM CPU venv), prometheus/promtool;
- ``inventory.yaml`` (this node, probed now), ``plan.json``, ``rendered/`` (every rendered file; secret files
  replaced, env-file secret lines masked), ``weights.json`` (weights.lock summary and the stat-only verify
  status), ``status.json`` (each node `up` started: running, ready, the cause read from its log);
- ``logs/<node>.log``: the tail of each engine log (``log_bytes`` at most, default 256 KiB), the local
  Prometheus' log, ``journalctl`` of systemd-started units;
- ``reports/``: the last check and bench reports (given with ``--report``, else found in the usual places);
- ``system/nvidia-smi-q.txt``, ``system/nvidia-smi-topo-m.txt`` where nvidia-smi exists;
- ``engine-env.txt``: the engine's own environment report (``vllm collect_env``, SGLang ``check_env``,
  ``llama-server --version``) where it has one.

Every text goes through deploy.secrets.Redactor before it is written; the archive is written 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import __version__, constants, pins
from deploy.errors import InputError
from deploy.fsutil import kind_of, read_json
from deploy.secrets import MASK, Redactor, file_secrets, hf_token_files
from deploy.serving import diagnosis, launch
from deploy.serving import target as launch_target
from deploy.serving.render import ENV_FILE, MANIFEST, MONITORING_DIR

#: Bytes of each log kept (its tail).
LOG_BYTES = 256 * 1024
#: Bytes of any other file kept (a larger one is cut, and the manifest says so).
FILE_BYTES = 4 * 1024 * 1024
#: Seconds each external command (nvidia-smi, collect_env, --version) may take.
COMMAND_TIMEOUT_S = 120.0


@dataclass
class BundleOptions:
    """What to collect; paths that do not exist are listed as missing in the manifest, not errors."""

    output: str | Path = "support-bundle.tar.gz"
    plan: str | Path = "plan.json"
    rendered: str | Path = "rendered"
    state_dir: str | Path | None = None
    reports: list[str | Path] = field(default_factory=list)
    log_bytes: int = LOG_BYTES
    probe_inventory: bool = True
    engine_report: bool = True


@dataclass
class BundleResult:
    path: Path
    manifest: dict[str, Any]


def read_bounded(
    path: Path, limit: int, tail: bool = False, within: Path | None = None
) -> tuple[bytes, int] | str:
    """(bytes, size) of a regular file, at most ``limit`` bytes (the last ones with ``tail``), or why it
    was not read. Never blocks (a FIFO is opened ``O_NONBLOCK`` and refused after ``fstat``), never follows
    a symlink out of ``within`` (resolved first, then opened ``O_NOFOLLOW``), never reads a device.

    >>> read_bounded(Path("/dev/null"), 10)
    '/dev/null: is a character device, not a regular file; not read'
    """
    target = path
    if within is not None:
        target = path.resolve()
        root = within.resolve()
        if target != root and root not in target.parents:
            return f"{path}: leads outside {within} (a symlink); not read"
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | (os.O_NOFOLLOW if within else 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"{path}: is a {kind_of(st.st_mode)}, not a regular file; not read"
        os.set_blocking(fd, True)
        if st.st_size > limit:
            os.lseek(fd, st.st_size - limit if tail else 0, os.SEEK_SET)
        chunks, left = [], limit
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st.st_size
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    finally:
        os.close(fd)


class _Bundle:
    def __init__(self, root: str, redactor: Redactor) -> None:
        self.root = root
        self.redactor = redactor
        self.files: dict[str, bytes] = {}
        self.entries: list[dict[str, Any]] = []
        self.missing: list[dict[str, str]] = []

    def add_text(self, name: str, text: str, source: str, truncated: bool = False) -> None:
        before = self.redactor.count
        data = self.redactor.text(text).encode()
        self.files[name] = data
        self.entries.append(
            {
                "path": name,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "source": source,
                "redactions": self.redactor.count - before,
                **({"truncated": True} if truncated else {}),
            }
        )

    def add_json(self, name: str, data: Any, source: str) -> None:
        self.add_text(name, json.dumps(data, indent=2, default=str) + "\n", source)

    def add_file(
        self,
        name: str,
        path: Path,
        limit: int = FILE_BYTES,
        tail: bool = False,
        within: Path | None = None,
    ) -> str | None:
        """Add a regular file's (last, with ``tail``) ``limit`` bytes, redacted; the text added, or None
        when it was not read (the reason is listed). ``within``: the folder it must resolve inside."""
        got = read_bounded(path, limit, tail, within)
        if isinstance(got, str):
            self.miss(name, got)
            return None
        raw, size = got
        if self.redactor.is_secret_file(path):
            self.add_text(
                name, MASK + "\n" if raw.strip() else "", f"{path} (a secret file: content replaced)"
            )
            return None
        text = raw.decode("utf-8", "replace")
        if size > limit and tail:
            text = text.split("\n", 1)[-1]  # drop the partial first line
        self.add_text(name, text, str(path), truncated=size > limit)
        return text

    def miss(self, item: str, reason: str) -> None:
        self.missing.append({"item": item, "reason": self.redactor.text(reason)})

    def write(self, output: Path, manifest: dict[str, Any]) -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                body = json.dumps(manifest, indent=2).encode()
                for name, data in [("MANIFEST.json", body), *sorted(self.files.items())]:
                    info = tarfile.TarInfo(f"{self.root}/{name}")
                    info.size = len(data)
                    info.mode = 0o600
                    info.mtime = int(time.time())
                    tar.addfile(info, io.BytesIO(data))
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _run(
    argv: list[str], timeout: float = COMMAND_TIMEOUT_S, env: dict[str, str] | None = None
) -> str | None:
    """An external command's output (stdout + stderr), or None when it cannot run."""
    try:
        p = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None if isinstance(exc, OSError) else f"(timed out after {timeout:.0f} s)\n"
    return p.stdout + p.stderr + ("" if p.returncode == 0 else f"\n(exit {p.returncode})\n")


def _versions() -> dict[str, Any]:
    from deploy.engines import builds, vllm_cpu

    out: dict[str, Any] = {
        "kimi-deploy": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "pins": {
            "vllm": pins.VLLM_VERSION,
            "vllm-cpu": pins.VLLM_CPU_VERSION,
            "sglang": pins.SGLANG_VERSION,
            "llama-cpp-python": pins.LLAMA_CPP_PYTHON_VERSION,
            "llama.cpp commit": pins.LLAMA_CPP_COMMIT,
            "ktransformers": pins.KTRANSFORMERS_VERSION,
        },
        "engines": {},
    }
    for layout in builds.installed_llama_cpp_builds():
        info = layout.root / "BUILD_INFO.json"
        if info.is_file():
            with contextlib.suppress(OSError, ValueError):
                out["engines"][layout.key] = read_json(info)
        server = layout.root / "bin" / "llama-server"
        if server.is_file():
            out["engines"][f"{layout.key} llama-server --version"] = (
                _run([str(server), "--version"], 30) or ""
            ).strip()
    venv = vllm_cpu.find_installed()
    if venv is not None:
        out["engines"]["vllm-cpu venv"] = str(venv.path)
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool):
            out[tool] = ((_run([tool, "--version"], 30) or "").strip().splitlines() or [""])[0]
    return out


def _engine_report(engine: str) -> tuple[str, str] | None:
    """(command shown, output) of the engine's own environment report, where this node has the engine."""
    from deploy.engines import builds, registry, vllm_cpu

    eng = registry.find(engine)
    if eng is None:
        return None
    if eng.install.venv is None:
        # built in the kimi-deploy cache, not a venv (llama.cpp): its server's version
        for layout in builds.installed_llama_cpp_builds():
            return f"{layout.server} --version", _run([str(layout.server), "--version"], 30) or ""
        return None
    pythons: list[Path] = []
    venv = vllm_cpu.find_installed() if eng.cpu_build else None
    if venv is not None:
        pythons.append(Path(venv.python))
    from deploy.serving.render import ENGINE_VENV_ROOT

    pythons.append(Path(ENGINE_VENV_ROOT) / eng.install.venv / "bin" / "python")
    module = eng.install.env_report_module
    if not module:
        return None
    for python in pythons:
        if python.is_file():
            env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"} if venv is not None else None
            return f"{python} -m {module}", _run([str(python), "-m", module], env=env) or ""
    return None


def _default_reports(state: Path) -> list[Path]:
    """Where check and bench reports usually are: the Ansible role's, the demo's, the working folder's."""
    found = [state / "check" / "report.json", Path("check.json"), Path(".demo") / "check.json"]
    found += sorted(Path(".").glob("bench*.json")) + sorted((state / "bench").glob("*.json"))
    return [p for p in found if p.is_file()]


def _status(b: _Bundle, state: Path, log_bytes: int) -> list[str]:
    """status.json and the log tails; returns the engines seen."""
    nodes = []
    engines: list[str] = []
    run_dir = state / "run"
    for s in launch.status(state):
        entry: dict[str, Any] = {
            "node": s.node,
            "running": s.running,
            "ready": s.ready,
            "pid": s.pid,
            "url": s.url,
            "detail": s.detail,
            "engine": s.meta.get("engine"),
            "mode": s.meta.get("mode"),
        }
        if s.meta.get("engine"):
            engines.append(str(s.meta["engine"]))
        if s.meta.get("mode") == "systemd":
            unit = str(s.meta.get("unit") or f"kimi-deploy-{s.node}.service")
            journal = _run(["journalctl", "-u", unit, "-n", "2000", "--no-pager"], 60)
            if journal is not None:
                b.add_text(f"logs/{unit}.journal.txt", journal[-log_bytes:], f"journalctl -u {unit}")
        nodes.append(entry)
    logs = sorted(run_dir.glob("*.log")) if run_dir.is_dir() else []
    for log in logs:
        text = b.add_file(f"logs/{log.name}", log, limit=log_bytes, tail=True, within=run_dir)
        node = log.stem
        if text is not None and not any(n["node"] == node and n["running"] for n in nodes):
            # a stopped or failed engine: name the cause from its log, as `up` did
            with contextlib.suppress(OSError):
                found = diagnosis.diagnose(text, returncode=1)
                cause = {"kind": found.kind, "summary": found.summary, "evidence": found.evidence}
                match = next((n for n in nodes if n["node"] == node), None)
                if match is None:
                    nodes.append({"node": node, "running": False, "ready": False, "cause": cause})
                else:
                    match["cause"] = cause
    prom_log = state / launch.PROMETHEUS_DIR / "prometheus.log"
    if prom_log.is_file():
        b.add_file("logs/prometheus.log", prom_log, limit=log_bytes, tail=True, within=state)
    if not logs:
        b.miss("logs/", f"{run_dir}: no engine log (nothing was started here with `kimi-deploy up`)")
    b.add_json("status.json", nodes, f"kimi-deploy status (state {state})")
    return engines


def _weights(b: _Bundle, plan_data: dict[str, Any] | None, rendered_manifest: dict[str, Any] | None) -> None:
    from deploy.weights import lockfile

    dirs: list[Path] = []
    model_path = (rendered_manifest or {}).get("model_path")
    if model_path:
        p = Path(str(model_path))
        dirs.append(p if p.is_dir() else p.parent)
    if plan_data:
        with contextlib.suppress(StopIteration, KeyError, TypeError):
            chosen = next(c for c in plan_data["candidates"] if c["id"] == plan_data["chosen"])
            if chosen["weights"].get("local_dir"):
                dirs.append(Path(chosen["weights"]["local_dir"]))
    seen = []
    for d in dirs:
        # the lock sits in the weights folder, a GGUF may be a level below it
        for folder in (d, d.parent):
            if folder in seen or not lockfile.lock_path(folder).is_file():
                continue
            seen.append(folder)
            try:
                lock = lockfile.read_lock(folder)
                status = lockfile.verification_status(folder)
                b.add_json(
                    "weights.json",
                    {
                        "folder": str(folder),
                        "repo": lock.repo,
                        "commit": lock.commit,
                        "files": len(lock.files),
                        "bytes": sum(f.size for f in lock.files),
                        "verify": {
                            "verified": status.verified,
                            "reason": status.reason,
                            "missing": status.missing,
                            "changed": status.changed,
                            "how": "stat-only against verify's stamp (run `kimi-deploy verify` to re-hash)",
                        },
                    },
                    str(lockfile.lock_path(folder)),
                )
            except Exception as exc:  # a broken lock is itself worth reporting
                b.miss("weights.json", f"{folder}: {exc}")
            return
    b.miss("weights.json", f"no weights.lock in {', '.join(str(d) for d in dirs) or 'the plan or manifest'}")


def write_bundle(opts: BundleOptions) -> BundleResult:
    """Collect everything (see the module docstring) into ``opts.output`` (mode 0600)."""
    output = Path(opts.output).expanduser()
    if output.is_dir():
        raise InputError(f"-o {output}: is a folder; name the .tar.gz to write")
    if opts.log_bytes < 1024:
        raise InputError(f"--log-bytes {opts.log_bytes}: at least 1024")
    state = Path(opts.state_dir or constants.STATE_DIR)
    rendered = Path(opts.rendered)
    env_files = sorted(rendered.glob("*.env")) if rendered.is_dir() else []
    secret_files = [rendered / MONITORING_DIR / "api-key", rendered / ".sglang-api-key.yaml"]
    secret_files += sorted(state.rglob(".sglang-api-key.yaml")) if state.is_dir() else []
    # the environment's and env files' secrets, and files that hold nothing but one
    known = launch_target.secret_values(tuple(env_files))
    redactor = Redactor(known + file_secrets([*secret_files, *hf_token_files()]))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    host = socket.gethostname().split(".")[0] or "node"
    b = _Bundle(f"kimi-deploy-support-{host}-{stamp}", redactor)

    b.add_json("versions.json", _versions(), "kimi-deploy, pins, the engine cache")
    if opts.probe_inventory:
        try:
            from deploy.hardware import inventory

            b.add_text("inventory.yaml", inventory.dump_profile(inventory.probe()), "kimi-deploy inventory")
        except Exception as exc:  # the probe's own failure is a finding
            b.miss("inventory.yaml", f"inventory probe failed: {exc}")

    plan_path = Path(opts.plan)
    plan_data = None
    if plan_path.is_file():
        b.add_file("plan.json", plan_path)
        with contextlib.suppress(OSError, ValueError):
            plan_data = read_json(plan_path)
    else:
        b.miss("plan.json", f"{plan_path}: not found")

    rendered_manifest = None
    if rendered.is_dir():
        # the release that runs (rendered/current), not every release kept on disk; the others are listed
        source = rendered / "current" if (rendered / "current").is_dir() else rendered
        root = source.resolve()
        # every entry that is not a folder: a link out, a FIFO or a device is listed as not read
        for f in sorted(p for p in root.rglob("*") if p.is_symlink() or not p.is_dir()):
            b.add_file(f"rendered/{f.relative_to(root).as_posix()}", f, within=root)
        if (rendered / "history.json").is_file():
            b.add_file("rendered/history.json", rendered / "history.json", within=rendered)
        releases = rendered / "releases"
        if releases.is_dir():
            b.add_json("releases.json", sorted(p.name for p in releases.iterdir()), str(releases))
        with contextlib.suppress(OSError, ValueError):
            rendered_manifest = read_json(rendered / MANIFEST)
    else:
        b.miss("rendered/", f"{rendered}: not found (run `kimi-deploy render`)")

    _weights(b, plan_data, rendered_manifest)
    engines = _status(b, state, opts.log_bytes)

    reports = [Path(r) for r in opts.reports] or _default_reports(state)
    for i, report in enumerate(reports):
        b.add_file(f"reports/{i:02d}-{report.name}", report)
    if not reports:
        b.miss("reports/", "no check or bench report found (pass --report FILE)")

    smi = shutil.which("nvidia-smi")
    if smi:
        for args, name in ((["-q"], "nvidia-smi-q.txt"), (["topo", "-m"], "nvidia-smi-topo-m.txt")):
            out = _run([smi, *args])
            if out is not None:
                b.add_text(f"system/{name}", out, f"nvidia-smi {' '.join(args)}")
    else:
        b.miss("system/nvidia-smi-*.txt", "nvidia-smi not on PATH (no NVIDIA driver on this node)")

    engine = (rendered_manifest or {}).get("engine") or (engines[0] if engines else None)
    if opts.engine_report and engine:
        found = _engine_report(str(engine))
        if found is None:
            b.miss("engine-env.txt", f"{engine} is not installed on this node (no environment report to run)")
        else:
            command, text = found
            b.add_text("engine-env.txt", f"$ {command}\n{text}", command)

    manifest = {
        "schema": 1,
        "created_utc": stamp,
        "host": host,
        "toolkit_version": __version__,
        "env_file": ENV_FILE,
        "files": b.entries,
        "missing": b.missing,
        "redactions": {
            "replaced": redactor.count,
            "known_values": len(redactor.secrets),
            "how": "known secret values (environment, env files, key files, HF token) and patterns "
            "(bearer headers, hf_ tokens, --api-key, secret env lines, api_key fields)",
        },
    }
    b.write(output, manifest)
    return BundleResult(output, manifest)


__all__ = ["BundleOptions", "BundleResult", "LOG_BYTES", "write_bundle"]
