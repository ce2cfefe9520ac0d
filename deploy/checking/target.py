"""What `check` talks to: a served model's URL, dialect and declared features, from a plan or a URL.

    >>> t = target_from_url("https://hub.oxen.ai/api/ai", "moonshotai-kimi-k2-5", flavor="oxen")
    >>> t.api_base, t.hosted, t.id_rule, t.capabilities["vision"]
    ('https://hub.oxen.ai/api/ai', True, 'kimi', True)

Capabilities (and with them which checks may be skipped) come from plan.model or the catalog, never from
what a server happens to answer. The API key is read from the environment and never shown.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.checking import providers, tokens
from deploy.checking.bounded import check_timeout
from deploy.checking.meter import Meter
from deploy.checking.providers import FLAVORS
from deploy.checking.shapes import ID_RULE_GENERIC, ID_RULE_KIMI
from deploy.engines import registry
from deploy.engines.base import Feature
from deploy.errors import CatalogError, InputError
from deploy.planning.contract import Plan
from deploy.serving.readiness import probe_host
from deploy.serving.target import ENV_FILE, env_file_pairs, read_manifest, rpc_servers_of

__all__ = [
    "DEFAULT_PLAN",
    "DEFAULT_RENDERED",
    "FLAVORS",
    "CheckTarget",
    "TargetChoice",
    "choose_target",
    "target_from_plan",
    "target_from_rendered",
    "target_from_url",
]


@dataclass
class CheckTarget:
    """What to check and how to talk to it. ``api_key`` is never printed or written to a report."""

    base_url: str  # the server root, e.g. http://127.0.0.1:8001 (the OpenAI API is under /v1)
    model: str  # the served model name
    flavor: (
        str  # an engine (vllm, sglang, llama.cpp, ktransformers) or a provider (nim, moonshot, oxen, openai)
    )
    capabilities: dict[str, bool]
    id_rule: str = ID_RULE_GENERIC
    id_rule_source: str = ""
    api_base: str = ""
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    max_model_len: int | None = None
    metrics: bool = False
    metrics_source: str = ""
    #: a fleet's router in front of the replicas: it proxies the API but serves none of the engine's own
    #: endpoints (/metrics, /props, /model_info); those are checked on each replica (deploy.checking.fleet)
    router_front: bool = False
    vision: bool = False
    vision_source: str = ""
    few_shot: bool = False
    stop: list[str] = field(default_factory=list)
    sampling: dict[str, dict[str, float]] = field(default_factory=dict)
    capabilities_source: str = ""
    timeout_s: float = 120.0
    #: llama.cpp RPC workers the head needs (``host:port``); each must accept (check rpc_workers)
    rpc_servers: list[str] = field(default_factory=list)
    rpc_servers_source: str = ""
    max_tokens: int = 64
    thinking_max_tokens: int = 1024
    #: tokens no answer may carry (deploy.checking.tokens), and the file or catalog fact they came from
    special_tokens: list[str] = field(default_factory=list)
    special_tokens_source: str = ""
    #: prompts each conformance probe is asked (`check --samples`)
    samples: int = 1
    #: requests, tokens, 429s and the concurrency gate of this endpoint (never in the report as such)
    meter: Meter = field(default_factory=lambda: Meter("candidate"), repr=False, compare=False)

    def __post_init__(self) -> None:
        providers.flavor(self.flavor)  # an unknown flavor is bad input
        self.timeout_s = check_timeout(self.timeout_s)  # 0, negative, NaN: bad input, not a traceback
        self.base_url = self.base_url.rstrip("/")
        if not self.api_base:
            self.api_base = f"{self.base_url}/v1"

    @property
    def hosted(self) -> bool:
        """A hosted provider's API: no /health or /metrics, liveness is an authenticated GET {base}/models."""
        return not providers.flavor(self.flavor).engine

    def describe(self) -> dict[str, Any]:
        """The target as the report shows it: everything except the key itself."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("api_key", "meter")}
        d = {
            k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, v in d.items()
        }
        d["api_key_set"] = self.api_key is not None
        d["hosted"] = self.hosted
        return d


#: Where `check`, `bench` and `support-bundle` look without --plan / --rendered.
DEFAULT_PLAN = "plan.json"
DEFAULT_RENDERED = "rendered"


@dataclass(frozen=True)
class TargetChoice:
    """Which target a command was given: a ``url``, or a ``plan`` (and maybe its ``rendered`` folder)."""

    url: str | None = None
    plan: str | None = None
    rendered: str | None = None


def choose_target(
    url: str | None,
    plan_path: str | None,
    rendered: str | None,
    *,
    url_needs: tuple[tuple[str, Any, str], ...] = (),
    url_only: tuple[tuple[str, Any], ...] = (),
    default_rendered: str | None = None,
) -> TargetChoice:
    """The target rules of `check`, `bench` and `support-bundle`: ``--url``, or ``--plan``/``--rendered``.

    With ``--url``, each of ``url_needs`` ((option, value, what it is)) must be given; without it, none of
    ``url_only`` ((option, value)) may be, and the plan defaults to plan.json (``rendered`` to
    ``default_rendered``). Anything else is bad input, in one line.

    >>> choose_target(None, None, None)
    TargetChoice(url=None, plan='plan.json', rendered=None)
    >>> choose_target("http://h:8000", "plan.json", None)
    Traceback (most recent call last):
    deploy.errors.InputError: give either --plan or --url, not both
    """
    if url and (plan_path or rendered):
        raise InputError(f"give either {'--plan' if plan_path else '--rendered'} or --url, not both")
    if url:
        for option, value, what in url_needs:
            if not value:
                raise InputError(f"--url needs {option} ({what})")
        return TargetChoice(url=url)
    for option, value in url_only:
        if value is not None:
            raise InputError(f"{option} goes with --url; a plan names its own")
    return TargetChoice(plan=plan_path or DEFAULT_PLAN, rendered=rendered or default_rendered)


def _id_rule(parsers: dict[str, Any]) -> tuple[str, str]:
    # the id format is the tool parser's: kimi_k2 (vLLM, SGLang, llama.cpp's Kimi handler, Moonshot's API)
    # writes functions.<name>:<n>; other parsers (hermes, ...) make up any unique id
    parser = (parsers or {}).get("tool_call")
    if parser == "kimi_k2":
        return ID_RULE_KIMI, "functions.<name>:<n> (tool-call parser kimi_k2)"
    return ID_RULE_GENERIC, f"any unique id (tool-call parser {parser!r})"


def _read_key(api_key_env: str | None) -> str | None:
    if not api_key_env:
        return None
    value = os.environ.get(api_key_env)
    return value if value else None


def hosted_key(
    flavor: str, api_key_env: str | None, option: str = "--api-key-env"
) -> tuple[str | None, str | None]:
    """(key, variable name) for a URL target: the named variable, else the provider's usual one if set.

    A named variable that is unset or empty is bad input; the key's value is never part of a message.
    """
    if api_key_env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", api_key_env):
            raise InputError(f"{option} {api_key_env!r}: not an environment variable name")
        key = _read_key(api_key_env)
        if key is None:
            raise InputError(f"{option} {api_key_env}: that environment variable is unset or empty")
        return key, api_key_env
    f = providers.flavor(flavor)
    if f.key_env and _read_key(f.key_env):
        return _read_key(f.key_env), f.key_env
    return None, None


def require_key(target: CheckTarget, option: str = "--api-key-env") -> None:
    """Bad input when a hosted provider (other than the generic ``openai``) would be asked without a key."""
    f = providers.flavor(target.flavor)
    if target.api_key is None and not f.engine and f.key_env:
        raise InputError(f"{f.name} needs an API key: export it and pass {option} NAME (usually {f.key_env})")


def _modes_request_profile(modes: dict[str, Any]) -> tuple[bool, list[str]]:
    # A base model (the demo) answers in shape only after a few examples, and its turn end is plain text
    # in the chat template, so the catalog says so in `modes` and every check request carries both.
    return bool(modes.get("few_shot", False)), [str(s) for s in modes.get("stop") or []]


def target_from_plan(plan: Plan, api_key_env: str | None = None, timeout_s: float = 120.0) -> CheckTarget:
    """The target a plan deploys: its engine, bind address, served name, context and declared features.

    >>> target_from_plan(load_plan("plan.json")).flavor  # doctest: +SKIP
    'llama.cpp'
    """
    cand = plan.chosen_candidate
    args = cand.engine_args
    host = str(args.get("host") or "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = args.get("port")
    if not port:
        raise InputError("plan.json: the chosen candidate's engine_args has no port")
    model = plan.model
    caps = {k: bool(v) for k, v in (model.get("capabilities") or {}).items()}
    id_rule, id_source = _id_rule(model.get("parsers") or {})
    key_env = api_key_env or args.get("api_key_env")
    eng = registry.find(cand.engine)
    always = eng is not None and eng.metrics_flag is None
    metrics = always or bool(args.get("metrics")) or bool(args.get("enable_metrics"))
    metrics_src = (
        f"{eng.display_name} always serves /metrics"
        if always and eng is not None
        else ("plan engine_args enables metrics" if metrics else "plan engine_args does not enable metrics")
    )
    vision, vision_src = _plan_vision(plan, caps)
    few_shot, stop = _modes_request_profile(model.get("modes") or {})
    special = tokens.for_plan(model, cand.weights.local_dir)
    return CheckTarget(
        base_url=f"http://{host}:{port}",
        model=str(args.get("served_model_name") or model.get("served_model_name") or model.get("name")),
        flavor=cand.engine,
        capabilities=caps,
        capabilities_source="plan.model.capabilities",
        id_rule=id_rule,
        id_rule_source=id_source,
        api_key=_read_key(key_env),
        api_key_env=key_env,
        max_model_len=int(cand.max_model_len) if cand.max_model_len else None,
        metrics=metrics,
        metrics_source=metrics_src,
        vision=vision,
        vision_source=vision_src,
        few_shot=few_shot,
        stop=stop,
        sampling=dict((model.get("modes") or {}).get("sampling") or {}),
        timeout_s=timeout_s,
        rpc_servers=[str(s) for s in args.get("rpc_servers") or []],
        rpc_servers_source="plan engine_args.rpc_servers",
        special_tokens=list(special.tokens),
        special_tokens_source=special.source,
    )


def target_from_rendered(
    plan: Plan, rendered: str | Path, api_key_env: str | None = None, timeout_s: float = 120.0
) -> CheckTarget:
    """The target as `kimi-deploy render` wrote it: bind, port, served name, API key variable and RPC
    workers from ``rendered/manifest.json`` (as `up` reads them, so `render --port/--bind` is followed);
    the rest from the plan. A key not in the environment is read from the rendered env file.

    >>> target_from_rendered(load_plan("plan.json"), "rendered").base_url  # doctest: +SKIP
    'http://10.0.0.1:8001'
    """
    manifest = read_manifest(rendered)
    if not manifest:
        raise InputError(f"{Path(rendered) / 'manifest.json'}: not found (run `kimi-deploy render`)")
    if manifest.get("candidate") and manifest["candidate"] != plan.chosen:
        # `render --candidate` served another candidate than the chosen one: check what was rendered
        plan = dataclasses.replace(plan, chosen=plan.candidate(str(manifest["candidate"])).id)
    target = target_from_plan(plan, api_key_env, timeout_s=timeout_s)
    nodes = [n for n in manifest.get("nodes") or [] if isinstance(n, dict)]
    head = next((n for n in nodes if n.get("serves_http")), nodes[0] if nodes else {})
    host = probe_host(str(manifest.get("bind") or "127.0.0.1"))
    port = manifest.get("port") or plan.chosen_candidate.engine_args.get("port")
    target.base_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    target.api_base = f"{target.base_url}/v1"
    target.model = str(manifest.get("served_model_name") or target.model)
    target.api_key_env = api_key_env or manifest.get("api_key_env") or target.api_key_env
    target.api_key = _read_key(target.api_key_env)
    if target.api_key is None and target.api_key_env:
        for env_file in head.get("env_files") or [manifest.get("env_file") or ENV_FILE]:
            value = env_file_pairs(Path(rendered) / str(env_file)).get(str(target.api_key_env))
            target.api_key = value or target.api_key
    if head:
        target.rpc_servers = rpc_servers_of(head, plan.chosen_candidate.engine_args)
        target.rpc_servers_source = "rendered head command (--rpc)"
    return target


def _plan_vision(plan: Plan, caps: dict[str, bool]) -> tuple[bool, str]:
    if not caps.get("vision"):
        return False, "the model declares no vision"
    cand = plan.chosen_candidate
    if cand.engine_args.get("language_model_only"):
        return False, "the plan serves the language model only (language_model_only)"
    try:
        from deploy.catalog import load_model

        serves = load_model(str(plan.model.get("name"))).variant(cand.variant).serves_vision
    except CatalogError:
        eng = registry.find(cand.engine)
        serves = eng is None or eng.supports(Feature.VISION)
        return serves, f"catalog entry not found; {cand.engine} {'serves' if serves else 'lacks'} vision"
    if not serves:
        return False, f"variant {cand.variant} has no vision tower"
    return True, f"the plan serves vision ({cand.variant})"


def _catalog_entry(model_name: str, catalog_model: str | None) -> tuple[Any, str]:
    from deploy.catalog import available_models, load_model

    if catalog_model:
        return load_model(catalog_model), f"catalog entry {catalog_model!r} (--catalog-model)"

    # providers spell one model differently (kimi-k2.5, moonshotai/kimi-k2.5, moonshotai-kimi-k2-5):
    # compare letters and digits only, without the publisher's prefix
    def norm(name: str) -> str:
        flat = re.sub(r"[^a-z0-9]", "", name.lower().rsplit("/", 1)[-1])
        return flat[len("moonshotai") :] if flat.startswith("moonshotai") else flat

    wanted = {model_name.lower(), model_name.lower().rsplit("/", 1)[-1], norm(model_name)}
    for name in available_models():
        entry = load_model(name)
        if {entry.name.lower(), entry.served_model_name.lower(), norm(entry.name)} & wanted:
            return entry, f"catalog entry {entry.name!r} (matches the served name)"
    return load_model(constants.DEFAULT_MODEL), (
        f"catalog entry {constants.DEFAULT_MODEL!r} (default: no entry matches {model_name!r})"
    )


def target_from_url(
    url: str,
    model: str,
    flavor: str | None = None,
    api_key_env: str | None = None,
    catalog_model: str | None = None,
    few_shot: bool | None = None,
    metrics: bool | None = None,
    vision: bool | None = None,
    max_model_len: int | None = None,
    timeout_s: float = 120.0,
) -> CheckTarget:
    """A target at any OpenAI-compatible URL (self-hosted or hosted); capabilities come from the catalog.

    The flavor defaults to the provider the URL's host belongs to, else vllm. A URL with a path is the API
    base as given; a bare host gets /v1 (:func:`deploy.checking.providers.split_url`).

    >>> target_from_url("https://api.moonshot.ai/v1", "kimi-k2.5").flavor
    'moonshot'
    """
    root, api_base = providers.split_url(url)  # first: a URL that does not parse is one error line
    flavor = flavor or providers.guess_flavor(url)
    if flavor not in FLAVORS:
        raise InputError(f"unknown flavor {flavor!r} (known: {', '.join(FLAVORS)})")
    entry, source = _catalog_entry(model, catalog_model)
    caps = {k: bool(v) for k, v in entry.capabilities.items()}
    id_rule, id_source = _id_rule(entry.parsers)
    catalog_few_shot, stop = _modes_request_profile(entry.modes)
    special = tokens.from_catalog(entry, source)
    key, key_env = hosted_key(flavor, api_key_env)
    if metrics is None:
        eng = registry.find(flavor)
        metrics = eng is not None and eng.metrics_flag is None
        metrics_src = (
            f"{eng.display_name} always serves /metrics"
            if metrics and eng is not None
            else f"not declared for {flavor} (--metrics)"
        )
    else:
        metrics_src = "--metrics" if metrics else "--no-metrics"
    if vision is None:
        vision = bool(caps.get("vision"))
        vision_src = f"{source} declares vision" if vision else f"no vision declared ({source})"
    else:
        vision_src = "--vision" if vision else "--no-vision"
        vision = vision and bool(caps.get("vision"))
    return CheckTarget(
        base_url=root,
        api_base=api_base,
        model=model,
        flavor=flavor,
        capabilities=caps,
        capabilities_source=source,
        id_rule=id_rule,
        id_rule_source=id_source,
        api_key=key,
        api_key_env=key_env,
        max_model_len=max_model_len,
        metrics=metrics,
        metrics_source=metrics_src,
        vision=vision,
        vision_source=vision_src,
        few_shot=catalog_few_shot if few_shot is None else few_shot,
        stop=stop,
        sampling=dict(entry.modes.get("sampling") or {}),
        timeout_s=timeout_s,
        special_tokens=list(special.tokens),
        special_tokens_source=special.source,
    )
