"""Published serving points (capacity_points.yaml) and the roofline efficiency fitted to them.

    >>> points = load_points()
    >>> [p.id for p in points][:1]
    ['dynamo-k2.6-chat']
    >>> fit = fit_efficiency(points)
    >>> 0 < fit.efficiency < 1 and len(fit.held_out) == len(points)
    True

Each point's own efficiency is the one at which the roofline (deploy/planning/roofline.py) reproduces its
output tok/s per GPU at its per-user rate (its full batch when none is published). The efficiency the tool
uses is the geometric mean over the points; the band it states is what leaving each point out gives: the
mean of the others predicts the held-out point, and the smallest and largest of those relative errors
bound every modelled figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from deploy import schema
from deploy.catalog import load_model
from deploy.engines import registry as engines
from deploy.errors import CatalogError
from deploy.planning.architecture import Architecture, architecture_for
from deploy.planning.roofline import Setup, Shape, active_params, at_itl

POINTS_FILE = Path(__file__).with_name("capacity_points.yaml")
#: the catalog model whose architecture counts bytes and FLOPs for the Kimi-K2 family points
ARCH_MODEL = "kimi-k2.5"
#: fraction of HBM vLLM/SGLang give to weights + KV at their defaults (vLLM 0.9, SGLang ~0.85)
HBM_USED = 0.85

_POS = {"type": "number", "exclusiveMinimum": 0}
POINTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["points"],
    "properties": {
        "points": {
            "type": "array",
            "minItems": 2,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "id",
                    "source",
                    "date",
                    "setup",
                    "model",
                    "engine",
                    "variant",
                    "gpu",
                    "gpus_per_replica",
                    "layout",
                    "phase",
                    "isl",
                    "osl",
                    "prefix_hit",
                    "speculative",
                    "output_tok_s_per_gpu",
                    "tok_s_per_user",
                ],
                "properties": {
                    "id": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9.-]*$"},
                    "source": {"type": "string", "minLength": 5},
                    "date": {"type": "string", "minLength": 4},
                    "setup": {"type": "string", "minLength": 5},
                    "model": {"type": "string", "minLength": 1},
                    "engine": {"enum": engines.names()},
                    "variant": {"type": "string"},
                    "gpu": {"type": "string"},
                    "gpus_per_replica": {"type": "integer", "minimum": 1},
                    "decode_gpus": {"type": "integer", "minimum": 1},
                    "prefill_tok_s_per_gpu": _POS,
                    "layout": {"enum": ["tp", "large-ep"]},
                    "phase": {"enum": ["aggregated", "decode"]},
                    "isl": {"type": "integer", "minimum": 1},
                    "osl": {"type": "integer", "minimum": 1},
                    "prefix_hit": {"type": "number", "minimum": 0, "maximum": 0.99},
                    "speculative": {
                        "type": ["object", "null"],
                        "required": ["method", "acceptance"],
                        "properties": {
                            "method": {"type": "string"},
                            "acceptance": {"type": "number", "minimum": 1},
                        },
                    },
                    "output_tok_s_per_gpu": _POS,
                    "tok_s_per_user": {"type": ["number", "null"], "exclusiveMinimum": 0},
                },
            },
        }
    },
}


@dataclass(frozen=True)
class PublishedPoint:
    """One published result with the conditions it holds under."""

    id: str
    source: str
    date: str
    setup: str
    model: str
    engine: str
    variant: str
    gpu: str
    gpus_per_replica: int
    decode_gpus: int
    layout: str
    phase: str
    isl: int
    osl: int
    prefix_hit: float
    speculative: str | None
    acceptance: float
    output_tok_s_per_gpu: float
    tok_s_per_user: float | None
    prefill_tok_s_per_gpu: float | None = None

    @property
    def shape(self) -> Shape:
        return Shape(self.isl, self.osl, self.prefix_hit, self.acceptance)


def load_points(path: Path = POINTS_FILE) -> list[PublishedPoint]:
    """The bundled points, validated against POINTS_SCHEMA."""
    raw = schema.load_yaml(path, POINTS_SCHEMA, CatalogError, missing=f"{path}: published points not found")
    out = []
    for p in raw["points"]:
        spec = p["speculative"] or {}
        out.append(
            PublishedPoint(
                id=p["id"],
                source=p["source"],
                date=str(p["date"]),
                setup=p["setup"],
                model=p["model"],
                engine=p["engine"],
                variant=p["variant"],
                gpu=p["gpu"],
                gpus_per_replica=p["gpus_per_replica"],
                decode_gpus=p.get("decode_gpus", p["gpus_per_replica"]),
                layout=p["layout"],
                phase=p["phase"],
                isl=p["isl"],
                osl=p["osl"],
                prefix_hit=float(p["prefix_hit"]),
                speculative=spec.get("method"),
                acceptance=float(spec.get("acceptance", 1.0)),
                output_tok_s_per_gpu=float(p["output_tok_s_per_gpu"]),
                tok_s_per_user=p["tok_s_per_user"],
                prefill_tok_s_per_gpu=p.get("prefill_tok_s_per_gpu"),
            )
        )
    return out


@lru_cache(maxsize=1)
def architecture() -> Architecture:
    """The Kimi-K2 family architecture (K2, K2.5 and K2.6 share it), in the INT4 release's bytes."""
    m = load_model(ARCH_MODEL)
    return architecture_for(m, m.variant("int4"))


def kv_capacity(arch: Architecture, gpu: str, gpus: int, tp: int, variant: str, dp_attention: bool) -> int:
    """KV tokens a replica holds: HBM in use less the weights on each GPU, over the KV bytes per token
    (whole on every TP rank for MLA; each DP-attention rank its own share)."""
    from deploy.hardware.profiles import gpu_spec
    from deploy.planning.roofline import _weights

    split, replicated, expert = _weights(arch, variant)
    experts_total = expert * arch.n_routed_experts * len(arch.moe_layers)
    dense = split / tp + replicated if not dp_attention else split + replicated
    per_gpu = (
        gpu_spec(gpu).memory_mib * 2**20 * HBM_USED
        - dense
        - experts_total / max(tp, gpus if dp_attention else tp)
    )
    tokens = max(0.0, per_gpu) / arch.kv_bytes_per_token("bf16")
    return int(tokens * gpus) if dp_attention else int(tokens)


def point_setup(p: PublishedPoint) -> Setup:
    """The replica a point ran, as the roofline sees it (decode GPUs only for a prefill/decode split)."""
    large_ep = p.layout == "large-ep"
    gpus = p.decode_gpus
    tp = 1 if large_ep else gpus
    return Setup(
        gpu=p.gpu,
        gpus=gpus,
        tensor_parallel=tp,
        variant=p.variant,
        expert_ranks=gpus if large_ep else 1,
        dp_attention=large_ep,
        decode_only=p.phase == "decode",
        kv_tokens=kv_capacity(architecture(), p.gpu, gpus, tp, p.variant, large_ep),
    )


@lru_cache(maxsize=1)
def prefill_efficiency() -> float:
    """Achieved over dense BF16 FLOPs in prefill: ``2 x active parameters x`` each published prefill rate
    per GPU over that GPU's ``dense_bf16_tflops``, averaged (LMSYS's 7.0k tok/s per H200 gives 0.45)."""
    from deploy.hardware.profiles import gpu_spec

    rates = [
        2.0
        * active_params(architecture())
        * p.prefill_tok_s_per_gpu
        / (gpu_spec(p.gpu).dense_bf16_tflops * 1e12)
        for p in load_points()
        if p.prefill_tok_s_per_gpu
    ]
    if not rates:
        raise CatalogError(f"{POINTS_FILE}: no point publishes a prefill rate (prefill_tok_s_per_gpu)")
    return sum(rates) / len(rates)


def gpu_rates(gpu: str) -> dict[str, float]:
    """The GPU's HBM bandwidth and dense BF16 TFLOPS from hardware/gpus.yaml (0 where unknown), and the
    prefill efficiency, as the roofline's keyword arguments."""
    from deploy.hardware.profiles import gpu_spec

    spec = gpu_spec(gpu)
    return {
        "bandwidth_gbs": spec.memory_bandwidth_gbs,
        "gpu_tflops": spec.dense_bf16_tflops,
        "prefill_efficiency": prefill_efficiency(),
    }


def predict_point(p: PublishedPoint, efficiency: float) -> float:
    """The roofline's output tok/s per GPU (all of the point's GPUs) at the point's per-user rate."""
    itl = 1.0 / p.tok_s_per_user if p.tok_s_per_user else None
    r = at_itl(architecture(), point_setup(p), p.shape, itl, efficiency, **gpu_rates(p.gpu))
    return r["output_tok_s"] / p.gpus_per_replica if r else 0.0


def point_efficiency(p: PublishedPoint) -> float:
    """The efficiency at which the roofline reproduces ``p`` (bisection in log space)."""
    lo, hi = 1e-4, 1.0
    if predict_point(p, hi) < p.output_tok_s_per_gpu:
        return hi
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if predict_point(p, mid) < p.output_tok_s_per_gpu else (lo, mid)
    return hi


@dataclass(frozen=True)
class Fit:
    """The fitted efficiency, each point's own, and each held-out relative error (predicted/published - 1)."""

    efficiency: float
    per_point: dict[str, float]
    held_out: dict[str, float]

    @property
    def band(self) -> tuple[float, float]:
        """(low, high) relative errors of the held-out predictions: a modelled figure v means the truth
        lay between v / (1 + high) and v / (1 + low) for every point left out."""
        errs = list(self.held_out.values())
        return (min(min(errs), 0.0), max(max(errs), 0.0))


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def fit_efficiency(points: list[PublishedPoint] | None = None) -> Fit:
    """Fit the efficiency on every point and leave each out in turn to measure the error."""
    points = points if points is not None else load_points()
    own = {p.id: point_efficiency(p) for p in points}
    held = {}
    for p in points:
        others = _geomean([e for k, e in own.items() if k != p.id])
        held[p.id] = predict_point(p, others) / p.output_tok_s_per_gpu - 1.0
    return Fit(_geomean(list(own.values())), own, held)


@lru_cache(maxsize=1)
def bundled_fit() -> Fit:
    """fit_efficiency on the bundled points (computed once per process)."""
    return fit_efficiency(load_points())


__all__ = [
    "Fit",
    "POINTS_SCHEMA",
    "PublishedPoint",
    "architecture",
    "bundled_fit",
    "fit_efficiency",
    "gpu_rates",
    "kv_capacity",
    "load_points",
    "point_efficiency",
    "prefill_efficiency",
    "point_setup",
    "predict_point",
]
