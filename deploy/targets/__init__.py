"""Render targets beyond the bare-metal release (deploy.serving.render): Kubernetes (``k8s``).

``k8s`` composes a plan's LeaderWorkerSet, Service, ConfigMap, PodMonitor and PrometheusRule as plain dicts
(``k8s.compose``), from the same engine argv and environment functions as the systemd render
(``k8s_nodes``); ``k8s_validate`` checks them against the schemas offline and ``k8s_write`` writes them.
"""
