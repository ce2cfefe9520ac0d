"""What a plan is asked for: one frozen, keyword-only value, checked in one place.

    >>> from deploy.hardware.profiles import load_profile
    >>> from deploy.planning.planner import plan
    >>> from deploy.planning.request import PlanRequest
    >>> p = plan(load_profile("h100x8"), PlanRequest(engine="sglang", context=65536))
    >>> p.request["engine"], p.request["context"]
    ('sglang', 65536)

``PlanRequest(...)`` refuses what is wrong on its own (a range, an unknown engine or KV cache dtype, a
revision that is no branch, tag or commit name) with InputError; :meth:`PlanRequest.variants_for` checks what
needs the catalog model and the hardware profile (``nodes`` within the profile, the engine serves the model,
TP divides its heads, the speculative method and the variant exist) and :meth:`PlanRequest.check_context`
the model's positions. Each refusal is one line naming the `kimi-deploy plan` option the value comes from.
``dataclasses.asdict`` of the request is plan.json's ``request`` (field order included).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from deploy import constants, schema
from deploy.catalog import Model, Variant
from deploy.engines import registry
from deploy.errors import InputError
from deploy.hardware.profiles import HardwareProfile

KV_CACHE_DTYPES = ("bf16", "fp8")
#: The most replicas a plan may ask for: one per node of the largest profile (deploy/schema.py MAX_NODES);
#: more is a typo, and each one is a process and a port.
MAX_REPLICAS = schema.MAX_NODES
#: ``plan --fleet-mode``: aggregated replicas, a prefill/decode split, or whichever ranks first
FLEET_MODES = ("auto", "aggregated", "disaggregated")
#: the longest prompt or output a workload may name (the largest context any catalog model has, 4x over)
MAX_WORKLOAD_TOKENS = 1 << 20
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,99}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlanRequest:
    """The planner's options (`kimi-deploy plan`'s, one field each), validated when built."""

    model: str = constants.DEFAULT_MODEL
    engine: str | None = None
    variant: str | None = None
    #: max_model_len wanted; None: the model's maximum
    context: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str = "bf16"
    decode_context_parallel: int = 1
    tensor_parallel: int | None = None
    #: where weights live on every node; None: the head node's weights_dir
    weights_dir: str | None = None
    #: keep only the candidates on exactly this many nodes
    nodes: int | None = None
    #: a speculative-decoding method of the catalog (``eagle3``), applied where a published recipe runs it
    speculative: str | None = None
    #: also offer candidates that set a knob beyond the engine's own choice (marked, ranked last)
    tight: bool = False
    #: weights revision instead of the catalog's
    revision: str | None = None
    #: the TTFT p95 the deployment must meet (seconds); the planner records it, the monitoring alerts on it
    ttft_p95_slo_s: float | None = None
    #: replicas of the chosen layout behind one router; None: as many as the profile's nodes hold
    replicas: int | None = None
    #: the router's port; None: the chosen engine's own port (users keep their URL)
    router_port: int | None = None
    #: the request shape the fleet is planned for: a capacity preset (chat, agentic, long) or, with ``isl``
    #: and ``osl``, those token counts (the prefill:decode split and the fleet ranking read it)
    workload: str = "chat"
    isl: int | None = None
    osl: int | None = None
    #: the inter-token latency p95 the fleet options are ranked at (seconds); None: DEFAULT_ITL_S
    itl_p95_s: float | None = None
    #: aggregated replicas, a prefill/decode split, or auto (the split where it ranks first by a margin and
    #: every node names its RDMA devices)
    fleet_mode: str = "auto"
    #: the KV transfer backend of a prefill/decode split; None: the engine's default
    transfer_backend: str | None = None

    def __post_init__(self) -> None:
        if self.revision is not None and not _REVISION.match(self.revision):
            raise InputError(f"--revision {self.revision!r}: expected a branch, tag or commit name")
        slo = self.ttft_p95_slo_s
        if slo is not None and not (math.isfinite(slo) and slo > 0):
            raise InputError(f"--ttft-slo {slo}: must be a positive number of seconds")
        if self.nodes is not None and self.nodes < 1:
            raise InputError(f"--nodes {self.nodes}: must be at least 1")
        if self.engine is not None and not registry.is_known(self.engine):
            raise InputError(f"--engine {self.engine!r} is not known; known: {', '.join(registry.names())}")
        if self.context is not None and self.context < 1:
            raise InputError(f"--context {self.context}: must be at least 1 token")
        u = self.gpu_memory_utilization
        if u is not None and not 0 < u <= 1:
            raise InputError(f"--gpu-memory-utilization {u}: must be in (0, 1]")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InputError(
                f"--kv-cache-dtype {self.kv_cache_dtype!r}: expected one of {', '.join(KV_CACHE_DTYPES)}"
            )
        if self.decode_context_parallel < 1:
            raise InputError(f"--decode-context-parallel {self.decode_context_parallel}: must be at least 1")
        if self.tensor_parallel is not None and self.tensor_parallel < 1:
            raise InputError(f"--tensor-parallel {self.tensor_parallel}: must be at least 1")
        if self.replicas is not None and not 1 <= self.replicas <= MAX_REPLICAS:
            raise InputError(f"--replicas {self.replicas}: must be between 1 and {MAX_REPLICAS}")
        if self.router_port is not None:
            schema.check_port(self.router_port, "--router-port")
        from deploy.planning.capacity import WORKLOADS

        if self.workload not in WORKLOADS:
            raise InputError(f"--workload {self.workload!r}: expected one of {', '.join(WORKLOADS)}")
        if (self.isl is None) != (self.osl is None):
            raise InputError("--isl and --osl go together (or use --workload chat|agentic|long)")
        for name, tokens in (("--isl", self.isl), ("--osl", self.osl)):
            if tokens is not None and not 1 <= tokens <= MAX_WORKLOAD_TOKENS:
                raise InputError(f"{name} {tokens}: must be between 1 and {MAX_WORKLOAD_TOKENS:,} tokens")
        itl = self.itl_p95_s
        if itl is not None and not (math.isfinite(itl) and 0 < itl <= 60):
            raise InputError(f"--itl-p95 {itl}: must be a positive number of seconds, at most 60")
        if self.fleet_mode not in FLEET_MODES:
            raise InputError(f"--fleet-mode {self.fleet_mode!r}: expected one of {', '.join(FLEET_MODES)}")
        if self.transfer_backend is not None and not re.fullmatch(
            r"[a-z][a-z0-9_-]{0,31}", self.transfer_backend
        ):
            raise InputError(f"--transfer-backend {self.transfer_backend!r}: expected a backend name")

    def workload_shape(self) -> Any:
        """The request shape the fleet is planned for (a deploy.planning.capacity.Workload).

        >>> PlanRequest(isl=2000, osl=100).workload_shape().isl, PlanRequest().workload_shape().name
        (2000, 'chat')
        """
        from deploy.planning.capacity import WORKLOADS, Workload

        if self.isl is not None and self.osl is not None:
            return Workload("custom", self.isl, self.osl)
        return WORKLOADS[self.workload]

    def variants_for(self, m: Model, profile: HardwareProfile) -> list[Variant]:
        """The variants of ``m`` to plan on ``profile``; InputError where the request does not fit them."""
        have = len(profile.nodes)
        if self.nodes is not None and self.nodes > have:
            raise InputError(f"--nodes {self.nodes}: the profile has {have} node{'s' if have > 1 else ''}")
        if self.engine is not None and self.engine not in m.engines:
            raise InputError(
                f"--engine {self.engine}: model {m.name} is not served by it (catalog engines: "
                f"{', '.join(m.engines)})"
            )
        heads = m.architecture.get("num_attention_heads")
        if self.tensor_parallel is not None and heads and heads % self.tensor_parallel:
            raise InputError(
                f"--tensor-parallel {self.tensor_parallel} does not divide the {heads} attention "
                f"heads of {m.name}"
            )
        if self.speculative is not None and self.speculative not in m.speculative:
            known = ", ".join(m.speculative) or "none"
            raise InputError(f"--speculative {self.speculative!r}: {m.name} offers {known}")
        variants = list(m.variants) if self.variant is None else [m.variant(self.variant)]
        if self.engine is not None:
            usable = [v for v in variants if self.engine in v.engines]
            if not usable:
                raise InputError(
                    f"--engine {self.engine} loads none of the variants "
                    f"{', '.join(v.id for v in variants)} of {m.name}"
                )
            variants = usable
        return variants

    def check_context(self, m: Model, max_positions: int) -> None:
        """InputError when the context asked for is above the model's ``max_positions``."""
        if self.context is not None and self.context > max_positions:
            raise InputError(
                f"--context {self.context} is above {m.name}'s maximum of {max_positions} tokens"
            )


__all__ = ["FLEET_MODES", "KV_CACHE_DTYPES", "MAX_REPLICAS", "PlanRequest"]
