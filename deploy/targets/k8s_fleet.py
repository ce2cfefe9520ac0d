"""A fleet on Kubernetes: the LWS runs one group per replica; a router Deployment fronts their leaders.

    >>> leader_urls("kimi", 2, 8001)
    ['http://kimi-0.kimi:8001', 'http://kimi-1.kimi:8001']

LWS names group ``g``'s leader pod ``<name>-<g>`` under its headless Service ``<name>``, so the router reaches
every replica's leader by name. The router runs the toolkit's launcher for it (deploy/data/, shipped in the
ConfigMap) with its pinned package's parser, its key from the same Secret as the replicas' (it accepts
exactly the replicas' key: deploy/data/router_launch.py), and the flags of deploy.routers.argv.
"""

from __future__ import annotations

from typing import Any

from deploy.routers import argv as router_args
from deploy.routers import registry as routers
from deploy.targets.k8s_pod import CONFIG_DIR

ROUTER_COMPONENT = "router"


def leader_urls(name: str, replicas: int, port: int) -> list[str]:
    """Each group's leader as the router reaches it (``http://<name>-<g>.<name>:<port>``)."""
    return [f"http://{name}-{g}.{name}:{port}" for g in range(replicas)]


def router_argv(spec: dict[str, Any], workers: list[str]) -> list[str]:
    """The router's command: the launcher under the image's python, then deploy.routers.argv's flags, bound
    on the pod's every address (its Service reaches it)."""
    router = routers.get(str(spec["program"]))
    args = router_args.router_argv({**spec, "host": "0.0.0.0", "metrics_host": "0.0.0.0"}, workers)
    return ["python3", f"{CONFIG_DIR}/{router.launcher}", *args]


def launcher_file(spec: dict[str, Any]) -> tuple[str, str]:
    """(ConfigMap key, text) of the router's launcher."""
    router = routers.get(str(spec["program"]))
    return router.launcher, router_args.launcher_path(router).read_text(encoding="utf-8")


def router_deployment(
    meta: dict[str, Any], spec: dict[str, Any], workers: list[str], image: str, secret: str, config_map: str
) -> dict[str, Any]:
    """The router's Deployment (one pod): probes on its health path, the key from ``secret``."""
    router = routers.get(str(spec["program"]))
    labels = {"app.kubernetes.io/instance": meta["labels"]["app.kubernetes.io/instance"]}
    labels["app.kubernetes.io/component"] = ROUTER_COMPONENT
    health = {
        "httpGet": {"path": router.health_path, "port": "http"},
        "periodSeconds": 5,
        "timeoutSeconds": 4,
    }
    container = {
        "name": "router",
        "image": image,
        "command": router_argv(spec, workers),
        "env": [
            {"name": router.api_key_env, "valueFrom": {"secretKeyRef": {"name": secret, "key": "api-key"}}},
            # the router renames its process with setproctitle, which would overwrite the environment
            {"name": "SPT_NOENV", "value": "1"},
        ],
        "ports": [
            {"name": "http", "containerPort": int(spec["port"]), "protocol": "TCP"},
            {"name": "metrics", "containerPort": int(spec["metrics_port"]), "protocol": "TCP"},
        ],
        "readinessProbe": {**health, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 15, "failureThreshold": 4},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **meta,
            "name": f"{meta['name']}-router",
            "annotations": {"kimi-deploy/router": router.name},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**meta["labels"], **labels}},
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "config", "configMap": {"name": config_map}}],
                },
            },
        },
    }


def router_selector(instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": instance, "app.kubernetes.io/component": ROUTER_COMPONENT}


__all__ = ["launcher_file", "leader_urls", "router_argv", "router_deployment", "router_selector"]
