"""Read an engine's ``/metrics`` (Prometheus text format) into the few numbers ``status --watch`` shows.

    >>> samples = parse_metrics('llamacpp:requests_processing 1\\nllamacpp:tokens_predicted_total 42\\n')
    >>> summarize("llama.cpp", samples, slots=2).running, summarize("llama.cpp", samples, slots=2).kv_usage
    (1.0, 0.5)

``fetch`` gets the text (with the API key as a bearer header when one is given; the key is never logged),
``parse_metrics`` turns it into ``{name: [(labels, value)]}``, ``summarize`` picks running/waiting requests,
KV-cache usage and the generated-token counter by the engine's names (deploy.monitoring.engines), and
``tokens_per_s`` turns two summaries into a rate.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import requests

from deploy.deadline import http_get
from deploy.monitoring.engines import metrics_for

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
#: Bytes of /metrics read at most (a vLLM server exposes a few hundred KB with many histograms).
MAX_BYTES = 8 * 1024 * 1024

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition format -> ``{metric name: [(labels, value), ...]}``; comments skipped,
    malformed lines ignored."""
    out: Samples = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def total(samples: Samples, name: str) -> float | None:
    """The sum of every series of ``name`` (None when the engine does not expose it)."""
    values = [v for _labels, v in samples.get(name, []) if not math.isnan(v)]
    return sum(values) if values else None


@dataclass(frozen=True)
class MetricsSummary:
    """What one scrape says about a node; ``None`` where the engine does not expose it."""

    at: float
    running: float | None
    waiting: float | None
    kv_usage: float | None
    generated_tokens: float | None


def summarize(engine: str, samples: Samples, slots: int = 1, at: float | None = None) -> MetricsSummary:
    m = metrics_for(engine)
    running = total(samples, m.running)
    if m.slot_based:
        kv = None if running is None else running / max(1, slots)
    else:
        kv = total(samples, m.kv_usage)
        if kv is not None and len(samples.get(m.kv_usage, [])) > 1:
            kv /= len(samples[m.kv_usage])  # one gauge per engine core (vLLM's data-parallel ranks): the mean
    return MetricsSummary(
        at=time.monotonic() if at is None else at,
        running=running,
        waiting=total(samples, m.waiting),
        kv_usage=kv,
        generated_tokens=total(samples, m.generation_tokens),
    )


def tokens_per_s(before: MetricsSummary | None, after: MetricsSummary) -> float | None:
    """Generated tokens per second between two scrapes (None for the first one, or after a restart)."""
    if before is None or before.generated_tokens is None or after.generated_tokens is None:
        return None
    dt = after.at - before.at
    delta = after.generated_tokens - before.generated_tokens
    if dt <= 0 or delta < 0:
        return None
    return delta / dt


class ScrapeError(Exception):
    """/metrics did not answer 200 (the message names the status or the error, never the key)."""


def fetch(url: str, api_key: str | None = None, timeout_s: float = 3.0) -> str:
    """GET ``url`` (an engine's /metrics) and return its text."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = http_get(url, headers=headers, timeout_s=timeout_s, max_bytes=MAX_BYTES)
        if r.status_code != 200:
            raise ScrapeError(f"{url}: HTTP {r.status_code}")
        body = r.content
    except requests.RequestException as exc:
        raise ScrapeError(f"{url}: {type(exc).__name__}") from None
    return body.decode("utf-8", "replace")


__all__ = [
    "MetricsSummary",
    "ScrapeError",
    "fetch",
    "parse_metrics",
    "summarize",
    "tokens_per_s",
    "total",
]
