"""vLLM's router (PyPI ``vllm-router``, a prebuilt Rust binary behind a Python launcher).

It fronts any OpenAI-compatible server: workers are URLs, checked on ``--health-check-endpoint``.

    >>> ROUTER.version == pins.VLLM_ROUTER_VERSION
    True
"""

from __future__ import annotations

from deploy import pins
from deploy.routers.base import Router

ROUTER = Router(
    name="vllm-router",
    display_name="vLLM router",
    package="vllm-router",
    version=pins.VLLM_ROUTER_VERSION,
    entry_point="vllm-router",
    policies=(
        "random",
        "round_robin",
        "cache_aware",
        "kv_aware",
        "power_of_two",
        "consistent_hash",
        "sticky_least_loaded",
    ),
    metrics={
        "active_workers": "vllm_router_active_workers",
        "worker_health": "vllm_router_worker_health",
        "cb_state": "vllm_router_cb_state",
        "requests_total": "vllm_router_requests_total",
        "processed_requests": "vllm_router_processed_requests_total",
        "generate_duration": "vllm_router_generate_duration_seconds",
    },
    source="vllm-project/router (PyPI vllm-router)",
)
