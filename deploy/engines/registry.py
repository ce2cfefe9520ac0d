"""The engine registry: every engine the toolkit knows, by name, in registration order (the four engine
modules first, in the catalog's order of preference: vLLM, SGLang, KTransformers, llama.cpp).

    >>> from deploy.engines import registry
    >>> registry.names()
    ['vllm', 'sglang', 'ktransformers', 'llama.cpp']
    >>> registry.get("ktransformers").memory_model
    'sglang-kt'

The four engine modules register on import of this module. A new engine is one module that builds an
``Engine`` (``deploy.engines.base``) and one ``register`` call here; code elsewhere looks it up with ``get``.
The catalog and the plan schema accept exactly the registered names, so registering is the only step.
"""

from __future__ import annotations

from deploy.engines import ktransformers, llama_cpp, sglang, vllm
from deploy.engines.base import Engine
from deploy.errors import InputError

_ENGINES: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    """Add ``engine`` (replacing one of the same name) and return it."""
    _ENGINES[engine.name] = engine
    return engine


def get(name: str) -> Engine:
    """The engine called ``name``; InputError (one line, the known names) for an unknown one.

    >>> get("llama.cpp").display_name
    'llama.cpp'
    """
    try:
        return _ENGINES[name]
    except (KeyError, TypeError):
        raise InputError(f"engine {name!r} is not known; known: {', '.join(names())}") from None


def find(name: str) -> Engine | None:
    """The engine called ``name``, or None (a hosted provider's flavor, an old plan's unknown engine).

    >>> find("moonshot") is None, find("vllm").display_name
    (True, 'vLLM')
    """
    return _ENGINES.get(name) if isinstance(name, str) else None


def names() -> list[str]:
    """Registered engine names, in registration order."""
    return list(_ENGINES)


def all() -> list[Engine]:  # noqa: A001 - the registry's own vocabulary (registry.all())
    """Every registered engine, in ``names()`` order."""
    return [_ENGINES[n] for n in names()]


def is_known(name: str) -> bool:
    """Whether ``name`` is a registered engine."""
    return name in _ENGINES


for _engine in (vllm.ENGINE, sglang.ENGINE, ktransformers.ENGINE, llama_cpp.ENGINE):
    register(_engine)

__all__ = ["all", "find", "get", "is_known", "names", "register"]
