"""What `up` starts on a node, read from plan.json and the rendered folder, and the checks before a start.

    >>> from deploy.serving.target import target_for
    >>> from deploy.planning.contract import load_plan
    >>> t = target_for(load_plan("plan.json"), "rendered")  # doctest: +SKIP
    >>> t.node, t.url, t.deadline_s  # doctest: +SKIP
    ('ci', 'http://127.0.0.1:8001/health', 60.0)

Also here: whether the weights passed `verify` (stat only), who holds a port, and the env files' values,
including which of them are secrets that must never be shown.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from deploy import schema, secrets
from deploy.errors import PlanError, VerificationError
from deploy.planning.contract import Plan
from deploy.serving import readiness, release_dir
from deploy.serving.manifest_schema import MANIFEST_SCHEMA
from deploy.serving.quoting import parse_env_file
from deploy.weights import lockfile

ENV_FILE = "kimi-deploy.env"
#: rpc-server's own default port (its ``--help``), used when neither the manifest nor the plan names one
RPC_DEFAULT_PORT = 50052


@dataclass(frozen=True)
class ServingTarget:
    """What `up` starts on one node, from plan.json and the rendered folder."""

    node: str
    head: bool
    engine: str
    host: str
    port: int
    script: Path
    unit: Path
    env_files: tuple[Path, ...]
    weights_dir: Path
    deadline_s: float
    #: a worker that listens (llama.cpp's rpc-server): where it accepts; None for the head and for
    #: vLLM/SGLang headless workers, which serve nothing of their own
    listen: tuple[str, int] | None = None
    #: the head's RPC workers (``host:port``, llama.cpp's ``--rpc``), to name the one that died
    rpc_servers: tuple[str, ...] = ()
    #: the plan's candidate the rendered files run (its prediction is what a start is measured against)
    candidate: str = ""
    #: the speculative-decoding draft model's folder the launch loads (verified like the weights), if any
    draft_dir: Path | None = None

    @property
    def url(self) -> str:
        return readiness.health_url(self.engine, self.host, self.port)

    @property
    def base_url(self) -> str:
        return self.url.rsplit("/", 1)[0]


def node_names(plan: Plan) -> list[str]:
    """The plan's node names, head first (the chosen candidate may use only the first ``nodes``)."""
    nodes = plan.hardware.get("nodes") or []
    names = [str(n.get("name") or f"node{i}") for i, n in enumerate(nodes)]
    count = plan.chosen_candidate.nodes or 1
    return names[:count] or ["node0"]


def read_manifest(rendered: str | Path) -> dict[str, Any]:
    """The manifest.json of ``rendered``'s current release (what `kimi-deploy render` wrote), or {}."""
    path = release_dir.resolve(rendered) / "manifest.json"
    if not path.exists() and not path.is_symlink():
        return {}
    return schema.load_json(path, MANIFEST_SCHEMA, PlanError)


def _weights_dir(model_path: str, fallback: str) -> Path:
    """The folder holding weights.lock: the rendered model path (a folder, or a GGUF file in a subfolder of
    the repo) or one of its parents; else the plan's local_dir."""
    p = Path(model_path) if model_path else None
    for d in [p, *p.parents][:4] if p is not None else []:
        if (d / lockfile.LOCK_NAME).is_file():
            return d
    return Path(fallback)


def target_for(
    plan: Plan, rendered: str | Path, node: str | None = None, deadline_s: float | None = None
) -> ServingTarget:
    """Resolve the node (default: the head), its rendered script and unit, its port and deadline.

    The rendered manifest is what the scripts actually run (`render --port/--bind/--weights-dir` may differ
    from the plan), so bind address, port, node roles and file names come from it; the plan gives the
    engine and the deadline (``time_to_ready_s``). Without a manifest, the plan and the file-name
    conventions are used.

    >>> t = target_for(load_plan("plan.json"), "rendered")  # doctest: +SKIP
    >>> t.script.name, t.url  # doctest: +SKIP
    ('launch-ci.sh', 'http://127.0.0.1:8001/health')
    """
    # the release `current` points at now, by its own path: what runs is recorded as that release
    rendered = release_dir.resolve(rendered)
    manifest = read_manifest(rendered)
    cand = plan.candidate(str(manifest["candidate"])) if manifest.get("candidate") else plan.chosen_candidate
    if manifest.get("nodes"):
        nodes = {str(n["name"]): n for n in manifest["nodes"]}
        names = list(nodes)
    else:
        names = node_names(plan)
        nodes = {
            name: {
                "launch": f"launch-{name}.sh",
                "service": f"kimi-deploy-{name}.service",
                "serves_http": i == 0,
            }
            for i, name in enumerate(names)
        }
    node = node or names[0]
    if node not in nodes:
        raise PlanError(f"plan has no node {node!r} (nodes: {', '.join(names)})")
    entry = nodes[node]
    args = cand.engine_args
    try:
        # a fleet's replica serves on its own port; the manifest's top-level port is the router's
        port = int(entry.get("port") or manifest.get("port") or args["port"])
    except (KeyError, TypeError, ValueError):
        raise PlanError(f"plan candidate {cand.id!r}: engine_args.port is missing or not a number") from None
    if not cand.weights.local_dir and not manifest.get("model_path"):
        raise PlanError(f"plan candidate {cand.id!r}: weights.local_dir is empty (re-run `kimi-deploy plan`)")
    script = rendered / str(entry.get("launch") or f"launch-{node}.sh")
    if not script.is_file():
        raise PlanError(f"{script}: no rendered launch script for node {node!r} (run `kimi-deploy render`)")
    if deadline_s is not None and deadline_s <= 0:
        raise PlanError(f"--deadline must be positive, got {deadline_s}")
    env_files = [rendered / str(f) for f in entry.get("env_files") or [manifest.get("env_file") or ENV_FILE]]
    head = bool(entry.get("serves_http", node == names[0]))
    plan_node = next((n for n in plan.hardware.get("nodes") or [] if str(n.get("name")) == node), {})
    return ServingTarget(
        node=node,
        head=head,
        engine=str(manifest.get("engine") or cand.engine),
        host=str(entry.get("bind") or manifest.get("bind") or args.get("host") or "127.0.0.1"),
        port=port,
        script=script,
        unit=rendered / str(entry.get("service") or f"kimi-deploy-{node}.service"),
        env_files=tuple(env_files),
        weights_dir=_weights_dir(str(manifest.get("model_path") or ""), cand.weights.local_dir),
        deadline_s=float(deadline_s if deadline_s is not None else cand.start_deadline_s),
        listen=None if head else worker_listen(entry, args, str(plan_node.get("address") or "")),
        rpc_servers=tuple(rpc_servers_of(entry, args)) if head else (),
        candidate=cand.id,
        draft_dir=Path(draft.local_dir) if (draft := cand.draft_weights) else None,
    )


def _argv_value(argv: list[str], *flags: str) -> str | None:
    """The value after the last of ``flags`` in ``argv`` (``--flag value`` or ``--flag=value``)."""
    found = None
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                found = argv[i + 1]
            elif flag.startswith("--") and arg.startswith(flag + "="):
                found = arg.split("=", 1)[1]
    return found


def _is_rpc_worker(entry: dict[str, Any], args: dict[str, Any]) -> bool:
    argv = [str(a) for a in entry.get("argv") or []]
    if entry.get("program") == "rpc" or (argv and Path(argv[0]).name == "rpc-server"):
        return True
    multinode = args.get("multinode") or {}
    return not argv and (bool(args.get("rpc_servers")) or multinode.get("backend") == "rpc")


def worker_listen(entry: dict[str, Any], args: dict[str, Any], address: str) -> tuple[str, int] | None:
    """Where a worker node accepts connections: llama.cpp's rpc-server ``-H host -p port``, else None.

    The manifest's argv is what the worker runs; without one the plan gives the port (``rpc_port``, or the
    head's ``rpc_servers`` entry for this node's address). vLLM/SGLang workers listen on nothing of their
    own, so they have no such endpoint.

    >>> worker_listen({"program": "rpc", "argv": ["rpc-server", "-H", "10.0.0.2", "-p", "50052"]}, {}, "")
    ('10.0.0.2', 50052)
    >>> worker_listen({"program": "vllm", "argv": ["vllm", "serve", "--headless"]}, {}, "10.0.0.2") is None
    True
    """
    if not _is_rpc_worker(entry, args):
        return None
    argv = [str(a) for a in entry.get("argv") or []]
    host = _argv_value(argv, "-H", "--host") or address or "127.0.0.1"
    port = _argv_value(argv, "-p", "--port")
    if port is None:
        multinode = args.get("multinode") or {}
        port = args.get("rpc_port") or multinode.get("rpc_port")
        for server in args.get("rpc_servers") or []:
            server_host, _, server_port = str(server).rpartition(":")
            if port is None and server_host == host:
                port = server_port
    try:
        return host, int(port if port is not None else RPC_DEFAULT_PORT)
    except ValueError:
        raise PlanError(f"rpc-server port {port!r} for {host} is not a number") from None


def rpc_servers_of(entry: dict[str, Any], args: dict[str, Any]) -> list[str]:
    """The head's RPC workers as ``host:port``: its argv's ``--rpc`` (what runs), else the plan's list.

    >>> rpc_servers_of({"argv": ["llama-server", "--rpc", "10.0.0.2:50052,10.0.0.3:50052"]}, {})
    ['10.0.0.2:50052', '10.0.0.3:50052']
    """
    value = _argv_value([str(a) for a in entry.get("argv") or []], "--rpc")
    if value is not None:
        return [s for s in value.split(",") if s]
    return [str(s) for s in args.get("rpc_servers") or []]


def require_verified(weights_dir: str | Path) -> None:
    """Raise VerificationError (exit 5) unless ``weights_dir`` passed `kimi-deploy verify` unchanged since."""
    st = lockfile.verification_status(weights_dir)
    if st.verified:
        return
    hint = "" if "kimi-deploy verify" in st.reason else f"; run `kimi-deploy verify {weights_dir}`"
    raise VerificationError(f"refusing to start on unverified weights: {st.reason}{hint}")


def port_holder(host: str, port: int) -> str | None:
    """Who already listens on ``host:port`` ('pid N (name)' when visible, else 'another process'), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # the engines set SO_REUSEADDR too, so a port in TIME_WAIT is not "taken"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return None
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                # e.g. an address not on this machine: the engine's own bind error says it better
                return None
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
    return "another process"


def env_file_pairs(env_file: Path) -> dict[str, str]:
    """The env file's ``NAME=value`` pairs, read as bash and systemd read them (deploy.serving.quoting);
    a line they could read differently is InputError (exit 2), the value never shown."""
    return parse_env_file(env_file)


def secret_values(env_files: tuple[Path, ...]) -> list[str]:
    """Secret values from the env files and the environment (deploy.secrets), so log lines shown never
    carry them."""
    return secrets.secret_values(pair for env_file in env_files for pair in env_file_pairs(env_file).items())
