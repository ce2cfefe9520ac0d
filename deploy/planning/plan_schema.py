"""The JSON Schema of plan.json: what every stage after `plan` may rely on.

    >>> from deploy.planning.plan_schema import PLAN_SCHEMA
    >>> PLAN_SCHEMA["properties"]["schema"]
    {'const': 1}

``load_plan`` validates every plan against it before any value reaches a launch script, a unit file or an
env file: engine names, statuses, parallel sizes (>= 1), ``max_model_len`` (a positive integer), ports
(1-65535), addresses and host names, node and model names, paths without control characters. Keys not
listed are allowed (later stages ignore what they do not know). ``python -m deploy.planning.plan_schema``
prints the schema as the Markdown page docs/reference/plan-schema.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from deploy import schema
from deploy.engines import registry
from deploy.hardware.profile_schema import PLAN_HARDWARE

#: plan.json's ``schema``: a reader refuses any other (deploy.planning.contract.plan_from_dict).
SCHEMA_VERSION = 1
#: A candidate's ``status`` (deploy.planning.contract re-exports these for every stage that reads a plan).
RUNNABLE = "runnable"  # runs at the model's full context
REDUCED = "reduced"  # runs only with a smaller max_model_len, which the plan sets
INCOMPATIBLE = "incompatible"
STATUSES = (RUNNABLE, REDUCED, INCOMPATIBLE)
#: The engines registered at import (the page docs/reference/plan-schema.md lists these); ``plan_schema()``
#: takes the registry as it is when a plan is read.
ENGINES = registry.names()
PLACEMENTS = ["gpu", "hybrid", "cpu", "rpc"]
_PARALLEL = {"type": "integer", "minimum": 1, "maximum": 65536}
_MAYBE_WORD = {"anyOf": [schema.WORD, {"type": "null"}]}
_POSITIVE_OR_NULL = {"anyOf": [schema.POSITIVE, {"type": "null"}]}
#: comma-separated RDMA device names (SGLang's --disaggregation-ib-device list form)
_DEVICES = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}(,[A-Za-z0-9_.-]{1,64}){0,63}\Z"}
_HOST_PORT = {"type": "string", "pattern": r"^[A-Za-z0-9.:\[\]-]{1,300}:[0-9]{1,5}\Z"}

ENGINE_ARGS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "served_model_name": schema.MODEL_NAME,
        "host": schema.HOST,
        "port": schema.PORT,
        "api_key_env": {"anyOf": [schema.ENV_NAME, {"type": "null"}]},
        "trust_remote_code": {"type": "boolean"},
        "tool_call_parser": _MAYBE_WORD,
        "reasoning_parser": _MAYBE_WORD,
        "reasoning_format": _MAYBE_WORD,
        "attention_backend": _MAYBE_WORD,
        "kv_cache_dtype": _MAYBE_WORD,
        "cache_type_k": _MAYBE_WORD,
        "mm_encoder_tp_mode": _MAYBE_WORD,
        "quantization": _MAYBE_WORD,
        "moe_backend": _MAYBE_WORD,
        "device": {"enum": ["cuda", "cpu"]},
        "distributed_executor_backend": {"enum": ["mp", "ray"]},
        "mem_fraction_static": {"anyOf": [schema.FRACTION, {"type": "null"}]},
        "max_total_tokens": {"anyOf": [schema.COUNT, {"type": "null"}]},
        "max_num_batched_tokens": _POSITIVE_OR_NULL,
        "max_num_seqs": _POSITIVE_OR_NULL,
        "chunked_prefill_size": {"anyOf": [{"type": "integer", "minimum": -1}, {"type": "null"}]},
        "cuda_graph_max_bs": _POSITIVE_OR_NULL,
        "cpu_kvcache_space_gib": {"anyOf": [schema.AMOUNT, {"type": "null"}]},
        "cpu_kvcache_bytes": {"anyOf": [schema.COUNT, {"type": "null"}]},
        # one role of a prefill/decode split (deploy/engines/<engine>.py role_args)
        "disaggregation_mode": {"enum": ["prefill", "decode"]},
        "disaggregation_transfer_backend": schema.WORD,
        "disaggregation_ib_device": {"anyOf": [_DEVICES, {"type": "null"}]},
        "disaggregation_bootstrap_port": schema.PORT,
        "max_running_requests": _POSITIVE_OR_NULL,
        "enable_eplb": {"type": "boolean"},
        "kv_transfer_config": {
            "type": "object",
            "required": ["kv_connector", "kv_role"],
            "additionalProperties": False,
            "properties": {
                "kv_connector": schema.WORD,
                "kv_role": {"enum": ["kv_both", "kv_producer", "kv_consumer"]},
            },
        },
        "kv_transfer_side_channel_port": schema.PORT,
        "kv_transfer_rdma_devices": {"type": "array", "maxItems": 64, "items": schema.WORD},
        "n_gpu_layers": {"anyOf": [{"type": "integer", "minimum": -1, "maximum": 100000}, {"type": "null"}]},
        "threads": _POSITIVE_OR_NULL,
        "parallel": _POSITIVE_OR_NULL,
        "chat_template": {"anyOf": [schema.PATH, {"type": "null"}]},
        "reverse_prompt": {"type": "array", "maxItems": 16, "items": schema.TEXT},
        "n_predict": _POSITIVE_OR_NULL,
        "override_tensor": {"type": "array", "maxItems": 1024, "items": schema.TEXT},
        "rpc_servers": {"type": "array", "maxItems": schema.MAX_NODES, "items": _HOST_PORT},
        "tensor_split": {"type": "array", "maxItems": schema.MAX_NODES, "items": schema.AMOUNT},
        "rpc_threads": {"type": "array", "maxItems": schema.MAX_NODES, "items": _POSITIVE_OR_NULL},
        "sampling": {
            "type": "object",
            "properties": {
                "temp": {"anyOf": [schema.AMOUNT, {"type": "null"}]},
                "top_p": {"anyOf": [schema.FRACTION, {"type": "null"}]},
                "min_p": {"anyOf": [schema.FRACTION, {"type": "null"}]},
            },
        },
        "multinode": {
            "type": "object",
            "properties": {
                "backend": {"enum": ["mp", "ray", "rpc"]},
                "master_port": schema.PORT,
                "dist_init_port": schema.PORT,
                "rpc_port": schema.PORT,
                "ray_port": schema.PORT,
            },
        },
        "kt": {
            "type": "object",
            "properties": {
                "method": schema.WORD,
                "weight_path": {"anyOf": [schema.PATH, {"type": "null"}]},
                "cpuinfer": schema.POSITIVE,
                "threadpool_count": schema.POSITIVE,
                "num_gpu_experts": schema.COUNT,
                "gpu_prefill_token_threshold": {"anyOf": [schema.COUNT, {"type": "null"}]},
            },
        },
    },
}

#: Where the router reaches a replica, or users the router: http://HOST:PORT, or "" (no addresses yet).
URL: dict[str, Any] = {"type": "string", "pattern": r"^(https?://[A-Za-z0-9.:\[\]-]{1,300}:[0-9]{1,5})?\Z"}
_HOST_OR_EMPTY = {"anyOf": [schema.HOST, {"const": ""}]}
_SECONDS = {"type": "integer", "minimum": 1, "maximum": 7 * 86400}
_SMALL_COUNT = {"type": "integer", "minimum": 0, "maximum": 1 << 20}
REPLICA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "nodes", "layout", "host", "port", "url", "threads"],
    "properties": {
        "id": {"type": "string", "pattern": r"^r[0-9]{1,4}\Z"},
        "nodes": {"type": "array", "minItems": 1, "maxItems": schema.MAX_NODES, "items": schema.NAME},
        "layout": schema.TEXT,
        "host": _HOST_OR_EMPTY,
        "port": schema.PORT,
        "url": URL,
        "threads": _POSITIVE_OR_NULL,
        "role": {"enum": ["prefill", "decode"]},
    },
}
ROUTER: dict[str, Any] = {
    "type": "object",
    "required": ["program", "version", "node", "host", "port", "url", "metrics_port", "policy"],
    "properties": {
        "program": schema.NAME,
        "version": schema.WORD,
        "node": schema.NAME,
        "host": _HOST_OR_EMPTY,
        "port": schema.PORT,
        "url": URL,
        "metrics_port": schema.PORT,
        "policy": schema.WORD,
        "policy_reason": schema.TEXT,
        "health_check_endpoint": {"type": "string", "pattern": r"^/[A-Za-z0-9._/-]{0,200}\Z"},
        "health_check_interval_s": _SECONDS,
        "health_check_timeout_s": _SECONDS,
        "health_failure_threshold": {"type": "integer", "minimum": 1, "maximum": 1000},
        "health_success_threshold": {"type": "integer", "minimum": 1, "maximum": 1000},
        "retry_max_retries": {"type": "integer", "minimum": 0, "maximum": 1000},
        "retry_initial_backoff_ms": _SMALL_COUNT,
        "retry_max_backoff_ms": _SMALL_COUNT,
        "cb_failure_threshold": {"type": "integer", "minimum": 1, "maximum": 100000},
        "cb_success_threshold": {"type": "integer", "minimum": 1, "maximum": 100000},
        "cb_timeout_s": _SECONDS,
        "cb_window_s": _SECONDS,
        "queue_size": _SMALL_COUNT,
        "queue_timeout_s": _SECONDS,
        "request_timeout_s": _SECONDS,
        "pd": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["kv_connector", "prefill_policy", "decode_policy"],
                    "properties": {
                        "kv_connector": _MAYBE_WORD,
                        "prefill_policy": schema.WORD,
                        "decode_policy": schema.WORD,
                    },
                },
            ]
        },
    },
}
_ROLE: dict[str, Any] = {
    "type": "object",
    "required": ["instances", "candidate", "layout", "engine_args"],
    "properties": {
        "instances": {"type": "integer", "minimum": 1, "maximum": schema.MAX_NODES},
        "candidate": schema.TEXT,
        "layout": schema.TEXT,
        "engine_args": ENGINE_ARGS,
    },
}
DISAGGREGATION: dict[str, Any] = {
    "type": "object",
    "required": ["transfer_backend", "rdma_devices", "prefill", "decode", "reason"],
    "properties": {
        "transfer_backend": schema.WORD,
        "rdma_devices": {"type": "array", "maxItems": 64, "items": schema.WORD},
        "bootstrap_port": {"anyOf": [schema.PORT, {"type": "null"}]},
        "side_channel_port": {"anyOf": [schema.PORT, {"type": "null"}]},
        "prefill": _ROLE,
        "decode": _ROLE,
        "predicted": {"type": "object"},
        "reason": schema.TEXT,
    },
}
FLEET_OPTION: dict[str, Any] = {
    "type": "object",
    "required": ["mode", "label", "prefill", "decode", "output_tok_s_per_gpu", "source", "reason", "rank"],
    "properties": {
        "mode": {"enum": ["aggregated", "disaggregated"]},
        "label": schema.TEXT,
        "prefill": {"type": "integer", "minimum": 0, "maximum": schema.MAX_NODES},
        "decode": {"type": "integer", "minimum": 0, "maximum": schema.MAX_NODES},
        "output_tok_s_per_gpu": {"type": "number", "minimum": 0, "maximum": 1e9},
        "low": {"type": "number", "minimum": 0, "maximum": 1e9},
        "high": {"type": "number", "minimum": 0, "maximum": 1e9},
        "source": {"enum": ["measured", "published", "modelled"]},
        "reason": schema.TEXT,
        "rank": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
}
FLEET: dict[str, Any] = {
    "type": "object",
    "required": ["replicas", "router", "reason"],
    "properties": {
        "replicas": {"type": "array", "maxItems": schema.MAX_NODES, "items": REPLICA},
        "router": {"anyOf": [ROUTER, {"type": "null"}]},
        "reason": schema.TEXT,
        "mode": {"enum": ["aggregated", "disaggregated"]},
        "disaggregation": {"anyOf": [DISAGGREGATION, {"type": "null"}]},
        "options": {"type": "array", "maxItems": 64, "items": FLEET_OPTION},
    },
}

CANDIDATE: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "engine",
        "variant",
        "status",
        "nodes",
        "gpus_per_node",
        "tensor_parallel",
        "pipeline_parallel",
        "data_parallel",
        "expert_parallel",
        "decode_context_parallel",
        "max_model_len",
        "kv_cache_dtype",
        "kv_cache_tokens",
        "gpu_memory_utilization",
        "memory",
        "weights",
    ],  # fmt: skip
    "properties": {
        "id": schema.TEXT,
        "engine": {"enum": ENGINES},
        "variant": schema.WORD,
        "status": {"enum": list(STATUSES)},
        "nodes": {"type": "integer", "minimum": 0, "maximum": schema.MAX_NODES},
        "gpus_per_node": {"type": "integer", "minimum": 0, "maximum": schema.MAX_GPUS_PER_NODE},
        "tensor_parallel": _PARALLEL,
        "pipeline_parallel": _PARALLEL,
        "data_parallel": _PARALLEL,
        "decode_context_parallel": _PARALLEL,
        "expert_parallel": {"type": "boolean"},
        "max_model_len": {"type": "integer", "minimum": 0, "maximum": 1 << 30},
        "kv_cache_dtype": schema.WORD,
        "kv_cache_tokens": schema.COUNT,
        "gpu_memory_utilization": schema.FRACTION,
        "placement": {"enum": PLACEMENTS},
        "memory": {
            "type": "object",
            "properties": {
                "terms": {"type": "object", "additionalProperties": {"type": "number"}},
                "sources": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": {"type": ["number", "object"]},
        },
        "weights": {
            "type": "object",
            "required": ["variant", "repo", "revision", "allow_patterns", "bytes", "format"],
            "properties": {
                "variant": schema.WORD,
                "repo": schema.REPO,
                "revision": schema.TEXT,
                "allow_patterns": {"type": "array", "maxItems": 1024, "items": schema.TEXT},
                "bytes": schema.COUNT,
                "computed_bytes": schema.COUNT,
                "format": {"enum": ["safetensors", "gguf"]},
                "local_dir": {"anyOf": [schema.PATH, {"const": ""}]},
            },
        },
        "engine_args": ENGINE_ARGS,
        "reasons": {"type": "array", "items": {"type": "string"}},
        "remediation": {"type": "array", "items": {"type": "string"}},
        "layout": {"type": "string"},
        "time_to_ready_s": {"type": "number", "minimum": 1, "maximum": 7 * 86400},
        "rank": {"type": "integer"},
        "replicas": {"type": "integer", "minimum": 1, "maximum": schema.MAX_NODES},
    },
    # an incompatible candidate may carry zeros (nothing to run); one that runs needs real sizes
    "if": {"properties": {"status": {"enum": ["runnable", "reduced"]}}},
    "then": {"properties": {"max_model_len": {"minimum": 1}}},
}

PLAN_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "plan.json",
    "type": "object",
    "required": ["schema", "model", "hardware", "candidates"],
    "properties": {
        "schema": {"const": SCHEMA_VERSION},
        "model": {
            "type": "object",
            "properties": {
                "name": schema.WORD,
                "served_model_name": schema.MODEL_NAME,
                "max_position_embeddings": schema.POSITIVE,
                "capabilities": {"type": "object"},
            },
        },
        "hardware": PLAN_HARDWARE,
        "request": {"type": "object"},
        "chosen": {"anyOf": [schema.TEXT, {"type": "null"}]},
        "fleet": FLEET,
        "explanation": {"type": "array", "items": {"type": "string"}},
        "candidates": {"type": "array", "maxItems": 100000, "items": CANDIDATE},
    },
}


def plan_schema() -> dict[str, Any]:
    """PLAN_SCHEMA with the engines registered now (an engine registered after import included)."""
    names = registry.names()
    if names == ENGINES:
        return PLAN_SCHEMA
    candidate = {**CANDIDATE, "properties": {**CANDIDATE["properties"], "engine": {"enum": names}}}
    candidates = {**PLAN_SCHEMA["properties"]["candidates"], "items": candidate}
    return {**PLAN_SCHEMA, "properties": {**PLAN_SCHEMA["properties"], "candidates": candidates}}


def markdown() -> str:
    """docs/reference/plan-schema.md: how to read the schema, then the schema itself."""
    return (
        "# plan.json schema\n\n"
        "Every stage after `plan` reads plan.json through this JSON Schema (draft 2020-12); a plan that\n"
        "does not match is refused with one line naming the file, the key and the reason, exit 2. Keys\n"
        "not listed are allowed and ignored. Patterns end in `\\Z` (Python's end of string). Generated\n"
        "from `deploy/planning/plan_schema.py` by\n"
        "`python -m deploy.planning.plan_schema > docs/reference/plan-schema.md`\n"
        "(a test fails when this page is out of date).\n\n"
        "```json\n" + json.dumps(PLAN_SCHEMA, indent=2) + "\n```\n"
    )


if __name__ == "__main__":
    sys.stdout.write(markdown())

__all__ = [
    "CANDIDATE",
    "ENGINE_ARGS",
    "FLEET",
    "INCOMPATIBLE",
    "PLAN_SCHEMA",
    "REDUCED",
    "REPLICA",
    "ROUTER",
    "RUNNABLE",
    "SCHEMA_VERSION",
    "URL",
    "STATUSES",
    "markdown",
    "plan_schema",
]
