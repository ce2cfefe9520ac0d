"""SGLang's router (PyPI ``sglang-router``, console script ``smg``: the Shepherd Model Gateway), a Rust core
behind a Python launcher, like vllm-router (which forked it).

It fronts SGLang, KTransformers and llama.cpp fleets because it forwards an assistant message's
``reasoning_content`` (the field those engines read in the history), where vllm-router drops it.
docs/explanation/router.md has the evidence behind this data (request bodies, endpoints, the key, metrics).

Metrics (Prometheus text on ``--prometheus-host``:``--prometheus-port``, no authentication; encodings from the
HELP texts in the pinned Rust core, confirmed in tests/test_router_fleet.py): ``smg_worker_health`` 1 healthy,
0 unhealthy; ``smg_worker_cb_state`` 0 closed, 1 open, 2 half-open; ``smg_worker_requests_active{worker}`` the
requests the router has in flight on that worker (cache_aware counts them; round_robin and power_of_two do
not), reset to 0 when the worker is removed although its requests run on; ``smg_worker_cb_outcomes_total
{worker,outcome}`` one per finished request, counted on after the removal, which is what a drain waits on.

    >>> ROUTER.version == pins.SGLANG_ROUTER_VERSION
    True
"""

from __future__ import annotations

from deploy import pins
from deploy.routers.base import PrefillDecode, Router

POLICIES = ("random", "round_robin", "cache_aware", "power_of_two", "manual")

ROUTER = Router(
    name="sglang-router",
    display_name="SGLang router (smg)",
    package="sglang-router",
    version=pins.SGLANG_ROUTER_VERSION,
    entry_point="smg",
    policies=POLICIES,
    launcher="smg_launch.py",
    modules=("sglang_router.launch_router", "sglang_router.router", "sglang_router.sglang_router_rs"),
    log_levels=("debug", "info", "warn", "error"),
    # it keeps reasoning_content and drops reasoning (echo worker: tests/test_router_history.py)
    history_reasoning_fields=("reasoning_content",),
    metrics={
        "active_workers": "smg_worker_pool_size",
        "worker_health": "smg_worker_health",
        "cb_state": "smg_worker_cb_state",
        "requests_total": "smg_router_requests_total",
        # one outcome (success/failure) per request a worker finished: the per-worker request count
        "processed_requests": "smg_worker_cb_outcomes_total",
        "generate_duration": "smg_router_request_duration_seconds",
        "running_requests": "smg_worker_requests_active",
    },
    route_label="endpoint",
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
        "smg_worker_health": {1: "healthy", 0: "unhealthy"},
        "smg_worker_cb_state": {0: "closed", 1: "open", 2: "half_open"},
    },
    # 0.3.2 has no /add_worker or /remove_worker (404): workers are resources, removed by the router's id
    remove_worker_route="DELETE /workers/{id}",
    add_worker_route="POST /workers",
    add_worker_json=True,
    drain_counter="processed_requests",
    # --help of 0.3.2 (sglang_router/router_args.py): prefill also takes bucket; no connector flag: SGLang's
    # engines choose the transfer backend (--disaggregation-transfer-backend), the router only injects
    # bootstrap_host/bootstrap_port/bootstrap_room into the request it sends to both
    pd=PrefillDecode(
        flag="--pd-disaggregation",
        prefill_policies=(*POLICIES, "bucket"),
        decode_policies=POLICIES,
    ),
    source="sgl-project/sglang sgl-model-gateway (PyPI sglang-router, `smg launch`)",
)
