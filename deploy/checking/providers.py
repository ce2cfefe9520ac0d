"""Flavors `check` knows: self-hosted engines and hosted OpenAI-compatible providers of Kimi.

    >>> flavor("oxen").api_base, flavor("oxen").instant_dialect, flavor("oxen").engine
    ('https://hub.oxen.ai/api/ai', 'chat_template_kwargs', False)
    >>> guess_flavor("https://integrate.api.nvidia.com/v1")
    'nim'

An engine flavor (vLLM, SGLang, llama.cpp, KTransformers) serves ``/health`` and maybe ``/metrics`` next to
its OpenAI API under ``/v1``. A hosted flavor serves only the OpenAI API, at the base its provider
publishes, behind a bearer key: liveness there is an authenticated ``GET {base}/models``.

Provider facts, and where they come from (read 2026-11; re-check when a provider changes its API):

- ``nim``: NVIDIA's hosted NIM API. Base ``https://integrate.api.nvidia.com/v1``, model
  ``moonshotai/kimi-k2.5`` (org/name ids), key in ``NVIDIA_API_KEY``; request fields the OpenAI client
  lacks go in the body, ``chat_template_kwargs`` among them, and reasoning streams as
  ``reasoning_content`` (build.nvidia.com model cards' OpenAI examples; docs.nvidia.com/nim
  vision-language-models 1.7.0 "Query the Kimi-K2.5 API").
- ``moonshot``: Moonshot's own API. Base ``https://api.moonshot.ai/v1`` (``api.moonshot.cn`` in China),
  model ``kimi-k2.5``, key in ``MOONSHOT_API_KEY``; instant mode is ``"thinking": {"type": "disabled"}``
  (not ``chat_template_kwargs``), reasoning is ``reasoning_content``, and for kimi-k2.5 temperature,
  top_p (0.95), n and the penalties "cannot be modified" (platform.kimi.ai/docs/api/models-overview,
  "Parameter Comparison" and "thinking Parameter").
- ``oxen``: Oxen.ai's model API. Base ``https://hub.oxen.ai/api/ai`` (``POST /api/ai/chat/completions``,
  ``GET /api/ai/models``, bearer key), OpenAI-compatible, model ``moonshotai-kimi-k2-5`` (dashes, no dots),
  key in ``OXEN_API_KEY`` (docs.oxen.ai inference-api/quickstart/chat; the Hub API's OpenAPI spec at
  hub.oxen.ai/api/_spec). Its instant-mode field and reasoning field are not documented: we send
  ``chat_template_kwargs`` (what vLLM/SGLang backends read) and accept either reasoning field.
- ``openai``: any other OpenAI-compatible provider (OpenRouter, Together, a gateway...):
  ``chat_template_kwargs``, either reasoning field, ids as the provider lists them.

Sampling the model card mandates for Kimi-K2.5 (huggingface.co/moonshotai/Kimi-K2.5, "Usage"): thinking
temperature 1.0 and top_p 0.95, instant temperature 0.6; the values come from the catalog's
``modes.sampling``. Where a provider fixes them (``sampling_fixed``), the samples' own values are
replaced by those, so a verifier sample set does not ask for what the platform refuses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from deploy.engines import registry
from deploy.errors import InputError
from deploy.schema import check_url

#: Instant-mode dialects: Moonshot's API reads a ``thinking`` object, the engines' chat template a kwarg.
DIALECT_THINKING_OBJECT = "thinking_object"
DIALECT_TEMPLATE_KWARGS = "chat_template_kwargs"


@dataclass(frozen=True)
class Flavor:
    """How to talk to one kind of endpoint. ``api_base`` is the published base (hosted flavors)."""

    name: str
    engine: bool
    instant_dialect: str = DIALECT_TEMPLATE_KWARGS
    #: the reasoning field this flavor is documented to use ("" when either may come)
    reasoning_field: str = ""
    api_base: str = ""
    key_env: str = ""
    #: what a model id looks like here, and one example (for the "not served" hint)
    id_style: str = ""
    id_example: str = ""
    #: the provider fixes sampling to the card's values and refuses others
    sampling_fixed: bool = False
    hosts: tuple[str, ...] = ()
    source: str = ""


ENGINE_FLAVORS = tuple(registry.names())
PROVIDER_FLAVORS = ("nim", "moonshot", "oxen", "openai")
FLAVORS = ENGINE_FLAVORS + PROVIDER_FLAVORS

_TABLE: dict[str, Flavor] = {
    "vllm": Flavor("vllm", True, reasoning_field="reasoning", source="vLLM serve: /health, /metrics, /v1"),
    "sglang": Flavor("sglang", True, reasoning_field="reasoning_content", source="SGLang: /health, /v1"),
    "llama.cpp": Flavor("llama.cpp", True, reasoning_field="reasoning_content", source="llama-server"),
    "ktransformers": Flavor("ktransformers", True, reasoning_field="reasoning_content", source="SGLang+kt"),
    "nim": Flavor(
        "nim",
        False,
        reasoning_field="reasoning_content",
        api_base="https://integrate.api.nvidia.com/v1",
        key_env="NVIDIA_API_KEY",
        id_style=r"^[a-z0-9_.-]+/[A-Za-z0-9_.-]+$",
        id_example="moonshotai/kimi-k2.5",
        hosts=("integrate.api.nvidia.com",),
        source="build.nvidia.com model cards (OpenAI example); docs.nvidia.com/nim VLM 1.7.0 Kimi-K2.5",
    ),
    "moonshot": Flavor(
        "moonshot",
        False,
        instant_dialect=DIALECT_THINKING_OBJECT,
        reasoning_field="reasoning_content",
        api_base="https://api.moonshot.ai/v1",
        key_env="MOONSHOT_API_KEY",
        id_style=r"^kimi-[a-z0-9.-]+$",
        id_example="kimi-k2.5",
        sampling_fixed=True,
        hosts=("api.moonshot.ai", "api.moonshot.cn"),
        source="platform.kimi.ai/docs/api/models-overview (thinking parameter, fixed sampling)",
    ),
    "oxen": Flavor(
        "oxen",
        False,
        api_base="https://hub.oxen.ai/api/ai",
        key_env="OXEN_API_KEY",
        id_style=r"^[a-z0-9]+(-[a-z0-9]+)+$",
        id_example="moonshotai-kimi-k2-5",
        hosts=("hub.oxen.ai",),
        source="docs.oxen.ai/inference-api/quickstart/chat; hub.oxen.ai/api/_spec (/api/ai/chat/completions)",
    ),
    "openai": Flavor("openai", False, source="any OpenAI-compatible provider"),
}


def flavor(name: str) -> Flavor:
    """The flavor called ``name``; an unknown one is bad input.

    >>> flavor("moonshot").instant_dialect
    'thinking_object'
    """
    try:
        return _TABLE[name]
    except KeyError:
        raise InputError(f"unknown flavor {name!r} (known: {', '.join(FLAVORS)})") from None


def guess_flavor(url: str, default: str = "vllm") -> str:
    """The provider flavor a URL's host belongs to, else ``default`` (a self-hosted engine).

    >>> guess_flavor("https://api.moonshot.cn/v1"), guess_flavor("http://10.0.0.5:8000")
    ('moonshot', 'vllm')
    """
    try:
        host = (urlsplit(url.strip()).hostname or "").lower()
    except ValueError:  # split_url names what is wrong with it
        return default
    for f in _TABLE.values():
        if host in f.hosts:
            return f.name
    return default


def split_url(url: str) -> tuple[str, str]:
    """(server root, OpenAI API base) of a URL as a provider publishes it.

    A URL with a path is the API base as given (``https://hub.oxen.ai/api/ai``, ``http://h:8000/v1``);
    a bare ``http://host:port`` gets ``/v1``. The root is where an engine serves ``/health`` and
    ``/metrics``: the base without its ``/v1``, or the bare host.

    >>> split_url("https://hub.oxen.ai/api/ai")
    ('https://hub.oxen.ai', 'https://hub.oxen.ai/api/ai')
    >>> split_url("http://127.0.0.1:8001/")
    ('http://127.0.0.1:8001', 'http://127.0.0.1:8001/v1')
    """
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/?#\s]+", url):
        raise InputError(f"--url {url!r}: expected http:// or https://")
    check_url(url)
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InputError(f"--url {url!r}: give the API base without ?query or #fragment")
    host_root = f"{parts.scheme}://{parts.netloc}"
    if not parts.path or parts.path == "/":
        return host_root, f"{host_root}/v1"
    if url.endswith("/v1"):
        return url[: -len("/v1")], url
    return host_root, url


def mode_body(flavor_name: str, thinking: bool) -> dict[str, Any]:
    """The body fields that select instant or thinking mode in this flavor's dialect.

    >>> mode_body("moonshot", False)
    {'thinking': {'type': 'disabled'}}
    >>> mode_body("nim", False)
    {'chat_template_kwargs': {'thinking': False}}
    """
    if flavor(flavor_name).instant_dialect == DIALECT_THINKING_OBJECT:
        return {"thinking": {"type": "enabled" if thinking else "disabled"}}
    return {"chat_template_kwargs": {"thinking": thinking}}


def requested_thinking(body: dict[str, Any]) -> bool | None:
    """Which mode a request body asks for, in either dialect (None: the server's default, thinking).

    >>> requested_thinking({"thinking": {"type": "disabled"}}), requested_thinking({})
    (False, None)
    """
    obj = body.get("thinking")
    if isinstance(obj, dict) and obj.get("type") in ("enabled", "disabled"):
        return obj["type"] == "enabled"
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and isinstance(kwargs.get("thinking"), bool):
        return bool(kwargs["thinking"])
    return None


def to_dialect(body: dict[str, Any], flavor_name: str) -> dict[str, Any]:
    """A request body (e.g. a verifier sample) with its mode switch in ``flavor_name``'s dialect.

    >>> to_dialect({"chat_template_kwargs": {"thinking": False}, "x": 1}, "moonshot")
    {'x': 1, 'thinking': {'type': 'disabled'}}
    """
    thinking = requested_thinking(body)
    if thinking is None:
        return dict(body)
    out = {k: v for k, v in body.items() if k != "thinking"}
    kwargs = dict(out.pop("chat_template_kwargs", None) or {})
    kwargs.pop("thinking", None)
    if kwargs:
        out["chat_template_kwargs"] = kwargs
    mode = mode_body(flavor_name, thinking)
    if "chat_template_kwargs" in mode and kwargs:
        mode = {"chat_template_kwargs": {**kwargs, **mode["chat_template_kwargs"]}}
    return {**out, **mode}


def id_hint(flavor_name: str, model: str) -> str:
    """A hint when ``model`` does not look like this provider's ids ("" when it does or none is known).

    >>> id_hint("oxen", "kimi-k2.5")
    "; oxen model ids look like 'moonshotai-kimi-k2-5'"
    """
    f = flavor(flavor_name)
    if not f.id_style or re.match(f.id_style, model):
        return ""
    return f"; {f.name} model ids look like {f.id_example!r}"
