"""vLLM's router (PyPI ``vllm-router``, a prebuilt Rust binary behind a Python launcher).

It fronts any OpenAI-compatible server: workers are URLs, checked on ``--health-check-endpoint``.
docs/explanation/router.md has the evidence behind this data (endpoints, metrics, the API key).

Its metrics (Prometheus text on ``--prometheus-host``:``--prometheus-port``, no authentication): a worker's
gauges appear once the router has touched it (``vllm_router_cb_state`` after its first request), so an
absent series is "not yet seen", not 0. Encodings (the router's HELP texts, confirmed in
tests/test_router_fleet.py): ``vllm_router_worker_health`` 1 healthy, 0 unhealthy;
``vllm_router_cb_state`` 0 closed, 1 open, 2 half-open; ``vllm_router_running_requests{worker=...}`` the
requests the router has in flight on that worker (what a drain waits to reach 0).

    >>> ROUTER.version == pins.VLLM_ROUTER_VERSION
    True
"""

from __future__ import annotations

from deploy import pins
from deploy.routers.base import PrefillDecode, Router

POLICIES = (
    "random",
    "round_robin",
    "cache_aware",
    "kv_aware",
    "power_of_two",
    "consistent_hash",
    "sticky_least_loaded",
)

ROUTER = Router(
    name="vllm-router",
    display_name="vLLM router",
    package="vllm-router",
    version=pins.VLLM_ROUTER_VERSION,
    entry_point="vllm-router",
    launcher="router_launch.py",
    modules=("vllm_router.launch_router", "vllm_router.router", "vllm_router_rs"),
    log_levels=("debug", "info", "warning", "error", "critical"),
    # it re-serializes the request: an assistant message's reasoning_content is dropped, reasoning kept
    # (captured with an echo worker: docs/explanation/router.md, tests/test_router_history.py)
    history_reasoning_fields=("reasoning",),
    policies=POLICIES,
    metrics={
        "active_workers": "vllm_router_active_workers",
        "worker_health": "vllm_router_worker_health",
        "cb_state": "vllm_router_cb_state",
        "requests_total": "vllm_router_requests_total",
        "processed_requests": "vllm_router_processed_requests_total",
        "generate_duration": "vllm_router_generate_duration_seconds",
        "running_requests": "vllm_router_running_requests",
    },
    flags={
        "host": "--host",
        "port": "--port",
        "metrics_host": "--prometheus-host",
        "metrics_port": "--prometheus-port",
        "policy": "--policy",
        "health_check_endpoint": "--health-check-endpoint",
        "health_check_interval_s": "--health-check-interval-secs",
        "health_check_timeout_s": "--health-check-timeout-secs",
        "health_failure_threshold": "--health-failure-threshold",
        "health_success_threshold": "--health-success-threshold",
        "retry_max_retries": "--retry-max-retries",
        "retry_initial_backoff_ms": "--retry-initial-backoff-ms",
        "retry_max_backoff_ms": "--retry-max-backoff-ms",
        "cb_failure_threshold": "--cb-failure-threshold",
        "cb_success_threshold": "--cb-success-threshold",
        "cb_timeout_s": "--cb-timeout-duration-secs",
        "cb_window_s": "--cb-window-duration-secs",
        "queue_size": "--queue-size",
        "queue_timeout_s": "--queue-timeout-secs",
        "request_timeout_s": "--request-timeout-secs",
        "log_level": "--log-level",
    },
    metric_values={
        "vllm_router_worker_health": {1: "healthy", 0: "unhealthy"},
        "vllm_router_cb_state": {0: "closed", 1: "open", 2: "half_open"},
    },
    remove_worker_route="POST /remove_worker?url={url}",
    add_worker_route="POST /add_worker?url={url}",
    # --help of 0.1.17 (vllm_router/router_args.py): both roles take every policy; the connector names the
    # KV transfer protocol it drives (NIXL: the prefill returns kv_transfer_params the router hands to the
    # decode; Mooncake: it asks each prefill's bootstrap server for its engine id). moriio is AMD's MoRI-IO.
    pd=PrefillDecode(
        flag="--vllm-pd-disaggregation",
        prefill_policies=POLICIES,
        decode_policies=POLICIES,
        kv_connector_flag="--kv-connector",
        kv_connectors=("nixl", "mooncake", "moriio"),
    ),
    source="vllm-project/router (PyPI vllm-router)",
)
