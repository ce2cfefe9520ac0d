"""How far each prediction may be off, and the VRAM a GPU plan must leave free.

    >>> from deploy.planning.margins import kv_error, gpu_headroom_gib
    >>> kv_error("vllm", "gpu").fraction
    0.08
    >>> round(gpu_headroom_gib(24 * 1024), 2)
    1.2

A candidate's KV capacity is a range: ``kv_cache_tokens`` (the estimate) and ``kv_cache_tokens_low`` (the
estimate less the known error for its engine and device class). A reduced plan sets ``max_model_len`` to the
low end, and a plan is ``runnable`` only when the low end holds the full context: vLLM refuses to start when
one full sequence does not fit its KV cache, so the promise must hold at the pessimistic end.

The error figures and where each comes from (see docs/explanation/margins-and-calibration.md for the table
of published start-ups and the planner's error on each; tests/test_startup_fixtures.py recomputes it):
"""

from __future__ import annotations

from dataclasses import dataclass

from deploy.constants import MIB


@dataclass(frozen=True)
class KvError:
    """The relative error of a KV-capacity estimate and its source."""

    fraction: float
    source: str


#: (engine, device) -> the error of the planner's KV estimate. Keys: device "gpu" or "cpu".
KV_ERRORS: dict[tuple[str, str], KvError] = {
    ("vllm", "gpu"): KvError(
        0.08,
        "published vLLM start-up of Kimi-K2-Thinking, 8x H200 TP8 (vllm-project/recipes#115: 46.80 GiB, "
        "715,072 tokens): the planner predicts 7.3% more KV memory (tests/fixtures/startup_logs); "
        "8% covers it",
    ),
    ("sglang", "gpu"): KvError(
        0.05,
        "no published SGLang start-up of this architecture with its hardware found; SGLang sizes the "
        "pool from the memory free after loading, so the error is that of the weights and reserve "
        "estimates: 5% assumed until a calibration record replaces it",
    ),
    ("ktransformers", "gpu"): KvError(
        0.05,
        "KTransformers sizes its KV pool with SGLang's rules (--max-total-tokens caps it): the SGLang figure",
    ),
    ("llama.cpp", "gpu"): KvError(
        0.0,
        "llama.cpp allocates exactly --ctx-size tokens (its KV buffer matches the planner's bytes to "
        "0.01% on the published DeepSeek-R1 q8_0 log, ikawrakow/ik_llama.cpp#259); its risk is the "
        "compute buffer, covered by the GPU headroom",
    ),
    ("llama.cpp", "cpu"): KvError(0.0, "llama.cpp allocates exactly --ctx-size tokens (measured: demo)"),
    ("vllm", "cpu"): KvError(
        0.0, "vLLM's CPU build gets exactly VLLM_CPU_KVCACHE_SPACE whole GiB of KV cache (set by the plan)"
    ),
}
#: The error once a real start on the same hardware, engine version and layout has been measured: the
#: run-to-run variation of the engines' profiling peak.
CALIBRATED_ERROR = KvError(0.01, "calibrated: run-to-run variation of the engine's profiling peak (1%)")

#: A GPU plan leaves at least this share of each card free beyond everything it predicts (at least
#: GPU_HEADROOM_MIN_MIB): estimates of activations and buffers are the least certain terms.
GPU_HEADROOM_FRACTION = 0.05
GPU_HEADROOM_MIN_MIB = 1024
#: Time to ready: deadlines (``up``, systemd TimeoutStartSec, Ansible waits, multi-node timeouts) are the
#: predicted time to ready times this factor, never less.
READY_SAFETY_FACTOR = 2.0
#: ... and never less than this many seconds beyond the prediction (slow first CUDA/compile caches).
READY_MIN_SLACK_S = 120


def kv_error(engine: str, device: str) -> KvError:
    """The error figure for an engine on ``device`` ("gpu" or "cpu")."""
    return KV_ERRORS.get((engine, device), KvError(0.05, "no figure for this engine: 5% assumed"))


def low_end(tokens: int, error: KvError) -> int:
    """The pessimistic end of a KV estimate."""
    return max(0, int(tokens * (1.0 - error.fraction)))


def gpu_headroom_gib(gpu_memory_mib: int) -> float:
    """VRAM (GiB) a GPU plan must leave free on a card of this size."""
    return max(GPU_HEADROOM_MIN_MIB, GPU_HEADROOM_FRACTION * gpu_memory_mib) * MIB / 1024**3


def ready_deadline_s(time_to_ready_s: float) -> int:
    """The deadline derived from a predicted time to ready (factor of safety, then slack)."""
    return int(max(time_to_ready_s * READY_SAFETY_FACTOR, time_to_ready_s + READY_MIN_SLACK_S))


__all__ = [
    "CALIBRATED_ERROR",
    "GPU_HEADROOM_FRACTION",
    "KV_ERRORS",
    "READY_SAFETY_FACTOR",
    "KvError",
    "gpu_headroom_gib",
    "kv_error",
    "low_end",
    "ready_deadline_s",
]
