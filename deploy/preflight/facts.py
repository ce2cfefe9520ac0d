"""What one node reports about itself: the facts the checks compare against the plan and each other.

    >>> from deploy.preflight.facts import collect
    >>> facts = collect({"weights_dir": "/models", "interface": "eth0", "ports": [8000]})
    >>> sorted(facts)[:3]
    ['clock', 'cpu_flags', 'cuda_version']

Standard library only and no import of the toolkit: ``remote_argv`` sends this file's source over ssh to
the other nodes (to whatever ``python3`` they have), so a node needs no toolkit to be checked. Run as a
script, ``collect`` prints the facts as JSON; ``listen PORT...`` binds the ports (TCP, every address),
prints the bound ones and holds them until its stdin closes, so the head can test that they are reachable;
``connect ADDRESS PORT...`` tries a TCP connection to each and prints the ones that failed, so a node other
than the head can test that it reaches another (the KV transfer of a prefill/decode split).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SMI_QUERY = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,persistence_mode", "--format=csv"]
FABRIC_MANAGER = ["systemctl", "is-active", "nvidia-fabricmanager"]
LOCK_NAME = "weights.lock"


def _run(argv: list[str], timeout: float = 10) -> dict[str, Any] | None:
    """``{"rc", "out", "err"}`` of a command, or None when it is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"rc": -1, "out": "", "err": str(exc)}
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr.strip()[-500:]}


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def interfaces() -> dict[str, dict[str, Any]]:
    """Every interface's MTU, state and IPv4/IPv6 addresses (``ip -j addr``; sysfs for the MTU)."""
    out: dict[str, dict[str, Any]] = {}
    for d in sorted(Path("/sys/class/net").glob("*")):
        mtu = _read(d / "mtu").strip()
        speed = _read(d / "speed").strip()
        out[d.name] = {
            "mtu": int(mtu) if mtu.isdigit() else None,
            "state": _read(d / "operstate").strip(),
            "speed_mbps": int(speed) if speed.isdigit() else None,
            "addresses": [],
        }
    listing = _run(["ip", "-j", "addr", "show"])
    if listing and listing["rc"] == 0:
        for link in json.loads(listing["out"] or "[]"):
            entry = out.setdefault(link.get("ifname", ""), {"mtu": link.get("mtu"), "addresses": []})
            entry["addresses"] = [a.get("local") for a in link.get("addr_info", []) if a.get("local")]
    return out


def nearest_existing(path: str) -> str:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return str(p)


def ports_busy(ports: list[int]) -> list[int]:
    """The ports something already listens on (a bind on every address fails)."""
    busy = []
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError:
                busy.append(port)
    return busy


IB_SYSFS = "/sys/class/infiniband"
#: A GID slot nobody configured reads as all zeroes.
EMPTY_GID = "0000:0000:0000:0000:0000:0000:0000:0000"


def infiniband(root: str | Path = IB_SYSFS) -> dict[str, dict[str, str]]:
    """``{device: {port: state}}`` from /sys/class/infiniband (``"4: ACTIVE"`` is up), as ibstat shows."""
    found: dict[str, dict[str, str]] = {}
    for port in sorted(Path(root).glob("*/ports/*")):
        found.setdefault(port.parent.parent.name, {})[port.name] = _read(port / "state").strip()
    return found


def gids(indexes: list[int], root: str | Path = IB_SYSFS) -> dict[str, dict[str, dict[str, str]]]:
    """``{device: {port: {index: "RoCE v2" | "IB/RoCE v1" | "" (empty slot)}}}`` for the GID ``indexes``
    (sysfs ``gids/N`` and ``gid_attrs/types/N``, what ``show_gids`` prints)."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    for port in sorted(Path(root).glob("*/ports/*")):
        slots = found.setdefault(port.parent.parent.name, {}).setdefault(port.name, {})
        for i in indexes:
            gid = _read(port / "gids" / str(i)).strip()
            kind = _read(port / "gid_attrs" / "types" / str(i)).strip()
            slots[str(i)] = kind if gid and gid != EMPTY_GID else ""
    return found


def cuda_version() -> str | None:
    """The CUDA version the driver supports, from the header plain ``nvidia-smi`` prints."""
    smi = _run(["nvidia-smi"])
    if not smi or smi["rc"] != 0:
        return None
    for line in smi["out"].splitlines():
        if "CUDA Version:" in line:
            return line.split("CUDA Version:", 1)[1].strip(" |").split()[0]
    return None


def engine_version(request: dict[str, Any]) -> str | None:
    """The pinned engine as installed here: its distribution's version in the engine venv (asked of that
    venv's python, which proves the venv runs), or the cached llama.cpp build's ``BUILD_INFO.json``."""
    venv, dist = request.get("engine_venv"), request.get("engine_dist")
    if venv and dist:
        python = str(Path(venv) / "bin" / "python")
        got = _run([python, "-c", f"import importlib.metadata as m; print(m.version({str(dist)!r}))"], 60)
        return got["out"].strip() if got and got["rc"] == 0 else None
    builds = request.get("llama_cpp_builds")
    if builds:
        ids = set()
        for info in sorted(Path(os.path.expanduser(str(builds))).glob("*/BUILD_INFO.json")):
            try:
                data = json.loads(info.read_text())
            except (OSError, ValueError):
                continue
            # the variant (cpu, cuda-sm90) differs by node on purpose; the source must not
            ids.add(f"llama-cpp-python {data.get('llama_cpp_python')} ({data.get('llama_cpp_commit')})")
        return "; ".join(sorted(ids)) or None
    return None


def lock_sha256(weights_dir: str) -> str | None:
    """sha256 of what weights.lock pins: repo, commit and each file's path, size and digests. Not of its
    bytes: a worker that fetched from the head's LAN mirror records another ``endpoint`` for the same
    weights."""
    path = Path(weights_dir) / LOCK_NAME
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        data = json.loads(raw)
        files = sorted(
            ({k: f.get(k) for k in ("path", "size", "sha256", "git_oid")} for f in data.get("files", [])),
            key=lambda f: str(f["path"]),
        )
        pinned = {"repo": data.get("repo"), "commit": data.get("commit"), "files": files}
        return hashlib.sha256(json.dumps(pinned, sort_keys=True).encode()).hexdigest()
    except (ValueError, AttributeError, TypeError):  # not a lock this reader knows: compare the bytes
        return hashlib.sha256(raw).hexdigest()


def _meminfo() -> dict[str, int]:
    info = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            info[key] = int(rest.split()[0]) * 1024
    return info


def _cpu_flags() -> list[str]:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            return sorted(set(line.split(":", 1)[1].split()))
    return []


def _toolkit_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("kimi-deploy")
    except Exception:  # noqa: BLE001 - any failure means "not installed here"
        return None


def collect(request: dict[str, Any]) -> dict[str, Any]:
    """The node's facts for ``request`` (``weights_dir``, ``ports``); see the module doc."""
    weights_dir = str(request.get("weights_dir") or ".")
    shm = os.statvfs("/dev/shm") if Path("/dev/shm").is_dir() else None
    disk = os.statvfs(nearest_existing(weights_dir))
    mem = _meminfo()
    found = {
        "hostname": socket.gethostname(),
        "interfaces": interfaces(),
        "shm_bytes": shm.f_frsize * shm.f_blocks if shm else 0,
        "disk_free_bytes": disk.f_frsize * disk.f_bavail,
        "disk_path": nearest_existing(weights_dir),
        "ram_bytes": mem.get("MemTotal", 0),
        "ram_available_bytes": mem.get("MemAvailable", 0),
        "cpu_flags": _cpu_flags(),
        "nvidia_smi": _run(SMI_QUERY),
        "fabric_manager": _run(FABRIC_MANAGER),
        "nvswitch": sorted(p.name for p in Path("/dev").glob("nvidia-nvswitch*")),
        "ports_busy": ports_busy([int(p) for p in request.get("ports", [])]),
        "lock_sha256": lock_sha256(weights_dir),
        "infiniband": infiniband(),
        "gids": gids([int(i) for i in request.get("gid_indexes", [])]),
        "cuda_version": cuda_version(),
        "engine_version": engine_version(request),
        "nccl_tests": shutil.which("all_reduce_perf"),
        "iperf3": shutil.which("iperf3"),
        "versions": {"python": sys.version.split()[0], "kimi-deploy": _toolkit_version()},
    }
    # read last, just before the facts travel back: the head compares it with when they arrive
    found["clock"] = time.time()
    return found


def listen(ports: list[int]) -> None:
    """Bind and listen on ``ports`` (those free), print ``{"bound": [...]}``, hold them until stdin closes."""
    socks, bound = [], []
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
            sock.listen(16)
        except OSError:
            sock.close()
            continue
        socks.append(sock)
        bound.append(port)
    print(json.dumps({"bound": bound}), flush=True)
    sys.stdin.read()
    for sock in socks:
        sock.close()


#: A SYN answered within this on a LAN; a dropped one (firewall DROP) is reported after it.
CONNECT_TIMEOUT_S = 3.0


def connect(address: str, ports: list[int], timeout: float = CONNECT_TIMEOUT_S) -> dict[str, str]:
    """``{port: why}`` for each of ``ports`` on ``address`` that no TCP connection from here opens."""
    failed = {}
    for port in ports:
        try:
            with socket.create_connection((address, port), timeout=timeout):
                pass
        except OSError as exc:
            failed[str(port)] = exc.strerror or type(exc).__name__
    return failed


def remote_argv(python: str, *args: str, script: str | Path | None = None) -> list[str]:
    """The remote command that runs this file (or ``script``) with ``args``: the source travels base64 in
    the argv, so stdin stays free (``listen`` holds its ports until stdin closes).

    >>> remote_argv("python3", "collect", "{}")[:2]
    ['python3', '-c']
    """
    source = base64.b64encode(Path(script or __file__).read_bytes()).decode()
    boot = f"import base64,sys;sys.argv[0]='facts';exec(compile(base64.b64decode('{source}'),'facts','exec'))"
    return [python, "-c", boot, *args]


def main(argv: list[str]) -> int:
    if argv[:1] == ["listen"]:
        listen([int(p) for p in argv[1:]])
        return 0
    if argv[:1] == ["connect"] and len(argv) > 1:
        print(json.dumps({"failed": connect(argv[1], [int(p) for p in argv[2:]])}))
        return 0
    request = json.loads(argv[1]) if len(argv) > 1 else {}
    print(json.dumps(collect(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
