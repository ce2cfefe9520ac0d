"""Human output of a plan: a NIM-style table of every candidate, the chosen plan's memory, the explanation.

>>> from deploy.hardware.profiles import load_profile
>>> from deploy.planning.planner import plan
>>> from deploy.planning.report import render_report
>>> print(render_report(plan(load_profile("h200x8"))))  # doctest: +SKIP
STATUS        ENGINE  VARIANT  LAYOUT  NODESxGPUS  REPLICAS  MAX_LEN  KV_TOKENS  ...
"""

from __future__ import annotations

from typing import Any

from deploy import console
from deploy.planning.contract import Candidate, Plan

COLUMNS = (
    "#",
    "STATUS",
    "ENGINE",
    "VARIANT",
    "LAYOUT",
    "NODESxGPUS",
    "REPLICAS",
    "MAX_LEN",
    "KV_TOKENS",
    "KV_LOW",
    "WEIGHTS/GPU",
    "KV/GPU",
    "HOST_RAM",
    "DECODE_C1",
    "REASON",
)
REASON_WIDTH = 90


def _gib(x: float) -> str:
    return f"{x:.1f}G" if x else "-"


def _reason(c: Candidate) -> str:
    if c.status == "runnable":
        text = "full context" if not c.reasons else c.reasons[0]
    else:
        text = "; ".join(c.reasons[:1] + ([f"fix: {c.remediation[-1]}"] if c.remediation else []))
    return text if len(text) <= REASON_WIDTH else text[: REASON_WIDTH - 1] + "…"


def _low(c: Candidate) -> str:
    """The low end of the KV range and the margin below the estimate (exact for llama.cpp / vllm-cpu)."""
    if not c.kv_error:
        return f"{c.kv_cache_tokens_low:,} (exact)" if c.kv_cache_tokens_low else "-"
    return f"{c.kv_cache_tokens_low:,} (-{c.kv_error:.0%})"


def _decode(c: Candidate) -> str:
    """Expected tokens/s of one stream (deploy/planning/performance.py), '?' when a bandwidth is unknown."""
    rate = (c.performance or {}).get("decode_tokens_per_s_c1")
    if rate is None:
        return "?" if c.performance else "-"
    return f"{rate:,.0f}/s" if rate >= 10 else f"{rate:.1f}/s"


def candidate_row(c: Candidate) -> tuple[str, ...]:
    gpus = f"{c.nodes}x{c.gpus_per_node}" if c.gpus_per_node else f"{c.nodes}xCPU"
    runs = c.status != "incompatible"
    return (
        str(c.rank),
        c.status,
        c.engine,
        c.variant,
        c.layout,
        gpus,
        str(c.replicas) if runs else "-",
        f"{c.max_model_len:,}" if runs else "-",
        f"{c.kv_cache_tokens:,}" if runs else "-",
        _low(c) if runs else "-",
        _gib(c.memory.weights),
        _gib(c.memory.kv_cache),
        _gib(c.memory.host),
        _decode(c) if runs else "-",
        _reason(c),
    )


def render_table(plan: Plan) -> str:
    """One line per candidate, best first."""
    rows = [COLUMNS] + [candidate_row(c) for c in plan.candidates]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for r in rows:
        cells = [r[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells + [r[-1]]).rstrip())
    return "\n".join(lines)


def render_memory(c: Candidate) -> str:
    """The chosen candidate's memory, every term with its value (GiB) and source."""
    m = c.memory
    lines = [f"Memory of {c.id} ({c.layout}, {c.kv_cache_dtype} KV cache):"]
    if m.total:
        lines.append(
            f"  per GPU: total {m.total:.2f} GiB, budget {m.budget:.2f} GiB "
            f"(utilisation {c.gpu_memory_utilization:g}), weights {m.weights:.2f}, activations and "
            f"overheads {m.activations:.2f}, KV cache {m.kv_cache:.2f}"
        )
    lines.append(f"  host RAM per node: {m.host:.2f} GiB")
    if c.kv_cache_tokens:
        lines.append(
            f"  KV cache: {c.kv_cache_tokens:,} tokens estimated, {c.kv_cache_tokens_low:,} at the low end "
            f"(error {c.kv_error:.0%}: {c.kv_error_source})"
        )
    if c.calibrated_from:
        lines.append(f"  calibrated from {c.calibrated_from} start(s) (kimi-deploy calibrate list)")
    if c.ready_deadline_s:
        how = (
            c.read_rate_source
            if c.calibrated_from and "measured start-up" in c.read_rate_source
            else f"weights read at {c.read_rate_gbps:g} GB/s, {c.read_rate_source}"
        )
        lines.append(
            f"  time to ready: {c.time_to_ready_s} s predicted ({how}); deadline {c.ready_deadline_s} s "
            f"(x{c.ready_safety_factor:g}, at least +120 s)"
        )
    width = max((len(k) for k in m.terms), default=10)
    for name, value in m.terms.items():
        lines.append(f"    {name.ljust(width)}  {value:10.3f} GiB")
    lines.append("  sources:")
    for name, src in m.sources.items():
        lines.append(f"    {name}: {src}")
    return "\n".join(lines)


def render_fleet_options(plan: Plan) -> str:
    """The ways to run the profile's nodes the planner compared (aggregated replicas, prefill/decode
    splits), best first, with the predicted output tok/s per GPU, its band and source; "" with none.

        >>> from deploy.hardware.profiles import profile_from_gpus
        >>> from deploy.planning.planner import plan
        >>> render_fleet_options(plan(profile_from_gpus("4x8xH200"))).splitlines()[0]  # doctest: +ELLIPSIS
        'Fleet options (chat 1024/1024 tokens, ranked by output tok/s per GPU at ITL 50 ms; modelled...'
    """
    opts = plan.fleet.options
    if not opts:
        return ""
    req = plan.request
    w = (
        f"{req.get('isl')}/{req.get('osl')} tokens"
        if req.get("isl")
        else f"{req.get('workload', 'chat')} {_preset(req.get('workload'))} tokens"
    )
    itl = float(opts[0]["itl_s"]) * 1000
    lines = [
        f"Fleet options ({w}, ranked by output tok/s per GPU at ITL {itl:.0f} ms; modelled at one fitted "
        "efficiency, so the band moves every option together):"
    ]
    runs = plan.fleet.mode
    chosen_label = (
        next((o["label"] for o in opts if o["mode"] == "disaggregated"), None)
        if runs == "disaggregated"
        else next((o["label"] for o in opts if o["mode"] == "aggregated"), None)
    )
    for o in opts:
        mark = "*" if o["label"] == chosen_label and o["mode"] == runs else " "
        lines.append(
            f" {mark}{o['rank']}. {o['label']}: {o['output_tok_s_per_gpu']:,.1f} tok/s per GPU "
            f"({o['low']:,.1f}..{o['high']:,.1f}, {o['source']}): {o['reason']}"
        )
    return "\n".join(lines)


def _preset(name: Any) -> str:
    from deploy.planning.capacity import WORKLOADS

    w = WORKLOADS.get(str(name or "chat"))
    return f"{w.isl}/{w.osl}" if w else ""


def render_report(plan: Plan) -> str:
    """Table, then the chosen plan's memory breakdown, the fleet options, then the explanation."""
    parts = [_title(plan), render_table(plan), ""]
    if plan.chosen is not None:
        parts += [render_memory(plan.chosen_candidate), ""]
    options = render_fleet_options(plan)
    if options:
        parts += [options, ""]
    parts += plan.explanation
    return "\n".join(parts)


def _title(plan: Plan) -> str:
    return f"{plan.model.get('display_name', plan.model.get('name'))} on {plan.hardware.get('name')}"


def rich_report(plan: Plan) -> list[Any]:
    """The same report as :func:`render_report` as rich renderables (a coloured table), for a terminal."""
    from rich.text import Text

    numeric = ("#", "REPLICAS", "MAX_LEN", "KV_TOKENS", "WEIGHTS/GPU", "KV/GPU", "HOST_RAM")
    rows = [candidate_row(c) for c in plan.candidates]
    parts: list[Any] = [
        console.table(COLUMNS, rows, title=_title(plan), right=numeric, styled_column="STATUS"),
    ]
    if plan.chosen is not None:
        parts += [Text(render_memory(plan.chosen_candidate)), Text("")]
    options = render_fleet_options(plan)
    if options:
        parts += [Text(options), Text("")]
    parts += [Text(line) for line in plan.explanation]
    return parts


def print_report(plan: Plan) -> None:
    """Print the report: rich on a terminal, :func:`render_report`'s plain lines elsewhere."""
    console.show(render_report(plan), *rich_report(plan))


__all__ = [
    "candidate_row",
    "print_report",
    "render_fleet_options",
    "render_memory",
    "render_report",
    "render_table",
    "rich_report",
]
