"""The pod template of an LWS leader or worker: container, init containers, probes, volumes (plain dicts).

    >>> probe_budget(startup_probe("/health", "http", 1440, 10))
    1440

Probes come from the plan: the startup probe allows ``start_deadline_s`` (the calibrated time to ready times
its factor of safety, as systemd's TimeoutStartSec); Kubernetes runs no readiness or liveness probe until the
startup probe has passed, so liveness cannot kill a loading engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deploy.serving.quoting import ENV_VALUE_CHARS
from deploy.targets.k8s_nodes import POD_IP_VAR, PodCommand, env_list, shell_command

#: where the ConfigMap (weights.lock, the checker, a chat template) and the SGLang key file are mounted
CONFIG_DIR = "/etc/kimi-deploy"
RUN_DIR = "/run/kimi-deploy"
PROBE_PERIOD_S = 10
#: liveness: a served engine that stops answering /health for this long is restarted (with its group)
LIVENESS_FAILURES = 6


@dataclass(frozen=True)
class PodInputs:
    """What a pod template needs besides its command: image, resources, weights, the secret's reference."""

    image: str
    downloader_image: str
    gpus: int
    memory_gib: int
    shm_gib: int
    weights_dir: str
    weights_volume: dict[str, Any]
    api_key_env: str | None
    api_key_secret: str
    port: int
    health_path: str
    start_deadline_s: int
    download_argv: list[str]
    verify_argv: list[str] | None
    key_config: tuple[str, str] | None = None  # (variable, file) of SGLang's --config key file


def startup_probe(path: str, port: str, deadline_s: int, period_s: int) -> dict[str, Any]:
    """An HTTP startup probe whose budget (period x failures) is at least ``deadline_s``."""
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period_s,
        "failureThreshold": max(1, math.ceil(deadline_s / period_s)),
        "timeoutSeconds": 5,
    }


def probe_budget(probe: dict[str, Any]) -> int:
    """Seconds a probe allows before it gives up (period x failure threshold)."""
    return int(probe["periodSeconds"]) * int(probe["failureThreshold"])


def _secret_env(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": "api-key"}}}


def _key_config_init(p: PodInputs) -> dict[str, Any]:
    """SGLang reads its key only from argv or a --config file: an init container writes the file (0600, in
    memory) from the Secret, refusing characters that YAML would read otherwise (as launch.sh does)."""
    var, file = p.key_config or ("", "")
    script = (
        f'case "${p.api_key_env}" in *[!{ENV_VALUE_CHARS}]*) '
        f'echo "{p.api_key_env}: only [{ENV_VALUE_CHARS}]" >&2; exit 2;; esac; '
        f'umask 077; printf \'api-key: "%s"\\n\' "${p.api_key_env}" > {RUN_DIR}/{file}'
    )
    return {
        "name": "api-key-config",
        "image": p.image,
        "command": ["/bin/sh", "-c", script],
        "env": [_secret_env(str(p.api_key_env), p.api_key_secret)],
        "volumeMounts": [{"name": "run", "mountPath": RUN_DIR}],
    }


def _init_containers(p: PodInputs, leader: bool) -> list[dict[str, Any]]:
    weights = {"name": "weights", "mountPath": p.weights_dir}
    config = {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
    inits = [
        {
            "name": "weights-download",
            "image": p.downloader_image,
            "command": p.download_argv,
            "env": [{"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"}],
            "volumeMounts": [weights],
        }
    ]
    if p.verify_argv:
        # fail closed: a digest that differs from weights.lock stops the pod before the engine starts
        inits.append(
            {
                "name": "weights-verify",
                "image": p.downloader_image,
                "command": p.verify_argv,
                "volumeMounts": [{**weights, "readOnly": True}, config],
            }
        )
    if leader and p.key_config:
        inits.append(_key_config_init(p))
    return inits


def _env(cmd: PodCommand, p: PodInputs, leader: bool) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": POD_IP_VAR, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]
    if leader and p.api_key_env:
        # declared before the engine's own variable, which refers to it as $(NAME)
        env.append(_secret_env(p.api_key_env, p.api_key_secret))
    if leader and p.key_config:
        env.append({"name": p.key_config[0], "value": f"{RUN_DIR}/{p.key_config[1]}"})
    return env + env_list(cmd.env)


def _container(cmd: PodCommand, p: PodInputs, leader: bool) -> dict[str, Any]:
    limits: dict[str, Any] = {"nvidia.com/gpu": p.gpus} if p.gpus else {}
    c: dict[str, Any] = {
        "name": "engine",
        "image": p.image,
        "command": shell_command(cmd),
        "env": _env(cmd, p, leader),
        "resources": {
            "requests": {"memory": f"{p.memory_gib}Gi", **limits},
            **({"limits": limits} if limits else {}),
        },
        "volumeMounts": [
            {"name": "weights", "mountPath": p.weights_dir, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        ]
        + ([{"name": "run", "mountPath": RUN_DIR, "readOnly": True}] if leader and p.key_config else []),
    }
    if leader:
        c["ports"] = [{"name": "http", "containerPort": p.port, "protocol": "TCP"}]
        health = {"httpGet": {"path": p.health_path, "port": "http"}, "timeoutSeconds": 5}
        c["startupProbe"] = startup_probe(p.health_path, "http", p.start_deadline_s, PROBE_PERIOD_S)
        c["readinessProbe"] = {**health, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": 3}
        c["livenessProbe"] = {
            **health,
            "periodSeconds": PROBE_PERIOD_S * 3,
            "failureThreshold": LIVENESS_FAILURES,
        }
    return c


def pod_spec(cmd: PodCommand, p: PodInputs, leader: bool, config_map: str) -> dict[str, Any]:
    """The pod spec of the leader (serves HTTP, probed) or a worker."""
    volumes: list[dict[str, Any]] = [
        {"name": "weights", **p.weights_volume},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{p.shm_gib}Gi"}},
        {"name": "config", "configMap": {"name": config_map}},
    ]
    if leader and p.key_config:
        volumes.append({"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}})
    return {
        "initContainers": _init_containers(p, leader),
        "containers": [_container(cmd, p, leader)],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 60,
    }


__all__ = [
    "CONFIG_DIR",
    "PROBE_PERIOD_S",
    "RUN_DIR",
    "PodInputs",
    "pod_spec",
    "probe_budget",
    "startup_probe",
]
