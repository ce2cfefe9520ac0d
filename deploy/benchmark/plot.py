"""``bench --plot FILE.png``: latency against throughput across the sweep, with the SLO lines drawn.

    >>> write_plot(report, "bench.png")   # doctest: +SKIP
    PosixPath('bench.png')

Two panels side by side, TTFT and ITL, each with its p50 and p99 against the output tokens/s of the point
(every marker labelled with its concurrency), one curve per input/output shape, and a dashed horizontal line
for each SLO limit on that metric. matplotlib draws with its file-only Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANELS = (("ttft_ms", "ttft", "Time to first token (ms)"), ("itl_ms", "itl", "Inter-token latency (ms)"))
STYLE = {"p50": ("o", "-"), "p99": ("^", "--")}


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    slo = (report.get("capacity") or {}).get("slo_ms") or {}
    shapes = [(s["isl"], s["osl"]) for s in report["workload"]["shapes"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, short, title) in zip(axes, PANELS, strict=True):
        for si, (isl, osl) in enumerate(shapes):
            pts = [
                p
                for p in report["points"]
                if p.get("isl") == isl and p.get("osl") == osl and p.get("output_tokens_per_s")
            ]
            pts.sort(key=lambda p: p["concurrency"])
            for pct, (marker, line) in STYLE.items():
                xs = [p["output_tokens_per_s"] for p in pts if (p.get(key) or {}).get(pct) is not None]
                ys = [p[key][pct] for p in pts if (p.get(key) or {}).get(pct) is not None]
                if not xs:
                    continue
                label = f"{pct}" + (f" (ISL {isl}/OSL {osl})" if len(shapes) > 1 else "")
                ax.plot(xs, ys, marker=marker, linestyle=line, color=colors[si % len(colors)], label=label)
                if pct == "p50":
                    for p, x, y in zip(pts, xs, ys, strict=False):
                        ax.annotate(
                            f"c={p['concurrency']}",
                            (x, y),
                            textcoords="offset points",
                            xytext=(6, -12),
                            fontsize=9,
                        )
        for name, limit in slo.items():
            if name.startswith(short + "_"):
                ax.axhline(limit, color="crimson", linestyle=":", linewidth=1.5)
                ax.annotate(
                    f"SLO {name} = {limit:g} ms",
                    (0.01, limit),
                    xycoords=("axes fraction", "data"),
                    xytext=(0, 4),
                    textcoords="offset points",
                    color="crimson",
                    fontsize=9,
                )
        ax.set_title(title)
        ax.set_xlabel("Output throughput (tokens/s, all users)")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.set_xlim(
            left=0,
            right=max([ax.get_xlim()[1]] + [p.get("output_tokens_per_s") or 0 for p in report["points"]])
            * 1.12,
        )
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=9)
    t = report["target"]
    cap = (report.get("capacity") or {}).get("concurrency")
    fig.suptitle(
        f"{t['model']} on {t['flavor']} - AIPerf {report['tool']['version']}, {report['workload']['kind']} "
        f"workload"
        + (
            (f" - capacity at the SLO: concurrency {cap}" if cap else " - no point meets the SLO")
            if slo
            else ""
        ),
        fontsize=12,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


__all__ = ["write_plot"]
