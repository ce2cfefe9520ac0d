"""Routers: the established programs that front a fleet of replicas (one module per router, a registry).

>>> from deploy.routers import registry
>>> registry.get("vllm-router").package
'vllm-router'
"""
