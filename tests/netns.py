"""Two real hosts for the multi-node tests: network namespaces joined by veth pairs, each running sshd.

    >>> lab = TwoHostLab(workdir=Path("/tmp/lab"))
    >>> lab.start()                       # needs root, iproute2 and Debian's openssh-server
    >>> lab.hosts["head"].address
    '10.213.0.1'
    >>> lab.stop()                        # kills what runs inside the namespaces, removes every link

Layout: a bridge ``kdtbr0`` in the test's own namespace holds ``10.213.0.254/24`` (the Ansible
controller's side); each host is a namespace ``kdt-<name>`` with one end of a veth pair named ``kd0``
carrying ``10.213.0.<n>/24`` and its other end on the bridge. Nothing is routed anywhere else: the
namespaces have no default route, so no traffic can leave the test range or loopback.

Each host also gets its own disk: ``ip netns exec`` gives sshd a private mount namespace, where
``<workdir>/disks/<name>`` is bind-mounted on ``<workdir>/node`` (``NODE_ROOT``). Every host sees the same
path with its own content, as real nodes do, while the rest of the file system (the toolkit's venv, the
engine build cache) is shared like a pre-provisioned image. sshd runs as root with a key made for this lab.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "kdt-"
BRIDGE = "kdtbr0"
SUBNET = "10.213.0"
CONTROLLER_ADDRESS = f"{SUBNET}.254"
SSHD = "/usr/sbin/sshd"


@dataclass
class Host:
    name: str
    netns: str
    address: str
    disk: Path = Path()
    iface: str = "kd0"
    sshd: subprocess.Popen | None = None

    def exec_argv(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split() if p.strip().isdigit()]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def why_unavailable() -> str | None:
    """Why the lab cannot run here (not root, no ``ip``, no sshd), or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed; run scripts/ci-deps.sh"
    if not Path(SSHD).exists():
        return "openssh-server is not installed; run scripts/ci-deps.sh"
    return None


def _kill_pids(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in alive):
            time.sleep(0.1)
        pids = [p for p in alive if Path(f"/proc/{p}").exists()]


def cleanup_leftovers(prefix: str = PREFIX, bridge: str = BRIDGE) -> list[str]:
    """Remove namespaces and the bridge a crashed earlier run of these tests left behind.

    Only names with this module's prefix are touched, and only processes inside those namespaces
    (all started by these tests) are stopped. Returns the namespaces removed."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            out = _ip("netns", "pids", name, check=False).stdout
            _kill_pids([int(p) for p in out.split() if p.isdigit()])
            _ip("netns", "del", name, check=False)
            removed.append(name)
    if _ip("link", "show", bridge, check=False).returncode == 0:
        _ip("link", "del", bridge, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(prefix.rstrip("-") + "v"):
            _ip("link", "del", parts[1].strip().split("@")[0], check=False)
    return removed


class TwoHostLab:
    """A head and a worker host, each a namespace with sshd, reachable from the test over SSH."""

    def __init__(
        self,
        workdir: Path,
        names: tuple[str, ...] = ("head", "worker"),
        prefix: str = PREFIX,
        bridge: str = BRIDGE,
        subnet: str = SUBNET,
    ) -> None:
        """``prefix``/``bridge``/``subnet``: another lab's names, so two suites can run side by side."""
        self.workdir = workdir
        self.prefix, self.bridge, self.subnet = prefix, bridge, subnet
        self.hosts = {
            name: Host(
                name=name, netns=f"{prefix}{name}", address=f"{subnet}.{i + 1}", disk=workdir / "disks" / name
            )
            for i, name in enumerate(names)
        }
        #: The path where each host sees its own disk.
        self.node_root = workdir / "node"
        self.key = workdir / "ssh" / "id_ed25519"
        self._made_bridge = False

    def start(self) -> None:
        (self.workdir / "ssh").mkdir(parents=True, exist_ok=True)
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        for i, host in enumerate(self.hosts.values()):
            outer = f"{self.prefix.rstrip('-')}v{i}"
            _ip("netns", "add", host.netns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", host.iface, "netns", host.netns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.iface)
            _ip("-n", host.netns, "link", "set", host.iface, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            self._start_sshd(host)
        for host in self.hosts.values():
            self._wait_port(host.address, 22)

    def _start_sshd(self, host: Host) -> None:
        d = self.workdir / "ssh" / host.name
        d.mkdir(parents=True, exist_ok=True)
        hostkey = d / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
        config = d / "sshd_config"
        config.write_text(
            f"ListenAddress {host.address}\nPort 22\nHostKey {hostkey}\n"
            f"AuthorizedKeysFile {self.key}.pub\nPidFile {d / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            # The key lives in the test's temp dir, whose modes sshd's StrictModes would reject.
            "UsePAM no\nStrictModes no\nAcceptEnv LANG LC_*\nSubsystem sftp internal-sftp\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        host.disk.mkdir(parents=True, exist_ok=True)
        self.node_root.mkdir(parents=True, exist_ok=True)
        script = f'mount --bind "$1" "$2" && exec {SSHD} -D -f "$3" -E "$4"'
        host.sshd = subprocess.Popen(
            host.exec_argv(
                "sh",
                "-c",
                script,
                "sshd",
                str(host.disk),
                str(self.node_root),
                str(config),
                str(d / "sshd.log"),
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @staticmethod
    def _wait_port(address: str, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((address, port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def ssh_argv(self, host: str, command: str) -> list[str]:
        """An ssh command line that runs ``command`` on ``host`` with the lab's key."""
        return [
            "ssh",
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            f"root@{self.hosts[host].address}",
            command,
        ]

    def stop(self) -> None:
        """Stop everything running in the namespaces, then remove them, the veths and the bridge."""
        for host in self.hosts.values():
            _kill_pids(host.pids())
            if host.sshd is not None:
                host.sshd.wait(timeout=10)
            _ip("netns", "del", host.netns, check=False)
        if self._made_bridge:
            _ip("link", "del", self.bridge, check=False)
