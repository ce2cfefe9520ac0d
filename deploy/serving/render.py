"""`kimi-deploy render`: launch scripts, env file, systemd units, install steps and a manifest for a plan.

    >>> from deploy.serving.render import render, RenderOptions
    >>> result = render("plan.json", RenderOptions(out_dir="rendered"))      # doctest: +SKIP
    >>> sorted(p.name for p in result.files)[:2]                             # doctest: +SKIP
    ['install-node0.sh', 'kimi-deploy-node0.service']

Per node of the candidate: ``launch-<node>.sh`` (rank 0 is the head, the rest workers), ``install-<node>.sh``
(the pinned engine install) and ``kimi-deploy-<node>.service``; once: ``kimi-deploy.env`` (mode 0600) and
``manifest.json``. Multi-node plans also get ``kimi-deploy-<node>.env`` with each node's own interface and
address, read after the shared file.

The templates in ``templates/`` never compute: this module builds every value, and the templates pass each one
through the single shell-quoting filter ``q``. Missing values fail the render (jinja2 StrictUndefined). The
engine argv is kept as a list (deploy.serving.argv) so the manifest and the parser tests see exactly what the
script runs. Secrets are never written unless asked for (``secrets_to_env_file``), and then only into the
0600 env file: the scripts read the API key from the environment at run time (``"${KIMI_API_KEY}"``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from deploy import __version__, constants, pins, schema
from deploy.engines import builds as engines
from deploy.engines import registry
from deploy.engines.base import Install
from deploy.errors import InputError, PlanError, RenderError
from deploy.hardware.fabric import nccl_fabric_env
from deploy.monitoring import promtool
from deploy.monitoring.render import monitoring_texts
from deploy.monitoring.spec import (
    DEFAULT_TTFT_P95_SLO_S,
    MonitoringSpec,
    ScrapeTarget,
    Timings,
    dcgm_targets,
    fleet_hosts,
    router_target,
)
from deploy.planning.contract import Candidate, Plan, load_plan
from deploy.routers import argv as router_args
from deploy.routers import install as router_install
from deploy.routers import registry as routers
from deploy.schema import check_env_name, check_host, check_port
from deploy.serving import release_dir, replicas
from deploy.serving.argv import (
    ENGINE_DIR_VAR,
    SGLANG_KEY_CONFIG_FILE,
    SGLANG_KEY_CONFIG_VAR,
    Arg,
    Endpoint,
    EnvPath,
    EnvRef,
    NodeCommand,
    argv_strings,
)
from deploy.serving.quoting import (
    ENV_VALUE_CHARS,
    check_env_value,
    check_service_user,
    systemd_path,
    systemd_text,
    systemd_word,
)
from deploy.serving.release_dir import RenderedFile, json_file
from deploy.serving.replicas import Replica
from deploy.weights import lockfile

MANIFEST = release_dir.MANIFEST
#: The folder (under the rendered folder) with prometheus.yml, rules and dashboards (deploy.monitoring).
MONITORING_DIR = release_dir.MONITORING
ENV_FILE = "kimi-deploy.env"
MANIFEST_SCHEMA = 1
#: Where install-<node>.sh puts each engine's venv on a GPU node; the launch script puts its bin/ on PATH.
ENGINE_VENV_ROOT = constants.ENGINE_VENV_ROOT
CHAT_TEMPLATES_DIR = constants.PACKAGE_DIR / "data" / "chat_templates"
#: The env file's promise about secrets, below its first line.
ENV_FILE_HEADER = (
    "Read by the launch scripts and the systemd units; mode 0600.",
    "`kimi-deploy render` writes no secret here unless run with --secrets-to-env-file: fill them in",
    "below, or export them where `kimi-deploy up` runs.",
)
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")


@dataclass
class RenderOptions:
    """What `render` writes and how the head serves; ``None`` means: take it from the plan."""

    out_dir: str | Path = "rendered"
    candidate_id: str | None = None
    weights_dir: str | Path | None = None
    bind: str | None = None
    port: int | None = None
    api_key_env: str | None = None
    multinode_backend: str | None = None
    secrets_to_env_file: bool = False
    plan_path: str | None = None
    #: TTFT p95 SLO for the alert (default: the plan's request ``ttft_p95_slo_s``, else 2 s)
    ttft_p95_slo_s: float | None = None
    #: scrape/evaluation intervals and `for:` durations of the rules (tests use short ones)
    monitoring_timings: Timings | None = None
    #: run `promtool check config` and `check rules` on the monitoring files (when promtool is on PATH)
    check_monitoring: bool = False
    #: make the new release the one that runs (``out_dir/current``); `upgrade` switches it itself later
    switch_current: bool = True
    #: releases kept besides ``current`` and the one before it (deploy.serving.release_dir.prune)
    keep: int = release_dir.DEFAULT_KEEP
    #: the user every unit runs as (``User=``); None: root, as before
    service_user: str | None = None


@dataclass
class RenderResult:
    """``out_dir`` is the rendered folder (``--out``); the files themselves are in ``release_dir``."""

    out_dir: Path
    candidate: Candidate
    nodes: list[NodeCommand]
    files: list[Path]
    manifest: dict[str, Any] = field(default_factory=dict)
    promtool: list[promtool.PromtoolResult] = field(default_factory=list)
    release_id: str = ""
    release_dir: Path | None = None
    pruned: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- templates


def shell_quote(value: Any) -> str:
    """The one quoting filter: a shell word for ``value``; an EnvRef becomes ``"${NAME}"`` (expanded when the
    script runs). Undefined values raise (StrictUndefined), as do None and booleans, which have no shell form.

    >>> shell_quote("/models/my model $1"), shell_quote(EnvRef("KIMI_API_KEY")), shell_quote(8)
    ("'/models/my model $1'", '"${KIMI_API_KEY}"', '8')
    """
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises here, naming the missing value
    if isinstance(value, EnvRef):
        return '"${' + value.name + '}"'
    if isinstance(value, EnvPath):
        return '"${' + value.name + '}"' + (shlex.quote(value.rest) if value.rest else "")
    if value is None or isinstance(value, bool):
        raise RenderError(f"cannot shell-quote {value!r}: the context must give a string or a number")
    return shlex.quote(str(value))


def template_env(templates_dir: Path | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir or constants.TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = shell_quote
    env.filters["unit_word"] = systemd_word
    env.filters["unit_path"] = systemd_path
    env.filters["unit_text"] = systemd_text
    env.filters["env_value"] = lambda value: check_env_value("env file value", value)
    return env


def render_template(name: str, context: dict[str, Any], templates_dir: Path | None = None) -> str:
    """Render one template; a missing value or template is a RenderError naming both."""
    try:
        return template_env(templates_dir).get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        raise RenderError(f"template {name}: {exc}") from None
    except jinja2.TemplateNotFound:
        raise RenderError(
            f"template {name} not found in {templates_dir or constants.TEMPLATES_DIR}"
        ) from None


# ------------------------------------------------------------------------------------------ resolution


def weights_dir_for(plan: Plan, cand: Candidate, override: str | Path | None = None) -> Path:
    """The folder with the candidate's weights: ``override``, else the plan's ``weights.local_dir``."""
    if override:
        return Path(override).expanduser()
    if cand.weights.local_dir:
        return Path(cand.weights.local_dir)
    nodes = plan.hardware.get("nodes") or [{}]
    return Path(str(nodes[0].get("weights_dir") or "/models")) / cand.weights.repo


def _is_first_shard(name: str) -> bool:
    return re.search(r"-0*1-of-\d+\.gguf$", name) is not None


def resolve_model_path(cand: Candidate, weights_dir: Path) -> str:
    """The path the engine loads: the weights folder, or for GGUF the first shard (from weights.lock when
    present, else a glob of the plan's allow_patterns in ``weights_dir``)."""
    if cand.weights.format != "gguf":
        return str(weights_dir)
    patterns = cand.weights.allow_patterns or ["*.gguf"]
    if lockfile.lock_path(weights_dir).is_file():
        names = [f.path for f in lockfile.read_lock(weights_dir).files]
        source = f"{lockfile.lock_path(weights_dir)}"
    elif weights_dir.is_dir():
        names = [p.relative_to(weights_dir).as_posix() for p in weights_dir.rglob("*.gguf")]
        source = f"{weights_dir}"
    else:
        raise PlanError(
            f"{weights_dir}: weights folder not found (run `kimi-deploy download` first, or pass "
            f"--weights-dir)"
        )
    ggufs = sorted(
        n
        for n in names
        if n.endswith(".gguf")
        and "mmproj" not in Path(n).name.lower()
        and any(fnmatch.fnmatch(n, pat) for pat in patterns)
    )
    if not ggufs:
        raise PlanError(
            f"{source}: no GGUF file matching {', '.join(patterns)} (run `kimi-deploy download` "
            "first, or pass --weights-dir)"
        )
    first = [n for n in ggufs if _is_first_shard(n)]
    return str(weights_dir / (first[0] if first else ggufs[0]))


def resolve_chat_template(name: str | None, cand: Candidate) -> Path | None:
    """A chat template named in engine_args: the toolkit's own (deploy/data/chat_templates/) first, then the
    ones vendored with the llama.cpp build."""
    if not name:
        return None
    if Path(name).is_absolute():
        if Path(name).is_file():
            return Path(name)
        raise PlanError(f"chat template {name} not found")
    from deploy.serving.argv import llama_cpp_cuda

    # every build of the pin vendors the same templates: the portable one (the one every machine has), or
    # the one the candidate's nodes would run
    folders = (
        CHAT_TEMPLATES_DIR,
        engines.llama_cpp_layout().templates_dir,
        engines.llama_cpp_layout(cuda=llama_cpp_cuda(cand)).templates_dir,
    )
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise PlanError(
        f"chat template {name!r} is in neither {CHAT_TEMPLATES_DIR} nor the llama.cpp templates "
        "(run `kimi-deploy engine install llama.cpp`)"
    )


def endpoint_for(cand: Candidate, opts: RenderOptions, environ: dict[str, str] | None = None) -> Endpoint:
    """The head's endpoint; a non-loopback bind needs an API key env var that is set now (its value is
    not read beyond this check unless ``secrets_to_env_file``)."""
    environ = os.environ if environ is None else environ
    a = cand.engine_args
    # every value here reaches the launch script, the unit's ExecStartPost and the env file: validated
    # at the boundary (address, port 1-65535, variable name), whether from the CLI, the plan or a playbook
    bind = (
        check_host(opts.bind, "--bind")
        if opts.bind
        else check_host(str(a.get("host") or "127.0.0.1"), "plan engine_args.host")
    )
    port = check_port(opts.port, "--port") if opts.port is not None else None
    key_env = opts.api_key_env or a.get("api_key_env")
    if key_env is not None:
        check_env_name(key_env, "--api-key-env" if opts.api_key_env else "plan engine_args.api_key_env")
    ep = Endpoint(bind=bind, port=port, api_key_env=key_env, multinode_backend=opts.multinode_backend)
    if not ep.loopback:
        if not key_env:
            raise InputError(f"--bind {bind} is not loopback: name the API key variable with --api-key-env")
        if not environ.get(key_env):
            raise InputError(
                f"--bind {bind} is not loopback: set {key_env} (the key clients must send) in the "
                "environment, or name another variable with --api-key-env"
            )
    return ep


# ------------------------------------------------------------------------------------------- contexts


def _argv_lines(argv: list[Arg]) -> list[list[Arg]]:
    """Group an argv into lines: the program and its positional words, then each flag with its values."""
    lines: list[list[Arg]] = [[]]
    for tok in argv:
        program_option = len(lines) == 1 and tok == "-m"  # `python3 -m module` stays on the first line
        if (
            isinstance(tok, str)
            and tok.startswith("-")
            and lines[-1]
            and not _number(tok)
            and not program_option
        ):
            lines.append([])
        lines[-1].append(tok)
    return lines


def _number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _engine_venv(cand: Candidate) -> str | None:
    eng = registry.get(cand.engine)
    if eng.install.venv is None or eng.uses_cpu_build(cand.engine_args):
        return None
    return f"{ENGINE_VENV_ROOT}/{eng.install.venv}"


def _system_libs_script(install: Install) -> str:
    """Install the engine's system libraries with apt where there is apt, else say which to install."""
    return (
        "if command -v apt-get >/dev/null 2>&1; then apt-get update -qq && "
        "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        + " ".join(install.system_packages)
        + f"; else echo 'install {' and '.join(install.system_libs)} with the system package manager' >&2; fi"
    )


def install_steps(cand: Candidate, node: NodeCommand, uses_ray: bool = False) -> list[dict[str, Any]]:
    """The pinned install commands for ``node`` (comment + argv each), the same pins as deploy/pins.py.
    ``uses_ray``: some node of the deployment runs Ray (the head runs ``ray start --head`` before vLLM, the
    workers ``ray start --address``), so every node installs it."""
    eng = registry.get(cand.engine)
    venv = _engine_venv(cand)
    steps: list[dict[str, Any]] = []
    if eng.install.system_packages:
        steps.append(
            {
                "comment": eng.install.system_libs_reason,
                "argv": ["sh", "-c", _system_libs_script(eng.install)],
            }
        )
    if venv is not None:
        pip = [f"{venv}/bin/python", "-m", "pip", "install"]
        steps.append({"comment": f"a venv for {cand.engine}", "argv": ["python3", "-m", "venv", venv]})
        steps.append({"comment": "a current pip", "argv": [*pip, "--upgrade", "pip"]})
        packages = list(eng.install.packages)
        if "ray" in eng.multinode_backends and (
            uses_ray or node.program == "ray" or any(c and c[0] == "ray" for c in node.pre)
        ):
            packages.append(f"ray[default]=={pins.RAY_VERSION}")
        steps.append({"comment": f"{cand.engine} at the pinned version", "argv": [*pip, *packages]})
    elif eng.uses_cpu_build(cand.engine_args):
        steps.append(
            {
                "comment": (
                    f"{eng.display_name}'s CPU build ({eng.name}-cpu {eng.cpu_build_version}) in the "
                    "kimi-deploy cache"
                ),
                "argv": ["kimi-deploy", "engine", "install", *eng.install.cache_install],
            }
        )
    else:
        build = node.build or engines.LlamaCppBuild()
        extra = " ".join(build.cmake_flags()[len(engines.LLAMA_CPP_CMAKE_FLAGS) :]) or "portable"
        steps.append(
            {
                "comment": (
                    f"llama-server and rpc-server from llama-cpp-python {pins.LLAMA_CPP_PYTHON_VERSION}'s "
                    f"vendored llama.cpp ({pins.LLAMA_CPP_COMMIT}), built for this node ({build.variant}) "
                    f"into ~/.cache/kimi-deploy/{engines.LLAMA_CPP_CACHE_SUBDIR}/{build.key} (cmake: {extra})"
                ),
                "argv": ["kimi-deploy", "engine", "install", *eng.install.cache_install, *build.cli_args()],
            }
        )
    return steps


def _ready_url(ep: Endpoint, port: int) -> str:
    host = "127.0.0.1" if ep.bind in ("0.0.0.0", "::", "[::]") or ep.loopback else ep.bind
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}/health"


def _ready_command(ep: Endpoint, port: int) -> str:
    """The bash loop ExecStartPost runs: the URL is shell-quoted inside it, and the template then quotes the
    whole command as one systemd word (``unit_word``), so neither systemd nor bash reads anything in it."""
    url = shlex.quote(_ready_url(ep, port))
    return f"until curl -fsS -o /dev/null --max-time 5 {url}; do sleep 2; done"


def _key_config(node: NodeCommand, user: str | None = None) -> dict[str, Any] | None:
    """What the launch script needs to hand SGLang its API key in a --config file (deploy.serving.argv).
    With a service ``user`` the file goes into the unit's RuntimeDirectory: the release folder is root's."""
    if node.key_config is None:
        return None
    return {
        "key": node.key_config,
        "var": SGLANG_KEY_CONFIG_VAR,
        "dir": '"${RUNTIME_DIRECTORY:-$here}"' if user else '"$here"',
        "file": SGLANG_KEY_CONFIG_FILE,
        "chars": ENV_VALUE_CHARS,
        "comment": [
            f"SGLang {pins.SGLANG_VERSION} reads its API key from no environment variable, and argv is",
            "readable by every local user: the key goes into a 0600 YAML file --config merges in-process.",
        ],
    }


def _check_unit_safe(path: Path) -> None:
    try:
        systemd_path(path)
    except InputError as exc:
        raise InputError(f"--out {path}: {str(exc).split(': ', 1)[-1]}") from None


def _env_values(cand: Candidate, node: NodeCommand | None, shared: bool) -> list[tuple[str, Any]]:
    values: list[tuple[str, Any]] = []
    # one node needs no interface name: NCCL and Gloo pick one themselves, and a wrong name fails their init
    if node is not None and node.network_interface and cand.nodes > 1:
        values += [
            ("NCCL_SOCKET_IFNAME", node.network_interface),
            ("GLOO_SOCKET_IFNAME", node.network_interface),
        ]
    # NCCL between GPU nodes: the profile's RDMA devices and RoCE GID (pre-flight checks them against sysfs)
    if node is not None and cand.nodes > 1 and cand.gpus_per_node:
        values += nccl_fabric_env(node.network)
    eng = registry.get(cand.engine)
    if node is not None and not shared and eng.host_ip_env:
        values.append((eng.host_ip_env, node.address))
    if shared:
        a = cand.engine_args
        if eng.cpu_kv_space_env and eng.uses_cpu_build(a) and not a.get("cpu_kvcache_bytes"):
            values.append((eng.cpu_kv_space_env, int(a.get("cpu_kvcache_space_gib") or 1)))
        # the plan states the node's role: on the shared demo box OpenMP spin-waiting starves the other
        # processes (engines-on-cpu.md); a dedicated node keeps OpenMP's default (spin, then sleep)
        policy = (
            a.get("omp_wait_policy") if "node_role" in a else ("PASSIVE" if cand.placement == "cpu" else None)
        )
        if eng.openmp_threads and policy:
            values.append(("OMP_WAIT_POLICY", policy))
        values.append(("HF_HUB_OFFLINE", "1"))
    return values


def engine_environment(cand: Candidate, nodes: list[NodeCommand], node: NodeCommand) -> dict[str, Any]:
    """The variables ``node``'s engine starts with beyond its inherited environment, as systemd applies them:
    the shared env file, the node's own env file (multi-node), then the launch script's exports; a later
    value wins. Other targets (deploy.targets.k8s) take the engine's environment from here too.

    >>> engine_environment(cand, nodes, nodes[0])["HF_HUB_OFFLINE"]                # doctest: +SKIP
    '1'
    """
    values = _env_values(cand, nodes[0], shared=True)
    if len(nodes) > 1:
        values += _env_values(cand, node, shared=False)
    return dict(values + sorted(node.env.items()))


# ----------------------------------------------------------------------------------------------- render


def _one_line(text: str) -> str:
    """A value for a comment line: a newline would end the comment and start a command."""
    return " ".join(str(text).split())


def _scrape_host(ep: Endpoint, node: NodeCommand) -> str:
    """Where Prometheus reaches a node's engine: loopback for a loopback bind, the node's address for a
    wildcard bind, else the bind address itself."""
    if ep.loopback:
        host = ep.bind if ep.bind != "localhost" else "127.0.0.1"
    elif ep.bind in ("0.0.0.0", "::", "[::]"):
        host = node.address or "127.0.0.1"
    else:
        host = ep.bind
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def monitoring_spec(
    plan: Plan,
    cand: Candidate,
    group: list[Replica],
    ep: Endpoint,
    opts: RenderOptions,
    fleet: dict[str, Any] | None = None,
) -> MonitoringSpec:
    """The plain values deploy.monitoring renders from: one scrape target per node that serves HTTP (each
    replica's head, on its own port); with a ``fleet`` (the manifest's ``fleet`` section) the router's
    metrics; a DCGM exporter per GPU node used."""
    slo = opts.ttft_p95_slo_s or (plan.request or {}).get("ttft_p95_slo_s") or DEFAULT_TTFT_P95_SLO_S
    return MonitoringSpec(
        engine=cand.engine,
        served_model_name=str(cand.engine_args["served_model_name"]),
        candidate=cand.id,
        targets=[
            ScrapeTarget(n.node, f"{_scrape_host(ep, n)}:{r.port}")
            for r in group
            for n in r.nodes
            if n.serves_http
        ],
        api_key=bool(not ep.loopback and ep.api_key_env),
        slots=int(cand.engine_args.get("parallel") or 1)
        if registry.get(cand.engine).metrics.slot_based
        else 1,
        ttft_p95_slo_s=float(slo),
        timings=opts.monitoring_timings or Timings(),
        router=router_target(fleet),
        dcgm=dcgm_targets(plan.hardware, fleet_hosts(fleet) or [n.node for r in group for n in r.nodes]),
    )


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class RenderInputs:
    """Everything a release is composed from besides the plan and the options: what `render` reads from the
    environment and the file system (``resolve_inputs``), so that ``compose_release`` reads neither."""

    candidate: Candidate
    #: the rendered folder (``--out``), absolute: the units name the files in it
    out_dir: Path
    endpoint: Endpoint
    weights_dir: Path
    model_path: str
    chat_template: Path | None = None
    #: the weights.lock reference of ``weights_dir`` (None without a lock)
    lock: dict[str, Any] | None = None
    #: the secrets the env file may carry (only with ``secrets_to_env_file``): name -> value
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    #: the user the units run as (``--service-user``, validated); None: root
    service_user: str | None = None


def resolve_inputs(plan: Plan, opts: RenderOptions, environ: dict[str, str]) -> RenderInputs:
    """Check the options against the plan and read what the release depends on outside it: the candidate,
    the endpoint (the API key variable must be set for a non-loopback bind), the weights folder and the file
    the engine loads, the chat template, the weights lock, and the secrets --secrets-to-env-file writes."""
    cand = plan.candidate(opts.candidate_id) if opts.candidate_id else plan.chosen_candidate
    if not cand.runs:
        raise PlanError(
            f"candidate {cand.id!r} is {cand.status}: {'; '.join(cand.reasons) or 'it does not run'}"
        )
    if opts.multinode_backend and opts.multinode_backend not in ("mp", "ray"):
        raise InputError(f"--multinode-backend {opts.multinode_backend!r}: expected mp or ray")
    out = Path(opts.out_dir).expanduser().resolve()
    _check_unit_safe(out)
    ep = endpoint_for(cand, opts, environ)
    weights_dir = weights_dir_for(plan, cand, opts.weights_dir)
    # the path lands in scripts (quoted), the manifest and the units' environment: no control characters
    schema.validate(str(weights_dir), schema.PATH, "--weights-dir" if opts.weights_dir else "plan weights")
    model_path = resolve_model_path(cand, weights_dir)
    chat_template = (
        resolve_chat_template(cand.engine_args.get("chat_template"), cand)
        if registry.get(cand.engine).chat_template_file
        else None
    )
    fleet = replicas.fleet_of(plan)
    router_key = routers.get(str(fleet["router"]["program"])).api_key_env if fleet else None
    if router_key and not ep.loopback and not environ.get(router_key):
        raise InputError(
            f"--bind {ep.bind} is not loopback: set {router_key} (the key clients must send the router) in "
            "the environment"
        )
    secrets = {
        name: environ[name]
        for name in (ep.api_key_env, "HF_TOKEN", router_key)
        if opts.secrets_to_env_file and name and environ.get(name)
    }
    # it reaches User=, RuntimeDirectory's owner and `runuser -u`: checked before any file is composed
    user = check_service_user(opts.service_user) if opts.service_user is not None else None
    return RenderInputs(
        cand, out, ep, weights_dir, model_path, chat_template, _lock_reference(weights_dir), secrets, user
    )


def _lock_reference(weights_dir: Path) -> dict[str, Any] | None:
    """Which weights a release runs: the folder, and its weights.lock's repo, revision, commit and digest."""
    if not lockfile.lock_path(weights_dir).is_file():
        return None
    lock = lockfile.read_lock(weights_dir)
    return {
        "dir": str(weights_dir),
        "repo": lock.repo,
        "revision": lock.revision,
        "commit": lock.commit,
        "lock_sha256": lockfile.lock_digest(weights_dir),
        "bytes": lock.total_bytes,
        "files": len(lock.files),
    }


# ---------------------------------------------------------------------------------------------- artifacts


def _env_files(node: NodeCommand, multinode: bool) -> list[str]:
    """The env files a node's script and unit read: the shared one, then (multi-node) the node's own."""
    return [ENV_FILE] + ([f"kimi-deploy-{node.node}.env"] if multinode else [])


def _required_env(ep: Endpoint) -> list[str]:
    """The variables the serving script refuses to start without: the API key of a non-loopback bind."""
    return [ep.api_key_env] if not ep.loopback and ep.api_key_env else []


def env_file(
    cand: Candidate, nodes: list[NodeCommand], ep: Endpoint, secrets: dict[str, str] | None = None
) -> RenderedFile:
    """``kimi-deploy.env`` (mode 0600): the shared values, the secrets given (``--secrets-to-env-file``), and
    an empty placeholder for each secret not given."""
    secrets = secrets or {}
    placeholders = [("HF_TOKEN", "only for gated repos; the engines load local weights")]
    if _required_env(ep):
        placeholders.insert(0, (str(ep.api_key_env), f"required: the server is bound to {ep.bind}"))
    given = [(name, check_env_value(name, secrets[name])) for name, _ in placeholders if secrets.get(name)]
    placeholders = [p for p in placeholders if p[0] not in {s[0] for s in given}]
    where = "all nodes" if len(nodes) > 1 else _one_line(nodes[0].node)
    text = render_template(
        "kimi-deploy.env.j2",
        {
            "header": [
                f"kimi-deploy environment for {where}.",
                *ENV_FILE_HEADER,
            ],
            "values": _env_values(cand, nodes[0], shared=True) + given,
            "placeholders": placeholders,
        },
    )
    return RenderedFile(text, 0o600)


def node_env_file(cand: Candidate, node: NodeCommand) -> RenderedFile:
    """``kimi-deploy-<node>.env`` of a multi-node plan (mode 0600): the node's own interface and address."""
    text = render_template(
        "kimi-deploy.env.j2",
        {
            "header": [
                f"kimi-deploy environment of node {_one_line(node.node)}, read after {ENV_FILE}; mode 0600."
            ],
            "values": _env_values(cand, node, shared=False),
            "placeholders": [],
        },
    )
    return RenderedFile(text, 0o600)


def _launch_header(cand: Candidate, nodes: list[NodeCommand], n: NodeCommand) -> list[str]:
    """The comment at the top of a launch script: what runs, where, and in which order to start the nodes."""
    header = [
        f"Rendered by kimi-deploy {__version__}: {cand.engine} {n.role} on node {_one_line(n.node)} "
        f"(rank {n.rank} of {len(nodes)}).",
        f"Plan candidate {_one_line(cand.id)}; install the engine first with install-{n.node}.sh.",
    ]
    ray = any(c.program == "ray" for c in nodes)
    if len(nodes) > 1 and n.rank == 0:
        header.append(
            "Ray: start this head first, then the workers; vLLM waits for their GPUs."
            if ray
            else "Start every worker first; only this head serves HTTP."
        )
    elif len(nodes) > 1:
        head = _one_line(nodes[0].node)
        header.append(f"Worker: start it {'after' if ray else 'before'} the head ({head}).")
    if n.program == "rpc":
        header.append(
            f"rpc-server has no authentication: it binds {_one_line(n.address)} only; keep its port "
            "closed to every network but the cluster's."
        )
    return header


def launch_script(
    cand: Candidate, nodes: list[NodeCommand], n: NodeCommand, ep: Endpoint, user: str | None = None
) -> RenderedFile:
    """``launch-<node>.sh`` (mode 0755): reads the env files, then execs the node's argv."""
    venv = _engine_venv(cand)
    text = render_template(
        "launch.sh.j2",
        {
            "header": _launch_header(cand, nodes, n),
            "env_files": _env_files(n, len(nodes) > 1),
            "path_prepend": f"{venv}/bin" if venv else None,
            "required_env": _required_env(ep) if n.serves_http else [],
            "exports": sorted(n.env.items()),
            "key_config": _key_config(n, user),
            "pre": [_argv_lines(c) for c in n.pre],
            "argv_lines": _argv_lines(n.argv),
            "engine_dir_var": ENGINE_DIR_VAR,
            "engine_dir": f"{engines.LLAMA_CPP_CACHE_SUBDIR}/{n.build.key}" if n.build is not None else None,
            "engine_binary": n.argv[0].rest.lstrip("/") if isinstance(n.argv[0], EnvPath) else None,
            "install_script": f"install-{n.node}.sh",
        },
    )
    return RenderedFile(text, 0o755)


def as_service_user(steps: list[dict[str, Any]], user: str | None) -> list[dict[str, Any]]:
    """Run the steps that build into the kimi-deploy cache (``kimi-deploy engine install``) as the units'
    ``user``, so the build lands in that user's ~/.cache/kimi-deploy, where its launch script looks
    (``runuser -u`` keeps PATH; it needs root, as the apt and /opt steps do). Other steps are unchanged.

    >>> step = {"comment": "c", "argv": ["kimi-deploy", "engine", "install"]}
    >>> as_service_user([step], "kimi")[0]["argv"][:4]
    ['runuser', '-u', 'kimi', '--']
    """
    if user is None:
        return steps
    return [
        s | {"argv": ["runuser", "-u", user, "--", *s["argv"]]} if s["argv"][:1] == ["kimi-deploy"] else s
        for s in steps
    ]


def _service_user_header(user: str | None) -> list[str]:
    if user is None:
        return []
    return [
        f"Run it as root: the engine runs as {user} (User= in its unit), so the steps that build into the",
        f"kimi-deploy cache run as {user} (its home must exist and `kimi-deploy` be on PATH for it).",
    ]


def install_script(
    cand: Candidate, nodes: list[NodeCommand], n: NodeCommand, user: str | None = None
) -> RenderedFile:
    """``install-<node>.sh`` (mode 0755): the pinned install steps (``install_steps``), the cache builds as
    the service ``user`` when there is one (``as_service_user``)."""
    ray = any(c.program == "ray" for c in nodes)
    text = render_template(
        "install.sh.j2",
        {
            "header": [
                f"Rendered by kimi-deploy {__version__}: install {cand.engine} on node {_one_line(n.node)}.",
                "Versions pinned in deploy/pins.py (the parser tests use the same pins).",
                *_service_user_header(user),
            ],
            "steps": [
                {"comment": _one_line(s["comment"]), "argv": s["argv"]}
                for s in as_service_user(install_steps(cand, n, uses_ray=ray), user)
            ],
        },
    )
    return RenderedFile(text, 0o755)


#: systemd: seconds between restarts of a failed engine, and how long a stop may take
RESTART_S = 15
TIMEOUT_STOP_S = 120
#: failed starts after which systemd stops restarting: each one re-reads the weights (595 GB for Kimi)
START_LIMIT_BURST = 3


def start_limit_interval_s(timeout_start_s: int) -> int:
    """systemd's StartLimitIntervalSec: long enough to hold START_LIMIT_BURST starts that each run to the
    start deadline, then restart and stop, so a start that always fails stops after that many tries instead
    of reloading the weights forever (systemd.unit: StartLimitIntervalSec/StartLimitBurst).

    >>> start_limit_interval_s(2040)
    6525
    """
    return START_LIMIT_BURST * (timeout_start_s + RESTART_S + TIMEOUT_STOP_S)


def unit_limits(deadline_s: int, memlock: bool) -> dict[str, Any]:
    """The restart and resource values of a unit (kimi-deploy.service.j2); ``deadline_s`` sizes the start
    limit window (deploy.serving.render.start_limit_interval_s)."""
    return {
        "start_limit_interval_s": start_limit_interval_s(deadline_s),
        "start_limit_burst": START_LIMIT_BURST,
        "restart_s": RESTART_S,
        "timeout_stop_s": TIMEOUT_STOP_S,
        "memlock": memlock,
    }


def service_user_lines(user: str | None, runtime_directory: str | None = None) -> dict[str, Any]:
    """The unit's ``User=`` (None: root, no line) and, for a launch that writes a file of its own (SGLang's
    key config), a ``RuntimeDirectory=`` that systemd creates owned by that user (systemd.exec(5)). The env
    files stay root's 0600: systemd reads EnvironmentFile= itself before it drops to ``User=``.

    >>> service_user_lines("kimi", "kimi-deploy-node0")
    {'user': 'kimi', 'runtime_directory': 'kimi-deploy-node0'}
    """
    # both land unquoted (systemd takes User= literally): a user name and a node name (_NODE_NAME) only
    if user is not None:
        check_service_user(user)
    if runtime_directory is not None and not _NODE_NAME.match(runtime_directory):
        raise RenderError(f"RuntimeDirectory {runtime_directory!r}: not a plain folder name")
    return {"user": user, "runtime_directory": runtime_directory if user else None}


def systemd_unit(
    cand: Candidate,
    nodes: list[NodeCommand],
    n: NodeCommand,
    ep: Endpoint,
    port: int,
    out: Path,
    user: str | None = None,
) -> RenderedFile:
    """``kimi-deploy-<node>.service``: runs the launch script in ``out``; the head waits for /health; as
    ``user`` when given (``service_user_lines``)."""
    served = _one_line(str(cand.engine_args["served_model_name"]))
    what = f"{cand.engine} {n.role} on {_one_line(n.node)} (rank {n.rank})"
    timeout_start_s = int(cand.start_deadline_s) if n.serves_http else 300
    text = render_template(
        "kimi-deploy.service.j2",
        {
            "description": f"kimi-deploy {served}: {what}",
            "env_files": [out / f for f in _env_files(n, len(nodes) > 1)],
            "launch_script": out / f"launch-{n.node}.sh",
            "out_dir": out,
            # the predicted time to ready times its factor of safety (margins.READY_SAFETY_FACTOR)
            "timeout_start_s": timeout_start_s,
            # the start-limit window: every rank of a group loads its weights and waits for the others as
            # long as the head, one window for all, so a group that cannot form stops everywhere alike.
            # Unlimited locked memory only where something locks it: a launch with --mlock, or a GPU engine
            # whose NCCL registers host buffers with InfiniBand verbs (NCCL's docs ask for unlimited memlock);
            # llama.cpp reads its experts through mmap's page cache and locks nothing without --mlock
            **unit_limits(
                int(cand.start_deadline_s),
                memlock="--mlock" in argv_strings(n.argv) or registry.get(cand.engine).needs_gpu,
            ),
            # systemd counts the wait for /health in TimeoutStartSec: a stuck load fails the unit
            "ready_command": _ready_command(ep, port) if n.serves_http else None,
            **service_user_lines(user, f"kimi-deploy-{n.node}" if n.key_config is not None else None),
        },
    )
    return RenderedFile(text, 0o644)


def monitoring_files(spec: MonitoringSpec, api_key: str | None = None) -> dict[str, RenderedFile]:
    """The files under ``monitoring/`` (deploy.monitoring.render), keyed by their path in the release."""
    return {
        f"{MONITORING_DIR}/{rel}": RenderedFile(text, mode)
        for rel, (text, mode) in monitoring_texts(spec, api_key).items()
    }


def release_id_for(
    plan: Plan, inputs: RenderInputs, opts: RenderOptions, files: dict[str, RenderedFile]
) -> str:
    """The release's content address: the plan's candidate, the options, the weights lock, the toolkit version
    and what the files say, wherever the rendered folder is (the units name it)."""
    cand, out = inputs.candidate, str(inputs.out_dir)
    material = {
        "plan": plan.to_dict() | {"chosen": cand.id},
        "options": {
            k: str(v) if v is not None else None
            for k, v in sorted(vars(opts).items())
            if k not in ("out_dir", "plan_path", "switch_current", "keep")
            # an option added later and left unset keeps the ids releases rendered before it had
            and not (k == "service_user" and v is None)
        },
        "weights": inputs.lock,
        "toolkit_version": __version__,
        "texts": {
            name: hashlib.sha256(f.text.replace(out, "{out}").encode()).hexdigest()
            for name, f in sorted(files.items())
        },
    }
    return release_dir.release_id(f"{cand.engine_args['served_model_name']}-{cand.engine}", material)


def _node_entry(r: Replica, n: NodeCommand) -> dict[str, Any]:
    entry = {
        "name": n.node,
        "rank": n.rank,
        "role": n.role,
        "address": n.address,
        "serves_http": n.serves_http,
        "program": n.program,
        "engine_build": n.build.key if n.build is not None else None,
        "argv": argv_strings(n.argv),
        "pre": [argv_strings(c) for c in n.pre],
        "launch": f"launch-{n.node}.sh",
        "install": f"install-{n.node}.sh",
        "service": f"kimi-deploy-{n.node}.service",
        "env_files": _env_files(n, len(r.nodes) > 1),
    }
    if r.id is not None:
        # the profile node it runs on, and where this replica's head serves
        host = n.node[len(r.id) + 1 :]
        entry |= {"replica": r.id, "host": host, "bind": r.endpoint.bind, "port": r.port}
    return entry


def manifest(
    inputs: RenderInputs,
    opts: RenderOptions,
    group: list[Replica],
    spec: MonitoringSpec,
    files: dict[str, RenderedFile],
    router: RouterRelease | None = None,
) -> dict[str, Any]:
    """``manifest.json``: what runs where (each node's argv, scripts, unit, env files), the pins, the
    monitoring targets, and the digest and mode of every file in ``files``. A fleet's ``bind`` and ``port``
    are its router's (what users reach) and ``fleet`` lists the router and the replicas."""
    cand, ep = inputs.candidate, inputs.endpoint
    listing: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "toolkit_version": __version__,
        "plan": opts.plan_path,
        "candidate": cand.id,
        "engine": cand.engine,
        "served_model_name": str(cand.engine_args["served_model_name"]),
        "model_path": inputs.model_path,
        "bind": router.entry["bind"] if router else ep.bind,
        "port": router.entry["port"] if router else group[0].port,
        "api_key_env": ep.api_key_env if not ep.loopback else None,
        "env_file": ENV_FILE,
        "pins": {
            "vllm": pins.VLLM_VERSION,
            "sglang": pins.SGLANG_VERSION,
            "llama-cpp-python": pins.LLAMA_CPP_PYTHON_VERSION,
            "ktransformers": pins.KTRANSFORMERS_VERSION,
            "sglang-kt": pins.SGLANG_KT_VERSION,
        }
        | ({router.entry["program"]: router.entry["version"]} if router else {}),
        "nodes": [_node_entry(r, n) for r in group for n in r.nodes],
        "monitoring": {
            "dir": MONITORING_DIR,
            "prometheus_config": f"{MONITORING_DIR}/prometheus.yml",
            "targets": [{"node": t.node, "address": t.address} for t in spec.targets],
            "ttft_p95_slo_s": spec.ttft_p95_slo_s,
            "credentials_file": f"{MONITORING_DIR}/api-key" if spec.api_key else None,
        },
        "files": {name: {"sha256": f.sha256, "mode": oct(f.mode)} for name, f in files.items()},
    }
    if router is not None:
        listing["fleet"] = fleet_section(group, router)
    return listing


def fleet_section(group: list[Replica], router: RouterRelease | None) -> dict[str, Any] | None:
    """The manifest's ``fleet``: the router's entry and each replica (id, nodes, head, URL, and its role in a
    prefill/decode split); None without."""
    if router is None:
        return None
    return {
        "router": router.entry,
        "replicas": [
            {
                "id": r.id,
                "nodes": [n.node for n in r.nodes],
                "head": r.head.node,
                "url": r.url,
                **({"role": r.role} if r.role else {}),
            }
            for r in group
        ],
    }


def release_meta(inputs: RenderInputs, opts: RenderOptions) -> dict[str, Any]:
    """``release.json`` but its schema, id and creation time (deploy.serving.release_dir.write_meta)."""
    cand = inputs.candidate
    return {
        "toolkit_version": __version__,
        "plan_source": opts.plan_path,
        "plan": release_dir.PLAN_COPY,
        "candidate": cand.id,
        "engine": cand.engine,
        "engine_version": pins.ENGINE_PINS.get(cand.engine, ""),
        "served_model_name": cand.engine_args.get("served_model_name"),
        "model_path": inputs.model_path,
        "weights_dir": str(inputs.weights_dir),
        "weights": inputs.lock,
        "render_options": {
            "bind": opts.bind,
            "port": opts.port,
            "api_key_env": opts.api_key_env,
            "multinode_backend": opts.multinode_backend,
            "weights_dir": str(opts.weights_dir) if opts.weights_dir else None,
            "candidate_id": opts.candidate_id,
            "secrets_to_env_file": opts.secrets_to_env_file,
            "service_user": opts.service_user,
        },
    }


# ------------------------------------------------------------------------------------------------- router

#: The router's files in a fleet's release.
ROUTER_LAUNCH = "launch-router.sh"
ROUTER_INSTALL = "install-router.sh"
ROUTER_UNIT = "kimi-deploy-router.service"
ROUTER_ENV = "router.env"
#: the router's own parser and launch, with the key from the environment (deploy/data/<Router.launcher>),
#: shipped in the release so the node runs the launcher of the toolkit that rendered it
ROUTER_LAUNCHER = "router_launch.py"


@dataclass(frozen=True)
class RouterRelease:
    """The router's files and its manifest entry (``fleet.router``)."""

    files: dict[str, RenderedFile]
    entry: dict[str, Any]


def _router_host(spec: dict[str, Any], ep: Endpoint) -> tuple[str, str]:
    """(bind, URL host) of the router: it binds where the replicas bind; users reach it at the plan's host."""
    host = str(spec.get("host") or "")
    if not host:
        raise PlanError(
            "the fleet's router has no address (a plan from --gpus): plan with a hardware profile"
        )
    return ep.bind, check_host(host, "fleet router host")


def _router_env_text(
    router: Any, bind: str, replicas: int, key_envs: list[str], secrets: dict[str, str]
) -> str:
    """router.env: the router's key when --secrets-to-env-file gave it, else a placeholder beyond loopback."""
    return render_template(
        "kimi-deploy.env.j2",
        {
            "header": [f"{router.display_name} in front of {replicas} replicas.", *ENV_FILE_HEADER],
            "values": [(k, check_env_value(k, v)) for k, v in secrets.items()],
            "placeholders": [
                (k, f"required: the router is bound to {bind}; clients send it as a bearer token")
                for k in key_envs
                if k not in secrets
            ],
        },
    )


def _router_install_text(router: Any, user: str | None) -> str:
    """install-router.sh: the pinned router in its own venv in the kimi-deploy cache, as ``user`` if given."""
    return render_template(
        "install.sh.j2",
        {
            "header": [
                f"Rendered by kimi-deploy {__version__}: install {router.display_name} {router.version}.",
                "Versions pinned in deploy/pins.py (the parser tests use the same pins).",
                *_service_user_header(user),
            ],
            "steps": as_service_user(
                [
                    {
                        "comment": (
                            f"{router.package}=={router.version} in its own venv in the kimi-deploy cache"
                        ),
                        "argv": ["kimi-deploy", "engine", "install", "router", "--router", router.name],
                    }
                ],
                user,
            ),
        },
    )


def _router_workers(spec: dict[str, Any], group: list[Replica]) -> tuple[list[str], dict[str, Any]]:
    """The router's workers: every replica's URL, or in prefill/decode mode (``fleet.router.pd``) none,
    and the prefill replicas (each with the bootstrap port its role runs, where the engine has one) and
    decode replicas as ``router_argv``'s keyword arguments."""
    if not spec.get("pd"):
        return [r.url for r in group], {}
    return [], {
        "prefill": [
            (r.url, r.candidate.engine_args.get("disaggregation_bootstrap_port"))
            for r in group
            if r.role == "prefill"
        ],
        "decode": [r.url for r in group if r.role == "decode"],
    }


def router_release(
    spec: dict[str, Any], group: list[Replica], ep: Endpoint, inputs: RenderInputs
) -> RouterRelease:
    """launch-router.sh, install-router.sh, router.env (0600) and kimi-deploy-router.service for the plan's
    ``fleet.router`` in front of ``group``'s replicas. Beyond loopback the router requires its API key
    (``KIMI_ROUTER_API_KEY``, from the env file or the environment at run time, never on argv)."""
    router = routers.get(str(spec["program"]))
    bind, host = _router_host(spec, ep)
    port = check_port(spec["port"], "fleet router port")
    metrics_port = check_port(spec["metrics_port"], "fleet router metrics_port")
    # the router binds where the replicas bind; the plan's host is where users reach it
    workers, roles = _router_workers(spec, group)
    args = router_args.router_argv({**spec, "host": bind}, workers, **roles)
    argv: list[Arg] = [EnvPath(ENGINE_DIR_VAR, "/bin/python"), EnvPath("here", f"/{ROUTER_LAUNCHER}"), *args]
    loopback = ep.loopback
    key_envs = [router.api_key_env] if not loopback else []
    shown = f"[{host}]" if ":" in host else host
    secrets = {k: v for k, v in inputs.secrets.items() if k == router.api_key_env}
    env_text = _router_env_text(router, bind, len(group), key_envs, secrets)
    launch_text = render_template(
        "launch.sh.j2",
        {
            "header": [
                f"Rendered by kimi-deploy {__version__}: {router.display_name} {router.version} in front of "
                f"{len(group)} replicas ({', '.join(str(r.id) for r in group)}).",
                "Start it after the replicas are ready: it waits for them to answer its health checks.",
            ],
            "env_files": [ROUTER_ENV],
            "path_prepend": None,
            "required_env": key_envs,
            # vllm-router renames its process with setproctitle, which otherwise overwrites the environment
            # block that `down` identifies its processes by (KIMI_DEPLOY_RUN_ID)
            "exports": [("SPT_NOENV", "1")],
            "key_config": None,
            "pre": [],
            "argv_lines": _argv_lines(argv),
            "engine_dir_var": ENGINE_DIR_VAR,
            "engine_dir": f"venvs/{router_install.router_venv_key(router)}",
            "engine_binary": "bin/python",
            "install_script": ROUTER_INSTALL,
        },
    )
    install_text = _router_install_text(router, inputs.service_user)
    unit_text = render_template(
        "kimi-deploy.service.j2",
        {
            "description": f"kimi-deploy {router.display_name} in front of {len(group)} replicas",
            "env_files": [inputs.out_dir / ROUTER_ENV],
            "launch_script": inputs.out_dir / ROUTER_LAUNCH,
            "out_dir": inputs.out_dir,
            "timeout_start_s": 120,
            "ready_command": _ready_command(Endpoint(bind=bind), port),
            # the router loads no weights and locks no memory
            **unit_limits(120, memlock=False),
            **service_user_lines(inputs.service_user),
        },
    )
    files = {
        ROUTER_LAUNCHER: RenderedFile(router_args.launcher_path(router).read_text(encoding="utf-8"), 0o644),
        ROUTER_ENV: RenderedFile(env_text, 0o600),
        ROUTER_LAUNCH: RenderedFile(launch_text, 0o755),
        ROUTER_INSTALL: RenderedFile(install_text, 0o755),
        ROUTER_UNIT: RenderedFile(unit_text, 0o644),
    }
    entry = {
        "name": "router",
        "program": router.name,
        "version": router.version,
        "node": str(spec.get("node") or ""),
        "bind": bind,
        "port": port,
        "url": f"http://{shown}:{port}",
        "metrics": f"{_scrape_host(ep, group[0].head) if loopback else shown}:{metrics_port}",
        "argv": argv_strings(argv),
        "launch": ROUTER_LAUNCH,
        "install": ROUTER_INSTALL,
        "service": ROUTER_UNIT,
        "env_file": ROUTER_ENV,
        "health_check_interval_s": int(spec.get("health_check_interval_s") or 5),
    }
    return RouterRelease(files, entry)


# ------------------------------------------------------------------------------------------------ compose


@dataclass(frozen=True)
class Release:
    """A composed release, not yet written: ``files`` maps each path in the release folder to its text and
    mode, in the order they are written (``manifest.json`` and ``plan.json`` last; ``release.json`` is
    ``meta`` plus its creation time, added when written)."""

    id: str
    candidate: Candidate
    nodes: list[NodeCommand]
    files: dict[str, RenderedFile]
    manifest: dict[str, Any]
    meta: dict[str, Any]


def _node_files(r: Replica, ep: Endpoint, out: Path, user: str | None = None) -> dict[str, RenderedFile]:
    """Each node's launch script, install script, unit and (multi-node) own env file, of one replica."""
    cand, files = r.candidate, {}
    for n in r.nodes:
        if not _NODE_NAME.match(n.node):
            raise InputError(
                f"node name {n.node!r}: use letters, digits, '.', '_' or '-' (it names the files)"
            )
        if len(r.nodes) > 1:
            files[f"kimi-deploy-{n.node}.env"] = node_env_file(cand, n)
        files[f"launch-{n.node}.sh"] = launch_script(cand, r.nodes, n, r.endpoint, user)
        files[f"install-{n.node}.sh"] = install_script(cand, r.nodes, n, user)
        files[f"kimi-deploy-{n.node}.service"] = systemd_unit(cand, r.nodes, n, r.endpoint, r.port, out, user)
    return files


def compose_release(plan: Plan, inputs: RenderInputs, opts: RenderOptions | None = None) -> Release:
    """Every file of the release for ``plan`` and ``inputs`` (``resolve_inputs``); pure: reads and writes
    nothing (but the templates), so the same arguments give the same texts. A fleet (a plan whose
    ``fleet.router`` is set) gets each replica's node files (deploy.serving.replicas) and the router's."""
    opts = opts or RenderOptions()
    cand, ep = inputs.candidate, inputs.endpoint
    group = replicas.replicas(plan, cand, inputs.model_path, ep, inputs.chat_template)
    nodes = [n for r in group for n in r.nodes]
    for r in group:
        check_port(r.port, "port")
    files = {ENV_FILE: env_file(cand, nodes, ep, inputs.secrets)}
    for r in group:
        files.update(_node_files(r, ep, inputs.out_dir, inputs.service_user))
    fleet = replicas.fleet_of(plan)
    router = (
        router_release(replicas.reachable(plan, fleet["router"], ep), group, ep, inputs) if fleet else None
    )
    if router is not None:
        files.update(router.files)
    spec = monitoring_spec(plan, cand, group, ep, opts, fleet_section(group, router))
    api_key = inputs.secrets.get(ep.api_key_env) if spec.api_key and ep.api_key_env else None
    files.update(monitoring_files(spec, api_key))
    rid = release_id_for(plan, inputs, opts, files)
    listing = manifest(inputs, opts, group, spec, files, router)
    files[MANIFEST] = json_file(listing)
    files[release_dir.PLAN_COPY] = json_file(plan.to_dict() | {"chosen": cand.id})
    return Release(rid, cand, nodes, files, listing, release_meta(inputs, opts))


def render(
    plan: Plan | str | Path, opts: RenderOptions | None = None, environ: dict[str, str] | None = None
) -> RenderResult:
    """Render every file for the plan's chosen candidate (or ``opts.candidate_id``) into ``opts.out_dir``:
    resolve the inputs, compose the release, then write it and switch ``current`` (release_dir.publish)."""
    opts = opts or RenderOptions()
    environ = dict(os.environ) if environ is None else environ
    if not isinstance(plan, Plan):
        opts.plan_path = opts.plan_path or str(plan)
        plan = load_plan(plan)
    inputs = resolve_inputs(plan, opts, environ)
    release = compose_release(plan, inputs, opts)
    published = release_dir.publish(
        inputs.out_dir,
        release.id,
        release.files,
        release.meta,
        check_monitoring=opts.check_monitoring,
        switch=opts.switch_current,
        keep=opts.keep,
    )
    return RenderResult(
        out_dir=inputs.out_dir,
        candidate=release.candidate,
        nodes=release.nodes,
        files=published.files,
        manifest=release.manifest,
        release_id=release.id,
        release_dir=published.path,
        pruned=published.pruned,
        promtool=published.promtool,
    )


__all__ = [
    "ENV_FILE",
    "MANIFEST",
    "MONITORING_DIR",
    "Release",
    "RenderError",
    "RenderInputs",
    "RenderOptions",
    "RenderResult",
    "RenderedFile",
    "as_service_user",
    "compose_release",
    "endpoint_for",
    "engine_environment",
    "env_file",
    "install_script",
    "install_steps",
    "launch_script",
    "manifest",
    "monitoring_files",
    "monitoring_spec",
    "node_env_file",
    "release_id_for",
    "release_meta",
    "render",
    "render_template",
    "resolve_chat_template",
    "resolve_model_path",
    "resolve_inputs",
    "service_user_lines",
    "shell_quote",
    "systemd_unit",
    "template_env",
    "weights_dir_for",
]
