"""The engine's own ``/metrics`` (Prometheus text) polled during a benchmark point: peaks and counter deltas.

    >>> with MetricsScraper("http://127.0.0.1:8001") as scraper:   # doctest: +SKIP
    ...     run_the_point()
    >>> scraper.summary()["peak_kv_cache_usage"]                    # doctest: +SKIP
    0.42

Which gauges mean what, per engine (the names each engine's metrics code registers):
- vLLM: ``vllm:kv_cache_usage_perc`` (older ``vllm:gpu_cache_usage_perc``), ``vllm:num_requests_waiting``,
  ``vllm:num_requests_running``, counter ``vllm:num_preemptions_total`` (vllm/v1/metrics/loggers.py);
- SGLang: ``sglang:token_usage``, ``sglang:num_queue_reqs``, ``sglang:num_running_reqs``;
- llama.cpp (``--metrics``): ``llamacpp:kv_cache_usage_ratio`` where the build has it,
  ``llamacpp:requests_deferred`` (waiting for a slot), ``llamacpp:requests_processing``
  (tools/server/server-context.cpp, the ``/metrics`` handler).
A metric the engine does not expose is reported as null, never as 0.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Any

import requests

from deploy.checking import bounded

KV_USAGE = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
    "llamacpp:kv_cache_usage_ratio",
)
QUEUE = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "llamacpp:requests_deferred")
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "llamacpp:requests_processing")
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Metric name -> value, summed over label sets (one engine serves one model)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isfinite(value):
            out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


class MetricsScraper:
    """Polls ``base_url/metrics`` every ``interval_s`` in a daemon thread while the context is open."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        interval_s: float = 0.5,
        timeout_s: float = 2.0,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/metrics"
        self.headers = headers or {}
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape_once(self) -> None:
        try:
            # an overall deadline and a size cap, not only a per-read timeout (deploy.checking.bounded)
            r = bounded.get(self.url, headers=self.headers, timeout_s=self.timeout_s)
        except requests.RequestException as exc:
            self.error = f"{exc.__class__.__name__}"
            return
        if r.status_code != 200:
            self.error = f"HTTP {r.status_code}"
            return
        self.samples.append((time.time(), parse_prometheus(r.text)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scrape_once()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MetricsScraper:
        self._thread = threading.Thread(target=self._loop, name="metrics-scraper", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)
        self.scrape_once()

    def _peak(self, names: tuple[str, ...]) -> tuple[float | None, str | None]:
        for name in names:
            values = [s[name] for _, s in self.samples if name in s]
            if values:
                return max(values), name
        return None, None

    def summary(self) -> dict[str, Any]:
        """Peaks of KV usage / queue / running, preemptions during the window, and the metric names used."""
        if not self.samples:
            return {"available": False, "reason": f"{self.url}: {self.error or 'no sample'}", "samples": 0}
        kv, kv_name = self._peak(KV_USAGE)
        queue, queue_name = self._peak(QUEUE)
        running, running_name = self._peak(RUNNING)
        preempt, preempt_name = None, None
        for name in PREEMPTIONS:
            values = [s[name] for _, s in self.samples if name in s]
            if values:
                preempt, preempt_name = max(values) - values[0], name
                break
        return {
            "available": True,
            "samples": len(self.samples),
            "peak_kv_cache_usage": kv,
            "peak_queue": queue,
            "peak_running": running,
            "preemptions": preempt,
            "sources": {
                "kv_cache_usage": kv_name,
                "queue": queue_name,
                "running": running_name,
                "preemptions": preempt_name,
            },
        }


__all__ = ["MetricsScraper", "parse_prometheus"]
