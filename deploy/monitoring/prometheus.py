"""Run a Prometheus server on loopback for a rendered ``monitoring/`` folder, and ask it questions.

    >>> from deploy.monitoring.prometheus import start, load_recorded
    >>> server = start("rendered/monitoring/prometheus.yml", "state/prometheus")   # doctest: +SKIP
    >>> server.query('up{job="kimi-deploy"}')[0]["value"][1]                          # doctest: +SKIP
    '1'
    >>> server.firing()                                                               # doctest: +SKIP
    []

The server listens on 127.0.0.1 only, keeps its data under ``data_dir`` (a scratch folder, never the system
one) and records itself in ``data_dir/prometheus.json`` so a later ``stop_recorded`` (``kimi-deploy down``)
finds it. Used by ``demo --monitoring`` and the end-to-end tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from deploy.deadline import http_get
from deploy.errors import PrometheusError
from deploy.fsutil import atomic_write_json, read_json

RECORD = "prometheus.json"
#: Seconds to wait for /-/ready after the start (it takes about a second here).
READY_TIMEOUT_S = 60.0
#: Seconds one API question may take in all, connect to last byte (deploy.deadline: a server trickling its
#: answer, headers included, is cut there).
API_TIMEOUT_S = 10.0


@dataclass
class Prometheus:
    """A Prometheus server this toolkit started (or found recorded)."""

    pid: int
    port: int
    data_dir: Path
    config: Path
    #: seconds each API question may take in all (deploy.deadline.http_get)
    timeout_s: float = API_TIMEOUT_S

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: Any) -> Any:
        try:
            r = http_get(f"{self.url}/api/v1/{path}", params=params, timeout_s=self.timeout_s)
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            raise PrometheusError(f"Prometheus {self.url}: {type(exc).__name__}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus {path}: {body.get('error') or r.status_code}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = self.api("query", query=expr)
        return data["result"] if isinstance(data.get("result"), list) else [data]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def firing(self) -> list[str]:
        """Names of the alerts firing now."""
        return sorted(a["labels"]["alertname"] for a in self.alerts() if a.get("state") == "firing")

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def alive(self) -> bool:
        """The pid runs and is a prometheus (not a later process that reused the pid)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"prometheus" in cmdline.split(b"\0")[0]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; forgets the record."""
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGTERM)
        end = time.monotonic() + grace_s
        while self.alive() and time.monotonic() < end:
            _reap(self.pid)
            time.sleep(0.1)
        if self.alive():
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        _reap(self.pid)
        (self.data_dir / RECORD).unlink(missing_ok=True)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(config: str | Path, data_dir: str | Path, port: int | None = None) -> Prometheus:
    """Start ``prometheus`` for ``config`` on 127.0.0.1 (a free port unless given) and wait until ready."""
    exe = shutil.which("prometheus")
    if exe is None:
        raise PrometheusError("prometheus not found on PATH (Debian: apt-get install prometheus)")
    config = Path(config).resolve()
    if not config.is_file():
        raise PrometheusError(f"{config}: no such Prometheus config (run `kimi-deploy render` first)")
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = open(data / "prometheus.log", "ab")  # noqa: SIM115 - the server outlives this call
    try:
        proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={data / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            cwd=config.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()
    server = Prometheus(proc.pid, port, data, config)
    end = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = (data / "prometheus.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise PrometheusError(f"prometheus exited ({proc.returncode}): {' | '.join(tail)}")
        with contextlib.suppress(requests.RequestException):
            if http_get(f"{server.url}/-/ready", timeout_s=2).status_code == 200:
                record = {"pid": proc.pid, "port": port, "config": str(config), "data_dir": str(data)}
                atomic_write_json(data / RECORD, record)
                return server
        time.sleep(0.2)
    server.stop()
    raise PrometheusError(f"prometheus on port {port} not ready after {READY_TIMEOUT_S:.0f} s")


def load_recorded(data_dir: str | Path) -> Prometheus | None:
    """The server recorded in ``data_dir`` if it still runs."""
    try:
        rec = read_json(Path(data_dir) / RECORD)
        server = Prometheus(int(rec["pid"]), int(rec["port"]), Path(rec["data_dir"]), Path(rec["config"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return server if server.alive() else None


def stop_recorded(data_dir: str | Path) -> str | None:
    """Stop the recorded server; a line saying so, or None when none runs."""
    server = load_recorded(data_dir)
    if server is None:
        (Path(data_dir) / RECORD).unlink(missing_ok=True)
        return None
    server.stop()
    return f"prometheus: stopped pid {server.pid} ({server.url})"


__all__ = ["Prometheus", "PrometheusError", "free_port", "load_recorded", "start", "stop_recorded"]
