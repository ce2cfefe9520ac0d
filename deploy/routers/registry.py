"""The router registry: every router program the toolkit can put in front of a fleet, by name.

>>> from deploy.engines import registry as engines
>>> from deploy.routers import registry
>>> registry.names()
['vllm-router', 'sglang-router']
>>> registry.for_engine(engines.get("llama.cpp")).name
'sglang-router'
"""

from __future__ import annotations

from typing import Any

from deploy.errors import InputError
from deploy.routers import sglang_router, vllm_router
from deploy.routers.base import Router

_ROUTERS: dict[str, Router] = {}


def register(router: Router) -> Router:
    _ROUTERS[router.name] = router
    return router


def get(name: str) -> Router:
    """The router called ``name``; InputError (one line, the known names) for an unknown one."""
    try:
        return _ROUTERS[name]
    except (KeyError, TypeError):
        raise InputError(f"router {name!r} is not known; known: {', '.join(names())}") from None


def names() -> list[str]:
    return list(_ROUTERS)


def for_engine(engine: Any) -> Router:
    """The router a fleet of ``engine``'s replicas gets (``Engine.router``; ``engine`` is an
    ``deploy.engines.base.Engine``)."""
    return get(engine.router)


register(vllm_router.ROUTER)
register(sglang_router.ROUTER)
