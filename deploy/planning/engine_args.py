"""plan.json ``engine_args``: what the planner writes for the chosen layout, one builder per memory model.

    >>> from deploy.planning.engine_args import BUILDERS
    >>> sorted(BUILDERS)
    ['llama.cpp', 'sglang', 'sglang-kt', 'vllm']

The keys are ``Engine.memory_model`` (deploy/engines/); DEVELOPING.md lists the arguments of each engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deploy.catalog import Model, Variant
from deploy.engines import registry
from deploy.hardware.profiles import HardwareProfile, Node, load_gpu_table
from deploy.planning.memory import Fit, Layout

#: rpc-server's port on every worker (its default).
RPC_PORT = 50052
API_KEY_ENV = "KIMI_API_KEY"
MASTER_PORT = 29500
DIST_INIT_PORT = 50000
#: KTransformers' Kimi-K2.5 guide (kvcache-ai/ktransformers doc/en/Kimi-K2.5.md, the 4x RTX 4090 launch):
#: layer-wise GPU prefill above 400 tokens, 32,658-token prefill chunks, a 50,000-token KV pool beside 30
#: GPU experts per layer; --enable-mixed-chunk, --enable-p2p-check, --disable-shared-experts-fusion.
KT_PREFILL_THRESHOLD = 400
KT_CHUNKED_PREFILL_SIZE = 32658
KT_GUIDE_TOTAL_TOKENS = 50000
#: The demo model serves on a shared 2-core CI machine: one thread, one slot, the demo's own template.
DEMO_LLAMA_ARGS = {"threads": 1, "parallel": 1, "chat_template": "demo-hermes-think.jinja"}


@dataclass(frozen=True)
class ArgsInput:
    """What an engine_args builder reads: model, variant, layout, hardware, the fit, the plan's knobs."""

    m: Model
    v: Variant
    lay: Layout
    profile: HardwareProfile
    fit: Fit | None
    max_len: int
    local_dir: str
    kv_cache_dtype: str

    @property
    def settings(self) -> dict[str, Any]:
        return self.fit.settings if self.fit else {}

    @property
    def demo(self) -> bool:
        return self.m.architecture.get("kind") == "gguf"


def _vllm(a: ArgsInput, args: dict[str, Any]) -> bool:
    cpu = a.lay.placement == "cpu"
    settings = a.settings
    args.update(
        {
            "enable_auto_tool_choice": True,
            "mm_encoder_tp_mode": "data" if a.v.serves_vision else None,
            # only a multimodal model can be told to skip its vision encoder
            "language_model_only": bool(a.m.architecture.get("vision")) and not a.v.serves_vision,
            "enable_expert_parallel": a.lay.expert_parallel,
            "distributed_executor_backend": "mp",
            # CPU: ready in 80-100 s instead of about 210 s with compilation (docs/tutorial/demo-vllm.md)
            "enforce_eager": cpu,
            "device": "cpu" if cpu else "cuda",
            "max_num_batched_tokens": settings.get("max_num_batched_tokens"),
            "max_num_seqs": settings.get("max_num_seqs"),
        }
    )
    if cpu:
        args["cpu_kvcache_space_gib"] = settings.get("cpu_kvcache_space_gib", a.lay.cpu_kv_space_gib)
    # the demo's tokenizer has no chat template: serve the one llama-server uses, for the same shapes
    args["chat_template"] = DEMO_LLAMA_ARGS["chat_template"] if a.demo else None
    return False


def _sglang(a: ArgsInput, args: dict[str, Any]) -> bool:
    settings = a.settings
    args.update(
        {
            "mem_fraction_static": settings.get("mem_fraction_static"),
            "chunked_prefill_size": settings.get("chunked_prefill_size"),
            "cuda_graph_max_bs": settings.get("cuda_graph_max_bs"),
            "enable_dp_attention": a.lay.data_parallel > 1,
            "attention_backend": None,
            "enable_metrics": True,
        }
    )
    return False


def _sglang_kt(a: ArgsInput, args: dict[str, Any]) -> bool:
    _sglang(a, args)
    head = a.profile.head
    args.update(
        {
            "kt": {
                "method": "RAWINT4",
                "weight_path": a.local_dir,
                # KTransformers' tip (doc/en/Kimi-K2-Thinking.md): physical cores minus one per GPU,
                # which keeps a core for each GPU's SGLang process
                "cpuinfer": max(1, head.cpu.physical_cores - head.gpu_count),
                "threadpool_count": head.cpu.numa_nodes,
                "num_gpu_experts": a.lay.gpu_experts,
                "gpu_prefill_token_threshold": KT_PREFILL_THRESHOLD,
            },
            "chunked_prefill_size": KT_CHUNKED_PREFILL_SIZE,
            "enable_mixed_chunk": True,
            "enable_p2p_check": True,
            "disable_shared_experts_fusion": True,
            "max_total_tokens": a.fit.kv_capacity_tokens if a.fit else 0,
            "attention_backend": "flashinfer",
        }
    )
    return False


def _thinking_sampling(m: Model, extra: str | None = None) -> dict[str, Any]:
    """The catalog's thinking-mode sampling as ``{temp, top_p, min_p}`` (``extra``: a second
    ``modes.sampling`` entry merged over it, ``gguf_extra`` for llama.cpp's min_p)."""
    modes = m.modes.get("sampling", {})
    sampling = dict(modes.get("thinking", {}))
    sampling.update((modes.get(extra, {}) if extra else {}) or {})
    return {
        "temp": sampling.get("temperature"),
        "top_p": sampling.get("top_p"),
        "min_p": sampling.get("min_p"),
    }


def _llama(a: ArgsInput, args: dict[str, Any]) -> bool:
    """llama-server's arguments; True when the RPC layout already set ``multinode``."""
    settings = a.settings
    args.update(
        {
            "n_gpu_layers": settings.get("n_gpu_layers", 0),
            "override_tensor": settings.get("override_tensor", []),
            "threads": a.profile.head.cpu.physical_cores,
            "parallel": 1,
            "jinja": True,
            "chat_template": None,
            "reasoning_format": "deepseek",
            "metrics": True,
            "ctx_size": a.max_len,
            "cache_type_k": "f16" if a.kv_cache_dtype == "bf16" else "q8_0",
            "sampling": _thinking_sampling(a.m, "gguf_extra"),
            "rpc_servers": [],
            # a base model's turn end is plain text to its tokenizer: the server stops there (and drops
            # it) for every client, and bounds an answer whose client sets no max_tokens
            "reverse_prompt": [str(x) for x in a.m.modes.get("stop") or []],
            "n_predict": a.m.modes.get("default_max_tokens"),
        }
    )
    if a.demo:
        args.update(DEMO_LLAMA_ARGS)
    args.update(llama_node_builds(a.profile.nodes[: a.lay.nodes], a.lay, shared=a.demo))
    if a.lay.placement != "rpc":
        return False
    workers = a.profile.nodes[1 : a.lay.nodes]
    args.update(
        {
            "rpc_servers": [f"{n.address}:{RPC_PORT}" for n in workers],
            "tensor_split": settings.get("tensor_split", []),
            "rpc_threads": [DEMO_LLAMA_ARGS["threads"] if a.demo else n.cpu.physical_cores for n in workers],
            "multinode": {"backend": "rpc", "rpc_port": RPC_PORT},
        }
    )
    return True


#: ``Engine.memory_model`` -> the builder that adds the engine's own arguments (True: multinode is set).
BUILDERS: dict[str, Callable[[ArgsInput, dict[str, Any]], bool]] = {
    "vllm": _vllm,
    "sglang": _sglang,
    "sglang-kt": _sglang_kt,
    "llama.cpp": _llama,
}


def engine_args(engine: str, a: ArgsInput, speculative: dict[str, Any] | None) -> dict[str, Any]:
    """The candidate's ``engine_args``: the arguments every engine shares, the variant's, the engine's own."""
    m = a.m
    meta = m.engines.get(engine, {})
    args: dict[str, Any] = {
        "served_model_name": m.served_model_name,
        "host": "127.0.0.1",
        "port": int(meta.get("port", 8000)),
        "trust_remote_code": bool(m.architecture.get("trust_remote_code", False)),
        "tool_call_parser": m.parsers.get("tool_call"),
        "reasoning_parser": m.parsers.get("reasoning"),
        "api_key_env": API_KEY_ENV,
        "kv_cache_dtype": "auto" if a.kv_cache_dtype == "bf16" else "fp8",
        # the model card's thinking-mode sampling, served as the default to clients that send none; instant
        # mode's values (Kimi: temperature 0.6) are the client's to send with chat_template_kwargs
        "sampling": _thinking_sampling(m),
    }
    args["speculative"] = speculative
    multinode_set = BUILDERS[registry.get(engine).memory_model](a, args)
    # the variant's own arguments last: its recipe's choices (NVFP4's KV dtype, attention backend) stand
    args.update(a.v.engine_args.get(engine, {}))
    if multinode_set:
        return args
    if a.lay.nodes > 1:
        args["multinode"] = {"backend": "mp", "master_port": MASTER_PORT, "dist_init_port": DIST_INIT_PORT}
    return args


def llama_node_builds(nodes: tuple[Node, ...], lay: Layout, shared: bool) -> dict[str, Any]:
    """Which llama.cpp build each node runs and how its threads wait, by the node's role.

    ``shared`` (the demo model on the shared CI box): the portable CPU build everyone has cached, and
    OpenMP threads that sleep when idle (OMP_WAIT_POLICY=PASSIVE: spinning starves the other processes,
    engines-on-cpu.md). ``dedicated`` (a real node): CUDA for the GPUs' compute capability when layers go
    to the GPU, the node's own ISA (AVX-512, AMX) for what runs on its CPU, and OpenMP's default spin-wait.
    """
    builds: dict[str, dict[str, Any]] = {}
    table = load_gpu_table()
    for n in nodes:
        spec = table.get(n.gpu_model) if n.gpu_count else None
        on_gpu = spec is not None and lay.placement in ("gpu", "hybrid")
        builds[n.name] = {
            "portable": shared,
            "cuda_architectures": [] if shared or not on_gpu else [spec.compute_capability.replace(".", "")],
            "cpu_isa": [] if shared else list(n.cpu.isa),
        }
    return {
        "node_role": "shared" if shared else "dedicated",
        "omp_wait_policy": "PASSIVE" if shared else None,
        "builds": builds,
    }


__all__ = ["BUILDERS", "ArgsInput", "engine_args", "llama_node_builds"]
