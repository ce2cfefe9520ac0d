"""Predicted against measured: build calibration records from a plan and a start-up, apply them to a plan.

    >>> from deploy.planning.calibrated import record_from_start
    >>> # record_from_start(plan, candidate, facts, source="up") -> a store record (deploy.calibration.store)

A record matches a candidate when model, engine, engine version, GPU model, layout, weights variant and KV
dtype agree (``deploy.calibration.store.record_key``). Applying it follows each engine's own rule for what a
different knob changes:

- vLLM on GPU, SGLang, KTransformers: the KV cache is what the budget leaves, so the measured error in KV
  memory (measured - predicted GiB per GPU, at the recorded utilisation) carries over to any
  ``--gpu-memory-utilization`` / ``--mem-fraction-static`` and context: KV = this plan's estimate + that
  error, in whole blocks (vLLM) or cells (SGLang).
- vLLM's CPU build: the KV cache is the whole GiB the plan sets; tokens per GiB come from the measurement.
- llama.cpp: allocates exactly --ctx-size; the measured weights and KV bytes per token replace the estimates
  in the room left for the context.
Time to ready becomes the measured start-up time. Without a matching record nothing changes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from deploy.calibration.logs import StartupFacts
from deploy.calibration.store import record_key
from deploy.constants import GIB
from deploy.engines import registry
from deploy.pins import ENGINE_PINS
from deploy.planning.contract import Candidate, Plan
from deploy.planning.memory import Fit, memory_model


def engine_version(engine: str, placement: str) -> str:
    """The pinned version a candidate of this engine runs."""
    if not registry.is_known(engine):
        return ENGINE_PINS.get(engine, "unknown")
    eng = registry.get(engine)
    if placement == "cpu" and eng.cpu_build_version:
        return f"cpu-{eng.cpu_build_version}"
    return eng.version


def gpu_name(hardware: dict[str, Any], candidate: Candidate) -> str:
    """The GPU model of a candidate's nodes ("cpu" when it runs on CPUs only)."""
    if not candidate.gpus_per_node or candidate.placement in ("cpu", "rpc"):
        return "cpu"
    nodes = hardware.get("nodes") or [{}]
    return str((nodes[0].get("gpus") or {}).get("model", "unknown"))


def _key_fields(model: str, engine: str, version: str, gpu: str, c: Candidate) -> dict[str, Any]:
    return {
        "model": model,
        "engine": engine,
        "engine_version": version,
        "gpu": gpu,
        "layout": c.layout or c.id,
        "variant": c.variant,
        "knobs": {
            "gpu_memory_utilization": c.gpu_memory_utilization or None,
            "kv_cache_dtype": c.kv_cache_dtype,
            "max_model_len": int(c.max_model_len),
            "tensor_parallel": c.tensor_parallel,
            "pipeline_parallel": c.pipeline_parallel,
            "data_parallel": c.data_parallel,
            "decode_context_parallel": c.decode_context_parallel,
            "placement": c.placement,
            "cpu_kvcache_space_gib": c.engine_args.get("cpu_kvcache_space_gib"),
        },
    }


def predicted_figures(c: Candidate) -> dict[str, Any]:
    """What the plan promised for this candidate, in the record's terms."""
    m = c.memory
    cpu = c.placement in ("cpu", "rpc") or not c.gpus_per_node
    host_weights = m.terms.get("host_weights", m.terms.get("host_cpu_tensors"))
    kv_gib = m.terms.get("host_kv_cache") if cpu else m.kv_cache
    return {
        "kv_cache_tokens": int(c.kv_cache_tokens),
        "kv_cache_gib": round(float(kv_gib), 4) if kv_gib is not None else None,
        "weights_gib_per_gpu": None if cpu else round(m.weights, 4),
        "weights_gib_host": round(float(host_weights), 4) if host_weights is not None else None,
        "load_s": float(c.time_to_ready_s) if c.time_to_ready_s else None,
    }


def record_from_start(
    plan: Plan,
    candidate: Candidate,
    facts: StartupFacts,
    source: str,
    load_s: float | None = None,
) -> dict[str, Any]:
    """A store record: the candidate's prediction against what the start-up measured. ``load_s`` (seconds
    from launch to ready, measured by ``up``) wins over the log's own time span."""
    version = engine_version(candidate.engine, candidate.placement)
    if registry.get(candidate.engine).log_build_in_version and facts.engine_version:
        version = f"{version}+{facts.engine_version}" if facts.engine_version not in version else version
    rec = _key_fields(
        str(plan.model.get("name")),
        candidate.engine,
        version,
        gpu_name(plan.hardware, candidate),
        candidate,
    )
    rec["candidate"] = candidate.id
    rec["predicted"] = predicted_figures(candidate)
    rec["measured"] = {
        "kv_cache_tokens": facts.kv_cache_tokens,
        "kv_cache_gib": facts.kv_cache_gib,
        "weights_gib_per_gpu": facts.weights_gib_per_gpu,
        "weights_gib_host": facts.weights_gib_host,
        "load_s": round(load_s, 2) if load_s is not None else facts.load_s,
    }
    rec["source"] = source
    rec["recorded_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    return rec


def matching_records(
    records: list[dict[str, Any]],
    model: str,
    engine: str,
    placement: str,
    gpu: str,
    layout: str,
    variant: str,
    kv_cache_dtype: str,
) -> list[dict[str, Any]]:
    """The records about this model, engine version, GPU, layout, variant and KV dtype."""
    version = engine_version(engine, placement)
    out = []
    for r in records:
        model_r, engine_r, version_r, gpu_r, layout_r, variant_r, dtype_r = record_key(r)
        # llama.cpp records carry the build's commit after the pin ("llama-cpp-python-0.3.36+0c1e570")
        if (model_r, engine_r, gpu_r, layout_r, variant_r, dtype_r) != (
            model,
            engine,
            gpu,
            layout,
            variant,
            kv_cache_dtype,
        ):
            continue
        if str(version_r).split("+")[0] == version:
            out.append(r)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _kv_gib(fig: dict[str, Any], per_token: int) -> float | None:
    if fig.get("kv_cache_gib") is not None:
        return float(fig["kv_cache_gib"])
    if fig.get("kv_cache_tokens") is not None:
        return fig["kv_cache_tokens"] * per_token / GIB
    return None


def apply_to_fit(
    fit: Fit, records: list[dict[str, Any]], engine: str, placement: str, context: int
) -> tuple[int, float | None]:
    """Correct ``fit`` in place from ``records`` (all matching one candidate). Returns (how many records
    were used, the measured time to ready in seconds or None)."""
    used = 0
    per_token = max(1, fit.kv_bytes_per_token)
    load = [float(r["measured"]["load_s"]) for r in records if r["measured"].get("load_s")]
    model, cpu_build = memory_model(engine), registry.get(engine).cpu_build
    if model.layer_split or placement == "cpu":
        deltas, per_tok, ratios = [], [], []
        for r in records:
            m, p = r["measured"], r["predicted"]
            key = "weights_gib_host" if placement in ("cpu", "rpc") else "weights_gib_per_gpu"
            if m.get(key) is not None and p.get(key) is not None:
                deltas.append(float(m[key]) - float(p[key]))
            if m.get("kv_cache_gib") and m.get("kv_cache_tokens"):
                per_tok.append(float(m["kv_cache_gib"]) * GIB / int(m["kv_cache_tokens"]))
            if cpu_build and m.get("kv_cache_tokens") and p.get("kv_cache_tokens"):
                ratios.append(int(m["kv_cache_tokens"]) / int(p["kv_cache_tokens"]))
        if cpu_build and ratios:  # the CPU build: tokens per GiB of VLLM_CPU_KVCACHE_SPACE
            fit.kv_capacity_tokens = int(fit.kv_capacity_tokens * _mean(ratios))
            fit.max_fit_tokens = fit.kv_capacity_tokens
            used = len(records)
        elif deltas or per_tok:
            delta = _mean(deltas) if deltas else 0.0
            room = fit.max_fit_tokens * per_token - delta * GIB
            new_per_token = _mean(per_tok) if per_tok else per_token
            fit.max_fit_tokens = max(0, int(room // new_per_token))
            fit.kv_capacity_tokens = min(context, fit.max_fit_tokens)
            # the KV cache the context now takes, at the measured bytes per token
            key = "host_kv_cache" if placement in ("cpu", "rpc") else "kv_cache"
            old_kv = fit.memory.terms.get(key, 0.0)
            new_kv = round(fit.kv_capacity_tokens * new_per_token / GIB, 4)
            fit.memory.terms[key] = new_kv
            fit.memory.terms["calibrated_weights_delta"] = round(delta, 4)
            if placement in ("cpu", "rpc"):
                fit.memory.host = round(fit.memory.host + new_kv - old_kv + delta, 3)
                fit.host_required_gib = fit.memory.host
            else:
                fit.memory.kv_cache = new_kv
                fit.memory.weights = round(fit.memory.weights + delta, 3)
            fit.memory.sources["calibrated_kv"] = (
                f"measured: {new_per_token:,.0f} KV bytes per token (planner: {per_token:,}), weights "
                f"{delta:+.3f} GiB against the estimate"
            )
            used = len(records)
    else:
        deltas = []
        for r in records:
            mk, pk = _kv_gib(r["measured"], per_token), _kv_gib(r["predicted"], per_token)
            if mk is not None and pk is not None:
                deltas.append(mk - pk)
        if deltas:
            kv = fit.memory.kv_cache + _mean(deltas)
            tokens = int(kv * GIB // per_token) if kv > 0 else 0
            tokens = tokens // model.kv_block_tokens * model.kv_block_tokens
            fit.kv_capacity_tokens = fit.max_fit_tokens = max(0, tokens)
            fit.memory.kv_cache = round(max(kv, 0.0), 3)
            fit.memory.terms["calibrated_kv_delta"] = round(_mean(deltas), 4)
            weights = [
                float(r["measured"]["weights_gib_per_gpu"])
                for r in records
                if r["measured"].get("weights_gib_per_gpu")
            ]
            if weights:
                fit.memory.terms["measured_weights"] = round(_mean(weights), 4)
            if kv <= 0:
                fit.gpu_ok = False
                fit.reasons.append("calibrated: the measured start leaves no KV room at these settings")
            used = len(records)
    if used:
        fit.memory.sources["calibration"] = (
            f"calibrated from {used} start(s) in the calibration store (kimi-deploy calibrate list)"
        )
    return used, (_mean(load) if load else None)


__all__ = [
    "apply_to_fit",
    "engine_version",
    "gpu_name",
    "matching_records",
    "predicted_figures",
    "record_from_start",
]
