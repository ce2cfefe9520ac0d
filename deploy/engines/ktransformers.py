"""KTransformers: kvcache-ai's SGLang fork (sglang-kt) with kt-kernel's CPU experts: attention and some
experts on the GPUs, the other routed experts in host RAM.

    >>> from deploy.engines.ktransformers import ENGINE
    >>> ENGINE.metrics.family, ENGINE.startup_log.family   # it serves and logs as SGLang
    ('sglang', 'sglang')
"""

from __future__ import annotations

from deploy import pins
from deploy.engines import sglang
from deploy.engines.base import Engine, Feature, Health, Install

HEALTH = Health(
    "/health",
    (503,),
    "starting (port not open yet)",
    "warming up (503 until warm-up)",
    not_ready_hint="SGLang/KTransformers is still warming up",
)

#: kt-kernel's CPU expert kernels use these (NUMA placement of the thread pools)
SYSTEM_LIBS = ("libnuma", "libhwloc")

ENGINE = Engine(
    # the fork keeps upstream SGLang's /model_info with --preferred-sampling-params
    sampling_report=("/model_info", "preferred_sampling_params"),
    name="ktransformers",
    display_name="KTransformers",
    memory_model="sglang-kt",
    launcher="sglang-kt",
    pin_key="ktransformers",
    health=HEALTH,
    router="sglang-router",
    router_reason=(
        "sglang-router keeps reasoning_content in the history it forwards, the field KTransformers' "
        "SGLang fork reads (vllm-router drops it)"
    ),
    metrics=sglang.METRICS,
    startup_log=sglang.STARTUP_LOG,
    install=Install(
        venv=f"ktransformers-{pins.KTRANSFORMERS_VERSION}",
        # KTransformers' Kimi-K2.5 guide: kt-kernel with kvcache-ai's SGLang fork (PyPI: sglang-kt)
        packages=(f"kt-kernel=={pins.KTRANSFORMERS_VERSION}", f"sglang-kt=={pins.SGLANG_KT_VERSION}"),
        parser_venv="parsers-kt",
        parser_version_key="sglang-kt",
        env_report_module="sglang.check_env",
        system_libs=SYSTEM_LIBS,
        # the Debian/Ubuntu packages of the libraries kt-kernel links (libnuma1, libhwloc15 on Debian
        # 12/13 and Ubuntu 22.04/24.04); elsewhere the install script says what to install and goes on
        system_packages=("libnuma1", "libhwloc15"),
        system_libs_reason=(
            "kt-kernel's CPU expert kernels use libnuma and libhwloc (NUMA placement of the thread "
            "pools); the wheel bundles copies, a source build of kt-kernel needs the system's"
        ),
    ),
    unsupported={
        Feature.CPU_SERVING: "KTransformers runs attention on NVIDIA GPUs (>= 48 GB VRAM in total)",
        Feature.SPECULATIVE: "no published speculative-decoding recipe for KTransformers",
        Feature.DECODE_CONTEXT_PARALLEL: "--decode-context-parallel is vLLM's",
        Feature.EXPERT_PARALLEL: "KTransformers places experts by --kt-num-gpu-experts, not expert parallel",
        Feature.MULTINODE: "KTransformers serves from one node (its experts live in that node's RAM)",
    },
    weight_formats=("safetensors",),
    multinode_backends=(),
    needs_gpu=True,
    metrics_flag="enable_metrics",
    host_ip_env="SGLANG_HOST_IP",
    startup_overhead_s=600,
    needs_gpu_fix="one or more NVIDIA GPUs (>= 48 GB VRAM in total) beside >= 600 GB RAM and an AVX512 CPU",
)
