"""`kimi-deploy render --target k8s`: a plan as Kubernetes documents (plain dicts; deploy.targets.k8s_write
dumps them as YAML).

    >>> from deploy.targets.k8s import compose, K8sOptions
    >>> docs = compose(load_plan("plan.json"), K8sOptions()).documents          # doctest: +SKIP
    >>> [d["kind"] for d in docs]                                               # doctest: +SKIP
    ['ConfigMap', 'LeaderWorkerSet', 'Service', 'PodMonitor', 'PrometheusRule']

One LeaderWorkerSet runs the candidate (group size = the plan's nodes, ``RecreateGroupOnPodRestart``); the
engine argv and environment come from the functions the systemd render uses (deploy.targets.k8s_nodes), with
addresses and ranks from LWS. A ConfigMap carries weights.lock and the checker the init containers run
before the engine (download at the locked commit, then verify digests, fail closed). The API key reaches the
pods only through a Secret reference (``--api-key-secret``), never as a value. A Service fronts the leader;
a PodMonitor and a PrometheusRule (the same alert rules promtool checks for systemd) monitor it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import __version__, constants, pins, schema
from deploy.engines import registry
from deploy.errors import InputError, PlanError
from deploy.monitoring import fleet_rules, rules
from deploy.monitoring.spec import (
    DEFAULT_TTFT_P95_SLO_S,
    JOB,
    ROUTER_JOB,
    MonitoringSpec,
    RouterTarget,
    ScrapeTarget,
)
from deploy.planning.contract import Candidate, Plan
from deploy.schema import check_env_name, check_host, check_port
from deploy.serving import render
from deploy.serving.argv import SGLANG_KEY_CONFIG_FILE, SGLANG_KEY_CONFIG_VAR, Endpoint, is_loopback
from deploy.serving.replicas import fleet_of
from deploy.targets import k8s_fleet
from deploy.targets.k8s_nodes import LwsCommands, lws_commands
from deploy.targets.k8s_pod import CONFIG_DIR, PodInputs, pod_spec
from deploy.weights import lockfile

LWS_API = "leaderworkerset.x-k8s.io/v1"
MONITORING_API = "monitoring.coreos.com/v1"
CHECKER = "k8s_weights_check.py"
CHECKER_PATH = constants.PACKAGE_DIR / "data" / CHECKER
#: where an image without a published pin (llama.cpp) holds the engine build (its bin/llama-server)
DEFAULT_ENGINE_DIR = "/opt/kimi-deploy/engine"
#: the image the weights init containers run when the engine's has no `hf` (it has python3 and hf)
DOWNLOADER_IMAGE = pins.ENGINE_IMAGES["vllm"]
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?\Z")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}\Z")
_INTERFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,14}\Z")
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"


@dataclass
class K8sOptions:
    """What `render --target k8s` writes; ``None`` means: take it from the plan (or the default)."""

    out_dir: str | Path = "rendered-k8s"
    candidate_id: str | None = None
    weights_dir: str | Path | None = None
    bind: str | None = None
    port: int | None = None
    api_key_env: str | None = None
    multinode_backend: str | None = None
    name: str = "kimi-deploy"
    namespace: str | None = None
    image: str | None = None
    interface: str | None = None
    #: pvc (a ReadWriteMany claim, ``weights_claim``) or hostpath (the plan's weights folder on every node)
    weights_volume: str = "pvc"
    weights_claim: str = "kimi-weights"
    api_key_secret: str = "kimi-deploy-api-key"
    engine_dir: str = DEFAULT_ENGINE_DIR
    #: a fleet's router image (the pinned router package has no published image)
    router_image: str | None = None
    ttft_p95_slo_s: float | None = None
    plan_path: str | None = None


@dataclass(frozen=True)
class K8sRender:
    """The documents in apply order, and what produced them (for messages and tests)."""

    candidate: Candidate
    documents: list[dict[str, Any]]
    commands: LwsCommands
    start_deadline_s: int
    lock: bool
    notes: list[str] = field(default_factory=list)


def _check_name(value: str, what: str) -> str:
    if not _DNS_LABEL.match(value):
        raise InputError(f"{what} {value!r}: a DNS label (lower-case letters, digits, '-'; at most 42)")
    return value


def check_options(opts: K8sOptions) -> None:
    """Every option that lands in a manifest, checked at the boundary (one line each)."""
    _check_name(opts.name, "--name")
    _check_name(opts.api_key_secret, "--api-key-secret")
    _check_name(opts.weights_claim, "--weights-claim")
    if opts.namespace:
        _check_name(opts.namespace, "--namespace")
    for flag, image in (("--image", opts.image), ("--router-image", opts.router_image)):
        if image and not _IMAGE.match(image):
            raise InputError(f"{flag} {image!r}: not an image reference")
    if opts.interface and not _INTERFACE.match(opts.interface):
        raise InputError(f"--interface {opts.interface!r}: not a network interface name")
    if opts.weights_volume not in ("pvc", "hostpath"):
        raise InputError(f"--weights-volume {opts.weights_volume!r}: expected pvc or hostpath")
    if opts.multinode_backend not in (None, "mp"):
        raise InputError("--multinode-backend: on Kubernetes only mp (LWS starts and restarts the group)")
    schema.validate(str(opts.engine_dir), schema.PATH, "--engine-dir")


def endpoint(cand: Candidate, opts: K8sOptions) -> Endpoint:
    """The leader's endpoint: a pod serves on its own address (0.0.0.0 unless --bind says otherwise), so an
    API key is always required; only its variable's name is used, never its value."""
    bind = check_host(opts.bind or "0.0.0.0", "--bind")
    if is_loopback(bind):
        raise InputError(f"--bind {bind}: a pod must serve beyond loopback (its Service and probes reach it)")
    port = check_port(opts.port, "--port") if opts.port is not None else None
    key = check_env_name(opts.api_key_env or cand.engine_args.get("api_key_env") or "KIMI_API_KEY")
    return Endpoint(bind=bind, port=port, api_key_env=key, multinode_backend=opts.multinode_backend)


def image_for(cand: Candidate, opts: K8sOptions) -> str:
    """The engine image: ``--image``, else the engine's published image at its pin (deploy.pins)."""
    image = opts.image or pins.ENGINE_IMAGES.get(cand.engine)
    if registry.get(cand.engine).uses_cpu_build(cand.engine_args) and not opts.image:
        image = None  # the CPU build runs from a venv path no published image has
    if not image:
        raise InputError(
            f"{cand.engine} has no published image at its pin ({pins.ENGINE_PINS.get(cand.engine, '?')}): "
            "pass --image with one built at that pin"
        )
    return image


def _shm_gib(plan: Plan) -> int:
    """/dev/shm as on the plan's head node (the profile's, else the kernel's default: half the RAM)."""
    node = (plan.hardware.get("nodes") or [{}])[0]
    shm = float(node.get("shm_gib") or 0) or float(node.get("ram_gib") or 2) / 2
    return max(1, math.floor(shm))


def _model_and_template(cand: Candidate, weights_dir: Path) -> tuple[str, Path | None, Path | None]:
    """(model path, chat template as the pod sees it, the local template file shipped in the ConfigMap)."""
    model = render.resolve_model_path(cand, weights_dir)
    local = None
    if registry.get(cand.engine).chat_template_file:
        local = render.resolve_chat_template(cand.engine_args.get("chat_template"), cand)
    return model, (Path(CONFIG_DIR) / local.name if local else None), local


def _meta(opts: K8sOptions, name: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": "kimi-deploy",
            "app.kubernetes.io/instance": opts.name,
            "app.kubernetes.io/managed-by": "kimi-deploy",
        },
        **extra,
    }
    if opts.namespace:
        meta["namespace"] = opts.namespace
    return meta


def config_map(
    opts: K8sOptions, lock_text: str | None, template: Path | None, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """weights.lock, the checker the init container runs, the chat template the engine reads, and ``extra``
    (a fleet's router launcher)."""
    data = {CHECKER: CHECKER_PATH.read_text(encoding="utf-8"), **(extra or {})}
    if lock_text is not None:
        data[lockfile.LOCK_NAME] = lock_text
    if template is not None:
        data[template.name] = template.read_text(encoding="utf-8")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(opts, f"{opts.name}-config"),
        "data": data,
    }


def _weights_steps(
    cand: Candidate, weights_dir: Path, lock_text: str | None
) -> tuple[list[str], list[str] | None]:
    """The init containers' commands: ``hf download`` at the locked commit (else the plan's revision), then
    the checker against the lock's digest (none without a lock: nothing to fail closed against)."""
    w = cand.weights
    revision = w.revision
    if lock_text is not None:
        revision = lockfile.lock_from_dict(schema.parse_json(lock_text, lockfile.LOCK_NAME)).commit
    download = ["hf", "download", w.repo, "--revision", revision, "--local-dir", str(weights_dir)]
    for pattern in w.allow_patterns:
        download += ["--include", pattern]
    if lock_text is None:
        return download, None
    sha = hashlib.sha256(lock_text.encode()).hexdigest()
    verify = [
        "python3",
        f"{CONFIG_DIR}/{CHECKER}",
        f"{CONFIG_DIR}/{lockfile.LOCK_NAME}",
        str(weights_dir),
        sha,
    ]
    return download, verify


def leader_worker_set(
    opts: K8sOptions, cmds: LwsCommands, pod: PodInputs, cand: Candidate, replicas: int = 1
) -> dict[str, Any]:
    """The LeaderWorkerSet: ``replicas`` groups of ``cmds.size`` pods, each recreated together when one of its
    pods restarts."""
    config = f"{opts.name}-config"
    leader = {
        "metadata": {"labels": {"kimi-deploy/role": "leader"}},
        "spec": pod_spec(cmds.leader, pod, True, config),
    }
    template: dict[str, Any] = {"size": cmds.size, "restartPolicy": "RecreateGroupOnPodRestart"}
    if cmds.worker is None:
        # a group of one: the worker template is the leader's (LWS uses it for the leader)
        template["workerTemplate"] = leader
    else:
        template["leaderTemplate"] = leader
        template["workerTemplate"] = {
            "metadata": {"labels": {"kimi-deploy/role": "worker"}},
            "spec": pod_spec(cmds.worker, pod, False, config),
        }
    annotations = {"kimi-deploy/candidate": cand.id, "kimi-deploy/toolkit-version": __version__}
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": _meta(opts, opts.name, annotations=annotations),
        "spec": {"replicas": replicas, "startupPolicy": "LeaderCreated", "leaderWorkerTemplate": template},
    }


def _leader_selector(opts: K8sOptions) -> dict[str, str]:
    return {LWS_NAME_LABEL: opts.name, LWS_INDEX_LABEL: "0"}


def service(opts: K8sOptions, port: int, selector: dict[str, str] | None = None) -> dict[str, Any]:
    """What users reach: the leader (the only pod that serves HTTP), or a fleet's router (``selector``)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(opts, f"{opts.name}-api"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector or _leader_selector(opts),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def monitoring_spec(
    cand: Candidate, opts: K8sOptions, plan: Plan, port: int, router: RouterTarget | None = None
) -> MonitoringSpec:
    """The same spec the systemd render's rules come from, with the leader's Service as the one target and
    a fleet's ``router``."""
    slo = opts.ttft_p95_slo_s or (plan.request or {}).get("ttft_p95_slo_s") or DEFAULT_TTFT_P95_SLO_S
    eng = registry.get(cand.engine)
    return MonitoringSpec(
        engine=cand.engine,
        served_model_name=str(cand.engine_args["served_model_name"]),
        candidate=cand.id,
        targets=[ScrapeTarget("leader", f"{opts.name}:{port}")],
        api_key=True,
        slots=int(cand.engine_args.get("parallel") or 1) if eng.metrics.slot_based else 1,
        ttft_p95_slo_s=float(slo),
        router=router,
    )


def pod_monitor(opts: K8sOptions, spec: MonitoringSpec) -> dict[str, Any]:
    """Scrape the leader's /metrics with the Secret's key, labelled as the systemd render's scrape job."""
    static = {"job": JOB, "engine": spec.engine, "model": spec.served_model_name, "candidate": spec.candidate}
    relabel = [{"targetLabel": k, "replacement": v, "action": "replace"} for k, v in static.items()]
    relabel.append(
        {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "node", "action": "replace"}
    )
    return {
        "apiVersion": MONITORING_API,
        "kind": "PodMonitor",
        "metadata": _meta(opts, opts.name),
        "spec": {
            "selector": {"matchLabels": _leader_selector(opts)},
            "podMetricsEndpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "interval": f"{spec.timings.scrape_interval_s}s",
                    "authorization": {
                        "type": "Bearer",
                        "credentials": {"name": opts.api_key_secret, "key": "api-key"},
                    },
                    "relabelings": relabel,
                }
            ],
        },
    }


def router_pod_monitor(opts: K8sOptions, spec: MonitoringSpec) -> dict[str, Any]:
    """Scrape a fleet's router as the systemd render's router job does: its labels, and each worker URL
    named by its replica id (``replica``)."""
    router = spec.router
    assert router is not None
    static = {"job": ROUTER_JOB, "node": router.node, "program": router.program}
    static |= {"model": spec.served_model_name, "candidate": spec.candidate}
    return {
        "apiVersion": MONITORING_API,
        "kind": "PodMonitor",
        "metadata": _meta(opts, f"{opts.name}-router"),
        "spec": {
            "selector": {"matchLabels": k8s_fleet.router_selector(opts.name)},
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": f"{spec.timings.scrape_interval_s}s",
                    "relabelings": [
                        {"targetLabel": k, "replacement": v, "action": "replace"} for k, v in static.items()
                    ],
                    "metricRelabelings": [
                        {
                            "sourceLabels": ["worker"],
                            "regex": re.escape(url),
                            "targetLabel": "replica",
                            "replacement": rid,
                            "action": "replace",
                        }
                        for rid, url in router.replicas
                    ],
                }
            ],
        },
    }


def prometheus_rule(opts: K8sOptions, spec: MonitoringSpec) -> dict[str, Any]:
    """The alert rules of deploy.monitoring.rules (what promtool checks for systemd), and a fleet's router
    rules (deploy.monitoring.fleet_rules), as a PrometheusRule."""
    groups = list(rules.rules_document(spec)["groups"])
    for doc in fleet_rules.rules_documents(spec).values():
        groups += doc["groups"]
    return {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": _meta(opts, opts.name),
        "spec": {"groups": groups},
    }


def _weights_volume(opts: K8sOptions, weights_dir: Path) -> dict[str, Any]:
    if opts.weights_volume == "hostpath":
        return {"hostPath": {"path": str(weights_dir), "type": "DirectoryOrCreate"}}
    return {"persistentVolumeClaim": {"claimName": opts.weights_claim}}


def _pod_inputs(
    plan: Plan, cand: Candidate, opts: K8sOptions, ep: Endpoint, weights_dir: Path, lock_text: str | None
) -> PodInputs:
    image = image_for(cand, opts)
    download, verify = _weights_steps(cand, weights_dir, lock_text)
    shm = _shm_gib(plan)
    eng = registry.get(cand.engine)
    return PodInputs(
        image=image,
        downloader_image=DOWNLOADER_IMAGE,
        gpus=cand.gpus_per_node,
        memory_gib=max(1, math.ceil(cand.memory.host)) + shm,
        shm_gib=shm,
        weights_dir=str(weights_dir),
        weights_volume=_weights_volume(opts, weights_dir),
        api_key_env=ep.api_key_env,
        api_key_secret=opts.api_key_secret,
        port=int(ep.port or cand.engine_args.get("port") or 8000),
        health_path=eng.health.path,
        start_deadline_s=int(cand.start_deadline_s),
        download_argv=download,
        verify_argv=verify,
    )


def _candidate(plan: Plan, opts: K8sOptions) -> Candidate:
    cand = plan.candidate(opts.candidate_id) if opts.candidate_id else plan.chosen_candidate
    if not cand.runs:
        why = "; ".join(cand.reasons) or "it does not run"
        raise PlanError(f"candidate {cand.id!r} is {cand.status}: {why}")
    fleet = fleet_of(plan)
    if fleet is None:
        return cand
    if opts.port is not None:
        raise PlanError("--port names one server's port; a fleet's ports are the plan's (plan --router-port)")
    if not opts.router_image:
        raise InputError(
            f"a fleet's router ({fleet['router']['program']}) has no published image at its pin: pass "
            "--router-image with one that has it installed"
        )
    # every group is its own pods: one port serves for all (the first replica's, as the plan gives it)
    port = int(fleet["replicas"][0]["port"])
    return dataclasses.replace(cand, engine_args={**cand.engine_args, "port": port})


@dataclass(frozen=True)
class _FleetParts:
    """A fleet's router: ConfigMap files, its Deployment, the Service's selector, the LWS's replicas, the
    port users reach and its monitoring target (all empty or one for a single replica)."""

    files: dict[str, str] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)
    selector: dict[str, str] | None = None
    replicas: int = 1
    port: int | None = None
    target: RouterTarget | None = None


def _fleet_documents(plan: Plan, opts: K8sOptions, port: int) -> _FleetParts:
    """The router's parts of a fleet (``_FleetParts``); nothing for one replica."""
    fleet = fleet_of(plan)
    if fleet is None:
        return _FleetParts()
    spec = fleet["router"]
    replicas = len(fleet["replicas"])
    workers = k8s_fleet.leader_urls(opts.name, replicas, port)
    key, text = k8s_fleet.launcher_file(spec)
    meta = _meta(opts, opts.name)
    deployment = k8s_fleet.router_deployment(
        meta, spec, workers, str(opts.router_image), opts.api_key_secret, f"{opts.name}-config"
    )
    ids = [str(r["id"]) for r in fleet["replicas"]]
    target = RouterTarget(
        program=str(spec["program"]),
        address=f"{opts.name}-router:{int(spec['metrics_port'])}",
        node="router",
        replicas=tuple(zip(ids, workers, strict=True)),
    )
    selector = k8s_fleet.router_selector(opts.name)
    return _FleetParts({key: text}, [deployment], selector, replicas, int(spec["port"]), target)


def compose(plan: Plan, opts: K8sOptions | None = None) -> K8sRender:
    """Every document for ``plan``'s chosen candidate (or ``opts.candidate_id``), in apply order; reads the
    weights lock and the chat template, writes nothing. A fleet runs one LWS group per replica behind its
    router's Deployment, which the user-facing Service then selects."""
    opts = opts or K8sOptions()
    check_options(opts)
    if plan.fleet.mode == "disaggregated":
        # one LWS runs one candidate's groups; a split needs one per role (LWS's DisaggregatedSet)
        raise InputError(
            "render --target k8s: a prefill/decode split renders for systemd only so far (plan with "
            "--fleet-mode aggregated for Kubernetes)"
        )
    cand = _candidate(plan, opts)
    ep = endpoint(cand, opts)
    weights_dir = render.weights_dir_for(plan, cand, opts.weights_dir)
    schema.validate(str(weights_dir), schema.PATH, "--weights-dir" if opts.weights_dir else "plan weights")
    model, template, local_template = _model_and_template(cand, weights_dir)
    has_lock = lockfile.lock_path(weights_dir).is_file()
    lock_text = schema.read_text(lockfile.lock_path(weights_dir)) if has_lock else None
    cmds = lws_commands(plan, cand, model, ep, template, opts.interface, opts.engine_dir)
    pod = _pod_inputs(plan, cand, opts, ep, weights_dir, lock_text)
    if cmds.leader.node.key_config is not None:
        pod = dataclasses.replace(pod, key_config=(SGLANG_KEY_CONFIG_VAR, SGLANG_KEY_CONFIG_FILE.lstrip(".")))
    fleet = _fleet_documents(plan, opts, pod.port)
    spec = monitoring_spec(cand, opts, plan, pod.port, fleet.target)
    docs = [
        config_map(opts, lock_text, local_template, fleet.files),
        leader_worker_set(opts, cmds, pod, cand, fleet.replicas),
        *fleet.documents,
        service(opts, fleet.port or pod.port, fleet.selector),
        pod_monitor(opts, spec),
        *([router_pod_monitor(opts, spec)] if fleet.target else []),
        prometheus_rule(opts, spec),
    ]
    notes = []
    if not has_lock:
        notes.append(
            f"{lockfile.lock_path(weights_dir)} not found: the pods download at {cand.weights.revision} "
            "without a digest check (run `kimi-deploy download` first to pin the weights)"
        )
    return K8sRender(cand, docs, cmds, int(cand.start_deadline_s), has_lock, notes)


__all__ = [
    "K8sOptions",
    "K8sRender",
    "check_options",
    "compose",
    "config_map",
    "endpoint",
    "image_for",
    "leader_worker_set",
    "monitoring_spec",
    "pod_monitor",
    "prometheus_rule",
    "router_pod_monitor",
    "service",
]
