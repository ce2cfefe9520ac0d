"""The engine's own ``/metrics`` polled during a benchmark point: peaks and counter deltas.

    >>> with MetricsScraper("http://127.0.0.1:8001", engine="llama.cpp") as scraper:   # doctest: +SKIP
    ...     run_the_point()
    >>> scraper.summary()["peak_queue"]                                                  # doctest: +SKIP
    3.0

The text is parsed, and each signal is read by the name the pinned engine registers, exactly as `status
--watch` and the alert rules read them (deploy.monitoring.scrape, deploy.monitoring.engines): running and
waiting requests, the KV-cache usage gauge (the mean over vLLM's data-parallel engine cores, not their sum)
and the preemption counter (SGLang: retractions). Against a URL whose engine is not known, the engine is
recognised by which of those names its ``/metrics`` carries. A metric the engine does not expose (llama.cpp
has no KV gauge and never preempts) is reported as null, never as 0.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from deploy.checking import bounded
from deploy.errors import InputError
from deploy.monitoring.engines import LLAMA_CPP, SGLANG, VLLM, EngineMetrics, metrics_for
from deploy.monitoring.scrape import Samples, parse_metrics, total

_FAMILIES = (VLLM, SGLANG, LLAMA_CPP)


def engine_metrics(engine: str | None, samples: Samples) -> EngineMetrics | None:
    """The metric names of ``engine``; for an unknown one (a URL), the family whose running-requests gauge
    the samples carry, or None."""
    if engine:
        try:
            return metrics_for(engine)
        except InputError:
            pass
    return next((m for m in _FAMILIES if m.running in samples), None)


def kv_usage(m: EngineMetrics, samples: Samples) -> float | None:
    """The KV-cache fraction in use from the engine's gauge; None where it has none (llama.cpp)."""
    if "{sel}" in m.kv_usage:
        return None
    series = samples.get(m.kv_usage, [])
    value = total(samples, m.kv_usage)
    return value / len(series) if value is not None and series else value


class MetricsScraper:
    """Polls ``base_url/metrics`` every ``interval_s`` in a daemon thread while the context is open."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str] | None = None,
        interval_s: float = 0.5,
        timeout_s: float = 2.0,
        engine: str | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/metrics"
        self.engine = engine
        self.headers = headers or {}
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.samples: list[tuple[float, Samples]] = []
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
        self.samples.append((time.time(), parse_metrics(r.text)))

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

    @staticmethod
    def _peak(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    def summary(self) -> dict[str, Any]:
        """Peaks of KV usage / queue / running, preemptions during the window, and the metric names used."""
        if not self.samples:
            return {"available": False, "reason": f"{self.url}: {self.error or 'no sample'}", "samples": 0}
        m = engine_metrics(self.engine, self.samples[-1][1])
        if m is None:
            return {
                "available": False,
                "reason": f"{self.url}: no metric of vLLM, SGLang or llama.cpp in it",
                "samples": len(self.samples),
            }
        scrapes = [s for _, s in self.samples]
        kv = self._peak([kv_usage(m, s) for s in scrapes])
        queue = self._peak([total(s, m.waiting) for s in scrapes])
        running = self._peak([total(s, m.running) for s in scrapes])
        preempt = None
        if m.preemptions:
            counts = [c for c in (total(s, m.preemptions) for s in scrapes) if c is not None]
            preempt = max(counts) - counts[0] if counts else None
        return {
            "available": True,
            "samples": len(self.samples),
            "peak_kv_cache_usage": kv,
            "peak_queue": queue,
            "peak_running": running,
            "preemptions": preempt,
            "sources": {
                "engine": m.family,
                "kv_cache_usage": m.kv_usage if kv is not None else None,
                "queue": m.waiting if queue is not None else None,
                "running": m.running if running is not None else None,
                "preemptions": m.preemptions if preempt is not None else None,
            },
        }


class ReplicaScrapers:
    """One ``MetricsScraper`` per replica behind a router, which serves no engine metrics of its own.

    ``summary()`` has the single scraper's keys, over the replicas: each peak is the highest any replica
    reached (a queue on one replica is what a client waits in), preemptions are the sum, and ``replicas``
    holds each replica's own summary by id.

        >>> urls = [("0", "http://n:8002"), ("1", "http://n:8003")]
        >>> with ReplicaScrapers(urls, {}, "llama.cpp") as s:     # doctest: +SKIP
        ...     run_the_point()
        >>> s.summary()["replicas"]["1"]["peak_running"]          # doctest: +SKIP
        1.0
    """

    def __init__(self, replicas: list[tuple[str, str]], headers: dict[str, str], engine: str | None) -> None:
        self.scrapers = {rid: MetricsScraper(url, headers, engine=engine) for rid, url in replicas}

    def __enter__(self) -> ReplicaScrapers:
        for scraper in self.scrapers.values():
            scraper.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for scraper in self.scrapers.values():
            scraper.__exit__(*exc)

    def summary(self) -> dict[str, Any]:
        each = {rid: scraper.summary() for rid, scraper in self.scrapers.items()}
        up = [m for m in each.values() if m.get("available")]
        if not up:
            reasons = "; ".join(f"replica {rid}: {m.get('reason')}" for rid, m in each.items())
            return {"available": False, "reason": reasons, "samples": 0, "replicas": each}

        def peak(key: str) -> float | None:
            return MetricsScraper._peak([m.get(key) for m in up])

        preempt = [m["preemptions"] for m in up if m.get("preemptions") is not None]
        return {
            "available": True,
            "samples": sum(m["samples"] for m in up),
            "peak_kv_cache_usage": peak("peak_kv_cache_usage"),
            "peak_queue": peak("peak_queue"),
            "peak_running": peak("peak_running"),
            "preemptions": sum(preempt) if preempt else None,
            "sources": {**up[0]["sources"], "replicas": f"{len(up)} of {len(each)} replicas' own /metrics"},
            "replicas": each,
        }


def scraper_for(
    base_url: str, headers: dict[str, str], engine: str | None, replicas: list[tuple[str, str]] | None = None
) -> MetricsScraper | ReplicaScrapers:
    """The replicas' scrapers when the target is a router in front of them, else the endpoint's own."""
    if replicas:
        return ReplicaScrapers(replicas, headers, engine)
    return MetricsScraper(base_url, headers, engine=engine)


__all__ = ["MetricsScraper", "ReplicaScrapers", "engine_metrics", "kv_usage", "scraper_for"]
