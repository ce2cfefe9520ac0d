"""plan.json documents for the check tests: the demo model served by one engine on a loopback port."""

from __future__ import annotations

from typing import Any


def demo_candidate(engine: str, port: int, args: dict, max_model_len: int) -> dict[str, Any]:
    return {
        "id": f"{engine}-x",
        "engine": engine,
        "variant": "Q4_K_M",
        "status": "runnable",
        "nodes": 1,
        "gpus_per_node": 0,
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "data_parallel": 1,
        "expert_parallel": False,
        "decode_context_parallel": 1,
        "max_model_len": max_model_len,
        "kv_cache_dtype": "f16",
        "kv_cache_tokens": max_model_len,
        "gpu_memory_utilization": 0.0,
        "memory": {},
        "placement": "cpu",
        "weights": {
            "variant": "Q4_K_M",
            "repo": "r",
            "revision": "main",
            "allow_patterns": ["*.gguf"],
            "bytes": 1,
            "format": "gguf",
        },
        "engine_args": {"port": port, "served_model_name": "demo", **args},
    }


def demo_plan(port: int, max_model_len: int, engine: str = "llama.cpp", **args: Any) -> dict[str, Any]:
    from deploy.catalog import load_model

    m = load_model("demo")
    return {
        "schema": 1,
        "model": {
            "name": m.name,
            "display_name": m.display_name,
            "served_model_name": m.served_model_name,
            "capabilities": m.capabilities,
            "parsers": m.parsers,
            "modes": m.modes,
        },
        "hardware": {},
        "request": {},
        "chosen": f"{engine}-x",
        "candidates": [demo_candidate(engine, port, args, max_model_len)],
    }
