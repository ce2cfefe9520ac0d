"""The engine command of every node of a plan candidate, as argv lists (what render writes and tests check).

    >>> from deploy.planning.contract import load_plan
    >>> from deploy.serving.argv import node_commands, Endpoint
    >>> p = load_plan("plan.json")                                              # doctest: +SKIP
    >>> cmds = node_commands(p, p.chosen_candidate, "/models/m", Endpoint())  # doctest: +SKIP
    >>> cmds[0].argv[:3]                                                        # doctest: +SKIP
    ['vllm', 'serve', '/models/m']

Flag names are the engines' canonical long names (both vLLM and SGLang accept abbreviations such as
``--tp``; a renamed flag must fail the parser tests, not be matched by prefix). Multi-node layouts:

- vLLM, mp backend: every rank runs ``vllm serve`` with ``--nnodes/--node-rank/--master-addr/--master-port``
  and workers add ``--headless`` (TP per node x PP across nodes, or TP across nodes); data parallel uses
  ``--data-parallel-size/-size-local/-address/-rpc-port`` and ``--data-parallel-start-rank`` on workers.
- vLLM, Ray backend: the head runs ``ray start --head``, then ``vllm serve`` with
  ``--distributed-executor-backend ray``; workers run ``ray start --address HEAD:PORT --block``.
- SGLang (and KTransformers): ``--nnodes/--node-rank/--dist-init-addr`` with the TP size over all ranks.
- llama.cpp RPC: workers run ``rpc-server``, the head runs ``llama-server --rpc host:port,...``.
Only the head (rank 0) serves HTTP.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from deploy.engines import builds as engines
from deploy.engines import registry, vllm_cpu
from deploy.errors import InputError, PlanError
from deploy.planning.contract import Candidate, Plan

DEFAULT_BIND = "127.0.0.1"
DEFAULT_RAY_PORT = 6379
DEFAULT_RPC_PORT = 50052
#: SGLang names the FP8 KV cache formats; the plan says "fp8".
SGLANG_KV_DTYPES = {"fp8": "fp8_e4m3"}
#: The API key never rides on argv (``/proc/<pid>/cmdline`` is readable by every local user). vLLM reads
#: VLLM_API_KEY (vllm/envs.py ``VLLM_API_KEY``, used by ``vllm serve`` when --api-key is absent) and
#: llama-server LLAMA_API_KEY (llama.cpp common/arg.cpp: ``--api-key`` is registered with
#: ``set_env("LLAMA_API_KEY")``); the launch script exports it from the deployment's own variable.
API_KEY_ENV_OF = {e.name: e.api_key_env for e in registry.all() if e.api_key_env}
#: SGLang 0.5.23 reads ``api_key`` from no environment variable (sglang/srt/arg_groups/fields/serving.py:
#: a flag only) but merges a ``--config`` YAML file into its arguments in-process (sglang/srt/server_args.py
#: ``prepare_server_args``, ConfigArgumentMerger in srt/utils/server_args_config_parser.py; the file must
#: end in .yaml). KTransformers runs kvcache-ai's fork (sglang-kt 0.7.2), whose server_args.py has the same
#: ``--config`` argument and ``prepare_server_args`` merge and no key variable either. The launch script
#: writes the key into a 0600 file beside itself and passes that file's path, held in this shell variable.
SGLANG_KEY_CONFIG_VAR = "kimi_key_config"
SGLANG_KEY_CONFIG_FILE = ".sglang-api-key.yaml"


@dataclass(frozen=True)
class EnvRef:
    """A value the launch script takes from its environment at run time (never written into a file)."""

    name: str

    def __str__(self) -> str:
        return "${" + self.name + "}"


@dataclass(frozen=True)
class EnvPath:
    """A path inside a folder the launch script finds on its own node at run time (``${NAME}/rest``): the
    node's engine build in its own cache, not the renderer's."""

    name: str
    rest: str

    def __str__(self) -> str:
        return "${" + self.name + "}" + self.rest


Arg = str | EnvRef | EnvPath
#: The launch script's variable holding this node's engine folder (set from KIMI_DEPLOY_CACHE or ~/.cache).
ENGINE_DIR_VAR = "KIMI_ENGINE_DIR"


@dataclass(frozen=True)
class Endpoint:
    """Where the head serves: bind address, port override and the env var holding the API key.

    ``api_key_env`` is used only for a non-loopback bind (loopback serves without a key)."""

    bind: str = DEFAULT_BIND
    port: int | None = None
    api_key_env: str | None = None
    multinode_backend: str | None = None  # override of engine_args.multinode.backend: mp | ray

    @property
    def loopback(self) -> bool:
        return is_loopback(self.bind)


@dataclass
class NodeCommand:
    """What one node runs: optional commands first (``pre``), then ``argv`` in the foreground."""

    node: str
    rank: int
    role: str  # head | worker
    address: str
    network_interface: str
    argv: list[Arg]
    pre: list[list[Arg]] = field(default_factory=list)
    serves_http: bool = False
    #: engine whose parser checks this argv: vllm | sglang | ktransformers | llama.cpp | ray | rpc
    program: str = ""
    #: variables the launch script exports before ``argv`` (the engine's own API key variable)
    env: dict[str, Arg] = field(default_factory=dict)
    #: SGLang: the API key goes into a --config YAML file the script writes (see SGLANG_KEY_CONFIG_VAR)
    key_config: EnvRef | None = None
    #: llama.cpp: the build this node runs (its folder under the node's cache is ENGINE_DIR_VAR)
    build: engines.LlamaCppBuild | None = None
    #: the profile's fabric facts of this node (``{fabric, rdma_devices, gid_index, link_gbps}``)
    network: dict[str, Any] = field(default_factory=dict)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``.

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, False, True)
    """
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def plan_nodes(plan: Plan, cand: Candidate) -> list[dict[str, Any]]:
    """The hardware nodes the candidate uses, head first."""
    nodes = list(plan.hardware.get("nodes") or [])
    count = max(1, cand.nodes)
    if len(nodes) < count:
        raise PlanError(f"candidate {cand.id!r} needs {count} nodes; the plan's hardware lists {len(nodes)}")
    return nodes[:count]


def _guessed(hardware: dict[str, Any], n: dict[str, Any]) -> bool:
    """A node of a plan written by ``plan --gpus`` before plans said ``hypothetical``: its address was its
    own name and its interface an invented ``eth0``."""
    old = str(hardware.get("description") or "").startswith("hypothetical ")
    return old and n.get("network_interface") == "eth0" and n.get("address") == n.get("name")


def require_real_nodes(plan: Plan, cand: Candidate) -> None:
    """PlanError unless every node of a multi-node ``cand`` has a real address and network interface: the
    ranks meet at the head's address and NCCL/Gloo bind the named interface, so a guess (``node0``,
    ``eth0``) fails at init on a real host. A single node needs neither (it binds loopback/its own ports).

    >>> from deploy.hardware.profiles import profile_from_gpus
    >>> from deploy.planning.planner import plan as make_plan
    >>> p = make_plan(profile_from_gpus("16xH200"))
    >>> require_real_nodes(p, next(c for c in p.candidates if c.nodes == 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    deploy.errors.PlanError: candidate ... runs on 2 nodes but the plan's hardware ...
    """
    if cand.nodes <= 1:
        return
    hardware = plan.hardware
    nodes = plan_nodes(plan, cand)
    missing = [
        str(n.get("name") or f"node{i}")
        for i, n in enumerate(nodes)
        if not n.get("address") or not n.get("network_interface") or _guessed(hardware, n)
    ]
    if missing:
        source = str(hardware.get("name") or "") if hardware.get("hypothetical") else ""
        raise PlanError(
            f"candidate {cand.id!r} runs on {len(nodes)} nodes but the plan's hardware"
            f"{f' (--gpus {source})' if source else ''} gives no address and network interface for "
            f"{', '.join(missing)}: launch files need them (head address for the ranks, "
            "NCCL/GLOO_SOCKET_IFNAME); re-plan with --hardware PROFILE whose nodes set address and "
            "network_interface (kimi-deploy inventory writes them on each node)"
        )


def _flag(args: list[Arg], name: str, value: Any) -> None:
    if value is not None and value is not False:
        args.extend([name] if value is True else [name, str(value)])


def sampling_defaults(a: dict[str, Any]) -> dict[str, float]:
    """The plan's default sampling (``engine_args.sampling``) under the OpenAI request names, for the
    engines that take it as JSON; min_p only where the plan sets it.

    >>> sampling_defaults({"sampling": {"temp": 1.0, "top_p": 0.95, "min_p": None}})
    {'temperature': 1.0, 'top_p': 0.95}
    """
    s = a.get("sampling") or {}
    names = {"temp": "temperature", "top_p": "top_p", "min_p": "min_p"}
    return {names[k]: float(s[k]) for k in names if s.get(k) is not None}


def _sampling_json(a: dict[str, Any]) -> str | None:
    values = sampling_defaults(a)
    return json.dumps(values, separators=(",", ":")) if values else None


def _common_parsers(a: dict[str, Any], args: list[Arg]) -> None:
    _flag(args, "--tool-call-parser", a.get("tool_call_parser"))
    _flag(args, "--reasoning-parser", a.get("reasoning_parser"))


def _http(args: list[Arg], ep: Endpoint, port: int) -> None:
    """Where the head serves; its API key is added by ``_api_key`` (environment or file, never argv)."""
    args.extend(["--host", ep.bind, "--port", str(port)])
    if not ep.loopback and not ep.api_key_env:
        raise InputError(f"--bind {ep.bind} is not loopback: an API key env var is required (--api-key-env)")


def _api_key(node: NodeCommand, engine: str, ep: Endpoint) -> None:
    """Hand the head its API key off the command line: the engine's own variable (``Engine.api_key_env``),
    or, for an engine that reads none (SGLang and its fork), SGLang's --config file."""
    if ep.loopback or not node.serves_http or not ep.api_key_env:
        return
    key = EnvRef(ep.api_key_env)
    own = registry.get(engine).api_key_env
    if own is None:
        node.key_config = key
        node.argv.extend(["--config", EnvRef(SGLANG_KEY_CONFIG_VAR)])
    else:
        node.env[own] = key


def _multinode(a: dict[str, Any], ep: Endpoint) -> dict[str, Any]:
    mn = dict(a.get("multinode") or {})
    if ep.multinode_backend:
        mn["backend"] = ep.multinode_backend
    mn.setdefault("backend", "mp")
    mn.setdefault("master_port", 29500)
    mn.setdefault("dist_init_port", 50000)
    return mn


def _node(n: dict[str, Any], rank: int, argv: list[Arg], program: str, **kw: Any) -> NodeCommand:
    return NodeCommand(
        node=str(n.get("name") or f"node{rank}"),
        rank=rank,
        role="head" if rank == 0 else "worker",
        address=str(n.get("address") or "127.0.0.1"),
        network_interface=str(n.get("network_interface") or ""),
        network=dict(n.get("network") or {}),
        argv=argv,
        program=program,
        **kw,
    )


# ------------------------------------------------------------------------------------------------- vLLM


def _vllm_program(a: dict[str, Any], model: str) -> list[Arg]:
    """``vllm serve MODEL``, or for the CPU build its module in its own venv."""
    if a.get("device") == "cpu":
        # the vllm-cpu distribution's console script does not start (engines-on-cpu.md): run the module
        return [str(vllm_cpu.venv_dir() / "bin" / "python"), "-m", vllm_cpu.SERVER_MODULE, "--model", model]
    return ["vllm", "serve", model]


def _vllm_flags(plan: Plan, cand: Candidate, chat_template: Path | None) -> list[Arg]:
    """The flags every rank of a vLLM launch shares."""
    a = cand.engine_args
    cpu = a.get("device") == "cpu"
    base: list[Arg] = ["--served-model-name", a["served_model_name"]]
    _flag(base, "--trust-remote-code", bool(a.get("trust_remote_code")))
    base += ["--max-model-len", str(cand.max_model_len)]
    _flag(base, "--tensor-parallel-size", cand.tensor_parallel if cand.tensor_parallel > 1 else None)
    _flag(base, "--pipeline-parallel-size", cand.pipeline_parallel if cand.pipeline_parallel > 1 else None)
    _flag(
        base,
        "--decode-context-parallel-size",
        cand.decode_context_parallel if cand.decode_context_parallel > 1 else None,
    )
    _flag(base, "--enable-expert-parallel", bool(a.get("enable_expert_parallel") or cand.expert_parallel))
    if not cpu:
        _flag(base, "--gpu-memory-utilization", cand.gpu_memory_utilization or None)
    else:
        # below 1 GiB (VLLM_CPU_KVCACHE_SPACE takes whole GiB and, when set, overrides this flag)
        _flag(base, "--kv-cache-memory-bytes", a.get("cpu_kvcache_bytes"))
    kv = a.get("kv_cache_dtype") or cand.kv_cache_dtype
    _flag(base, "--kv-cache-dtype", kv if kv not in (None, "auto", "bf16") else None)
    _flag(base, "--max-num-batched-tokens", a.get("max_num_batched_tokens"))
    _flag(base, "--max-num-seqs", a.get("max_num_seqs"))
    _flag(base, "--quantization", a.get("quantization"))
    # NVFP4: vLLM's recipe selects FlashInfer's FP4 MoE kernels with VLLM_USE_FLASHINFER_MOE_FP4=1; the pinned
    # 0.33.0 has no such variable (vllm/envs.py) and takes the choice as --moe-backend (vllm/config/kernel.py)
    _flag(base, "--moe-backend", a.get("moe_backend"))
    spec = a.get("speculative") or {}
    if spec:
        # vLLM's recipe for Kimi-K2.5: --speculative-config {"model", "method": "eagle3",
        # "num_speculative_tokens"} (vllm-project/recipes moonshotai/Kimi-K2.5.md, Eagle3 MTP)
        config = {
            "model": spec["draft_model_path"],
            "method": spec["method"],
            "num_speculative_tokens": int(spec["num_steps"]),
        }
        base += ["--speculative-config", json.dumps(config, separators=(",", ":"))]
    # what a request without sampling fields gets, merged over the model's generation_config.json (vLLM
    # 0.33.0 vllm/config/model.py override_generation_config, with the default --generation-config auto);
    # the values are the Kimi-K2.5 model card's thinking mode (temperature 1.0, top_p 0.95)
    _flag(base, "--override-generation-config", _sampling_json(a))
    _common_parsers(a, base)
    _flag(
        base, "--enable-auto-tool-choice", bool(a.get("enable_auto_tool_choice") or a.get("tool_call_parser"))
    )
    vision = bool((plan.model.get("capabilities") or {}).get("vision"))
    _flag(base, "--mm-encoder-tp-mode", a.get("mm_encoder_tp_mode") or ("data" if vision else None))
    _flag(base, "--language-model-only", bool(a.get("language_model_only")))
    _flag(base, "--enforce-eager", bool(a.get("enforce_eager")))
    _flag(base, "--chat-template", str(chat_template) if chat_template else None)
    # one role of a prefill/decode split (deploy/engines/vllm.py role_args): NIXL's connector both ways
    transfer = a.get("kv_transfer_config")
    if transfer:
        base += ["--kv-transfer-config", json.dumps(dict(transfer), separators=(",", ":"))]
    _flag(base, "--enable-eplb", bool(a.get("enable_eplb")))
    return base


def _kv_transfer_env(a: dict[str, Any], nodes: list[NodeCommand]) -> list[NodeCommand]:
    """A vLLM prefill/decode role's NIXL side channel (each node's own address, so the other role reaches
    it; vLLM's default is localhost) and UCX's devices (the profile's HCAs, the transfer's path)."""
    if not a.get("kv_transfer_config"):
        return nodes
    devices = [str(d) for d in a.get("kv_transfer_rdma_devices") or []]
    for n in nodes:
        n.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = n.address
        n.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(int(a.get("kv_transfer_side_channel_port") or 5600))
        if devices:
            # UCX names an HCA by its port (`ucx_info -d` lists mlx5_0:1); the profile names the HCA
            n.env["UCX_NET_DEVICES"] = ",".join(f"{d}:1" for d in devices)
    return nodes


def _vllm_ray(
    cand: Candidate, nodes: list[dict[str, Any]], cmd: list[Arg], mn: dict[str, Any], ep: Endpoint, port: int
) -> list[NodeCommand]:
    """Ray backend: ``ray start --head`` then ``vllm serve`` on the head, ``ray start --block`` on workers."""
    head_addr = str(nodes[0].get("address"))
    ray_port = int(mn.get("ray_port", DEFAULT_RAY_PORT))
    out: list[NodeCommand] = []
    for rank, n in enumerate(nodes):
        addr = str(n.get("address"))
        if rank == 0:
            args = [*cmd, "--distributed-executor-backend", "ray"]
            if cand.data_parallel > 1:
                args += [
                    "--data-parallel-size",
                    str(cand.data_parallel),
                    "--data-parallel-backend",
                    "ray",
                ]
            _http(args, ep, port)
            pre: list[list[Arg]] = [
                ["ray", "start", "--head", "--port", str(ray_port), "--node-ip-address", addr]
            ]
            out.append(_node(n, rank, args, "vllm", pre=pre, serves_http=True))
        else:
            args = [
                "ray",
                "start",
                "--block",
                "--address",
                f"{head_addr}:{ray_port}",
                "--node-ip-address",
                addr,
            ]
            out.append(_node(n, rank, args, "ray"))
    return out


def _vllm_mp(
    cand: Candidate, nodes: list[dict[str, Any]], cmd: list[Arg], mn: dict[str, Any], ep: Endpoint, port: int
) -> list[NodeCommand]:
    """mp backend: every rank runs ``vllm serve`` (data parallel ranks, or ``--nnodes``; workers headless)."""
    head_addr = str(nodes[0].get("address"))
    out: list[NodeCommand] = []
    for rank, n in enumerate(nodes):
        args = [*cmd, "--distributed-executor-backend", "mp"]
        if cand.data_parallel > 1:
            local = cand.data_parallel // len(nodes)
            args += [
                "--data-parallel-size",
                str(cand.data_parallel),
                "--data-parallel-size-local",
                str(local),
                "--data-parallel-address",
                head_addr,
                "--data-parallel-rpc-port",
                str(mn["master_port"]),
            ]
            if rank:
                args += ["--data-parallel-start-rank", str(rank * local)]
        else:
            args += [
                "--nnodes",
                str(len(nodes)),
                "--node-rank",
                str(rank),
                "--master-addr",
                head_addr,
                "--master-port",
                str(mn["master_port"]),
            ]
        if rank == 0:
            _http(args, ep, port)
        else:
            args.append("--headless")
        out.append(_node(n, rank, args, "vllm", serves_http=rank == 0))
    return out


def _vllm(
    plan: Plan, cand: Candidate, model: str, ep: Endpoint, port: int, chat_template: Path | None = None
) -> list[NodeCommand]:
    a = cand.engine_args
    nodes = plan_nodes(plan, cand)
    prog = _vllm_program(a, model)
    base = _vllm_flags(plan, cand, chat_template)
    if len(nodes) == 1:
        args = [*prog, *base]
        _flag(args, "--data-parallel-size", cand.data_parallel if cand.data_parallel > 1 else None)
        _http(args, ep, port)
        return _kv_transfer_env(a, [_node(nodes[0], 0, args, "vllm", serves_http=True)])

    mn = _multinode(a, ep)
    # the ranks wait in init_process_group while every node loads its weights (the plan sizes the wait)
    _flag(base, "--distributed-timeout-seconds", mn.get("distributed_timeout_s"))
    if mn["backend"] == "ray":
        return _kv_transfer_env(a, _vllm_ray(cand, nodes, [*prog, *base], mn, ep, port))
    if mn["backend"] != "mp":
        raise PlanError(
            f"candidate {cand.id!r}: multinode backend {mn['backend']!r} is not one of mp, ray for vLLM"
        )
    return _kv_transfer_env(a, _vllm_mp(cand, nodes, [*prog, *base], mn, ep, port))


# ----------------------------------------------------------------------------------- SGLang / KTransformers


def _kt_flags(cand: Candidate, model: str, base: list[Arg]) -> None:
    """kvcache-ai's fork's ``--kt-*`` flags and the settings of KTransformers' Kimi-K2.5 guide."""
    a = cand.engine_args
    kt = a.get("kt")
    if not isinstance(kt, dict):
        raise PlanError(f"candidate {cand.id!r}: engine_args.kt is missing for KTransformers")
    base += [
        "--kt-weight-path",
        str(kt.get("weight_path") or model),
        "--kt-method",
        str(kt["method"]),
        "--kt-cpuinfer",
        str(kt["cpuinfer"]),
        "--kt-threadpool-count",
        str(kt["threadpool_count"]),
        "--kt-num-gpu-experts",
        str(kt["num_gpu_experts"]),
    ]
    # layer-wise GPU prefill above this many tokens: the fork's flag (KTransformers' Kimi-K2.5 guide)
    _flag(base, "--kt-gpu-prefill-token-threshold", kt.get("gpu_prefill_token_threshold"))
    _flag(base, "--enable-mixed-chunk", bool(a.get("enable_mixed_chunk")))
    _flag(base, "--enable-p2p-check", bool(a.get("enable_p2p_check")))
    _flag(base, "--disable-shared-experts-fusion", bool(a.get("disable_shared_experts_fusion")))


def _sglang(
    plan: Plan,
    cand: Candidate,
    model: str,
    ep: Endpoint,
    port: int,
    chat_template: Path | None = None,
    kt_fork: bool = False,
) -> list[NodeCommand]:
    """SGLang, or with ``kt_fork`` kvcache-ai's fork that KTransformers runs (its ``--kt-*`` flags); the
    model's own chat template is used (``chat_template`` is not passed)."""
    a = cand.engine_args
    nodes = plan_nodes(plan, cand)
    dp_attention = bool(a.get("enable_dp_attention"))
    # with DP attention the data-parallel ranks live inside one TP group over every GPU
    tp = cand.tensor_parallel * (cand.data_parallel if dp_attention else 1)
    base: list[Arg] = [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        model,
        "--served-model-name",
        a["served_model_name"],
    ]
    _flag(base, "--trust-remote-code", bool(a.get("trust_remote_code")))
    base += ["--context-length", str(cand.max_model_len), "--tp-size", str(tp)]
    _flag(base, "--pp-size", cand.pipeline_parallel if cand.pipeline_parallel > 1 else None)
    if dp_attention and not kt_fork:
        # SGLang 0.5.23 deprecates `--dp-size N --enable-dp-attention` for `--attn-dp-size N` (its
        # server_args.py: the old pair resolves to attn_dp_size N, dp_size 1); the fork has only the old pair
        _flag(base, "--attn-dp-size", cand.data_parallel if cand.data_parallel > 1 else None)
    else:
        _flag(base, "--dp-size", cand.data_parallel if cand.data_parallel > 1 else None)
        _flag(base, "--enable-dp-attention", dp_attention)
    _flag(base, "--ep-size", tp if cand.expert_parallel else None)
    _flag(base, "--mem-fraction-static", a.get("mem_fraction_static"))
    _flag(base, "--chunked-prefill-size", a.get("chunked_prefill_size"))
    # SGLang 0.5.23 split --cuda-graph-max-bs into -decode and -prefill; the plan's figure is the decode
    # batch.
    # kvcache-ai's fork (sglang-kt, KTransformers) still has the single flag (its server_args.py).
    graph_flag = "--cuda-graph-max-bs" if kt_fork else "--cuda-graph-max-bs-decode"
    _flag(base, graph_flag, a.get("cuda_graph_max_bs"))
    _flag(base, "--max-total-tokens", a.get("max_total_tokens") or None)
    _flag(base, "--attention-backend", a.get("attention_backend"))
    kv = a.get("kv_cache_dtype") or cand.kv_cache_dtype
    _flag(
        base, "--kv-cache-dtype", SGLANG_KV_DTYPES.get(kv, kv) if kv not in (None, "auto", "bf16") else None
    )
    _flag(base, "--quantization", a.get("quantization"))
    spec = a.get("speculative") or {}
    if spec:
        # the SGLang cookbook's EAGLE3 settings for Kimi-K2.5 (steps 3, top-k 1, 4 draft tokens)
        base += [
            "--speculative-algorithm",
            str(spec["method"]).upper(),
            "--speculative-draft-model-path",
            str(spec["draft_model_path"]),
            "--speculative-num-steps",
            str(spec["num_steps"]),
            "--speculative-eagle-topk",
            str(spec["eagle_topk"]),
            "--speculative-num-draft-tokens",
            str(spec["num_draft_tokens"]),
        ]
    if kt_fork:
        _kt_flags(cand, model, base)
    # SGLang 0.5.23 and the KTransformers fork sglang-kt 0.7.2 merge --preferred-sampling-params under a
    # request's own fields (srt/managers/tokenizer_manager.py) and report them in /model_info
    # (srt/entrypoints/http_server.py); values: the model card's thinking mode
    _flag(base, "--preferred-sampling-params", _sampling_json(a))
    _common_parsers(a, base)
    _flag(base, "--enable-metrics", bool(a.get("enable_metrics")))
    # one role of a prefill/decode split (deploy/engines/sglang.py role_args)
    _flag(base, "--disaggregation-mode", a.get("disaggregation_mode"))
    _flag(base, "--disaggregation-transfer-backend", a.get("disaggregation_transfer_backend"))
    _flag(base, "--disaggregation-ib-device", a.get("disaggregation_ib_device"))
    _flag(base, "--disaggregation-bootstrap-port", a.get("disaggregation_bootstrap_port"))
    _flag(base, "--max-running-requests", a.get("max_running_requests"))
    _flag(base, "--enable-eplb", bool(a.get("enable_eplb")))
    if len(nodes) == 1:
        args = list(base)
        _http(args, ep, port)
        return [_node(nodes[0], 0, args, cand.engine, serves_http=True)]
    mn = _multinode(a, ep)
    dist = f"{nodes[0].get('address')}:{mn['dist_init_port']}"
    out = []
    for rank, n in enumerate(nodes):
        args = [*base, "--nnodes", str(len(nodes)), "--node-rank", str(rank), "--dist-init-addr", dist]
        if rank == 0:
            _http(args, ep, port)
        out.append(_node(n, rank, args, cand.engine, serves_http=rank == 0))
    return out


# -------------------------------------------------------------------------------------------- llama.cpp


def llama_cpp_cuda(cand: Candidate) -> bool:
    """Whether the candidate needs the CUDA build of llama.cpp (any layer or tensor on a GPU)."""
    return cand.gpus_per_node > 0 and cand.placement != "cpu"


def llama_cpp_build(cand: Candidate, node_name: str) -> engines.LlamaCppBuild:
    """The llama.cpp build the plan gives ``node_name`` (``engine_args.builds``); a plan without builds
    gets the portable CPU build, or CMake's default CUDA build when layers go to a GPU."""
    builds = cand.engine_args.get("builds")
    if isinstance(builds, dict) and node_name in builds:
        return engines.LlamaCppBuild.from_plan(builds[node_name])
    return engines.LlamaCppBuild(cuda_default_arch=llama_cpp_cuda(cand))


def _llama(
    plan: Plan, cand: Candidate, model: str, ep: Endpoint, port: int, chat_template: Path | None
) -> list[NodeCommand]:
    a = cand.engine_args
    nodes = plan_nodes(plan, cand)
    names = [str(n.get("name") or f"node{i}") for i, n in enumerate(nodes)]
    mn = _multinode(a, ep) if len(nodes) > 1 else {}
    rpc_port = int(mn.get("rpc_port", DEFAULT_RPC_PORT))
    rpc_servers = list(a.get("rpc_servers") or [])
    if len(nodes) > 1 and not rpc_servers:
        rpc_servers = [f"{n.get('address')}:{rpc_port}" for n in nodes[1:]]
    args: list[Arg] = [
        EnvPath(ENGINE_DIR_VAR, "/bin/llama-server"),
        "--model",
        model,
        "--alias",
        a["served_model_name"],
        "--ctx-size",
        str(cand.max_model_len),
    ]
    _flag(args, "--jinja", bool(a.get("jinja", True)))
    _flag(args, "--n-gpu-layers", a.get("n_gpu_layers"))
    override = a.get("override_tensor") or []
    _flag(args, "--override-tensor", ",".join(override) if override else None)
    _flag(args, "--threads", a.get("threads"))
    _flag(args, "--parallel", a.get("parallel"))
    _flag(
        args, "--cache-type-k", a.get("cache_type_k") if a.get("cache_type_k") not in (None, "f16") else None
    )
    _flag(args, "--metrics", bool(a.get("metrics")))
    # log verbosity 4: the pinned build prints its model, KV and compute buffer sizes only from level 4 on
    # (common/log.h); `up` reads them to measure the start against the plan (deploy/serving/calibration.py)
    _flag(args, "-lv", 4)
    _flag(args, "--chat-template-file", str(chat_template) if chat_template else None)
    _flag(args, "--reasoning-format", a.get("reasoning_format"))
    for stop in a.get("reverse_prompt") or []:
        _flag(args, "--reverse-prompt", stop)
    _flag(args, "--n-predict", a.get("n_predict"))
    sampling = a.get("sampling") or {}
    _flag(args, "--temp", sampling.get("temp"))
    _flag(args, "--top-p", sampling.get("top_p"))
    _flag(args, "--min-p", sampling.get("min_p"))
    _flag(args, "--rpc", ",".join(rpc_servers) if rpc_servers else None)
    split = a.get("tensor_split") or []
    # the plan's layer split (n_gpu_layers on the RPC devices, in these proportions) is what it sized
    _flag(args, "--tensor-split", ",".join(f"{float(x):g}" for x in split) if split else None)
    _http(args, ep, port)
    out = [_node(nodes[0], 0, args, "llama.cpp", serves_http=True, build=llama_cpp_build(cand, names[0]))]
    threads = list(a.get("rpc_threads") or [])
    for rank, n in enumerate(nodes[1:], start=1):
        # rpc-server has no authentication: anyone who reaches the port can run tensors and read memory, so
        # it binds the node's own (cluster) address, never 0.0.0.0
        worker: list[Arg] = [
            EnvPath(ENGINE_DIR_VAR, "/bin/rpc-server"),
            "--host",
            str(n.get("address")),
            "--port",
            str(rpc_port),
        ]
        count = threads[rank - 1] if rank - 1 < len(threads) else (n.get("cpu") or {}).get("physical_cores")
        _flag(worker, "--threads", count)
        out.append(_node(n, rank, worker, "rpc", build=llama_cpp_build(cand, names[rank])))
    return out


class Launcher(Protocol):
    def __call__(
        self, plan: Plan, cand: Candidate, model: str, ep: Endpoint, port: int, chat_template: Path | None
    ) -> list[NodeCommand]: ...


#: ``Engine.launcher`` -> the builder of every node's command (a new engine names one of these, or adds one)
LAUNCHERS: dict[str, Launcher] = {
    "vllm": _vllm,
    "sglang": _sglang,
    "sglang-kt": partial(_sglang, kt_fork=True),
    "llama.cpp": _llama,
}


def node_commands(
    plan: Plan,
    cand: Candidate,
    model_path: str,
    endpoint: Endpoint,
    chat_template: Path | None = None,
    *,
    addresses_from_scheduler: bool = False,
) -> list[NodeCommand]:
    """Every node's command for ``cand``, head first; ``model_path`` is the weights folder (vLLM, SGLang) or
    the first GGUF shard (llama.cpp). ``addresses_from_scheduler``: the nodes' addresses are variables a
    scheduler fills at start (the Kubernetes target's LWS addresses), so the plan need not carry real ones;
    systemd launches always need them (``require_real_nodes``)."""
    a = cand.engine_args
    if "served_model_name" not in a:
        raise PlanError(f"candidate {cand.id!r}: engine_args.served_model_name is missing")
    port = int(endpoint.port or a.get("port") or 8000)
    if not addresses_from_scheduler:
        require_real_nodes(plan, cand)
    launcher = registry.get(cand.engine).launcher if registry.is_known(cand.engine) else None
    build = LAUNCHERS.get(launcher) if launcher else None
    if build is None:
        raise PlanError(f"candidate {cand.id!r}: no renderer for engine {cand.engine!r}")
    nodes = build(plan, cand, model_path, endpoint, port, chat_template)
    for n in nodes:
        _api_key(n, cand.engine, endpoint)
    return nodes


def argv_strings(argv: list[Arg]) -> list[str]:
    """The argv with env references shown as ``${NAME}`` (for the manifest and messages)."""
    return [str(x) for x in argv]


__all__ = [
    "API_KEY_ENV_OF",
    "ENGINE_DIR_VAR",
    "Arg",
    "Endpoint",
    "EnvPath",
    "EnvRef",
    "LAUNCHERS",
    "NodeCommand",
    "argv_strings",
    "is_loopback",
    "llama_cpp_build",
    "llama_cpp_cuda",
    "node_commands",
    "plan_nodes",
    "require_real_nodes",
    "sampling_defaults",
]
