"""The router registry: every router program the toolkit can put in front of a fleet, by name.

>>> from deploy.routers import registry
>>> registry.names()
['vllm-router']
>>> registry.DEFAULT
'vllm-router'
"""

from __future__ import annotations

from deploy.errors import InputError
from deploy.routers import vllm_router
from deploy.routers.base import Router

_ROUTERS: dict[str, Router] = {}
#: The router a fleet gets when the request names none.
DEFAULT = "vllm-router"


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


register(vllm_router.ROUTER)
