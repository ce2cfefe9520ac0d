"""`check` on a prefill/decode split: the KV cache moved from the prefill instances to the decode ones.

    >>> watch = TransferWatch.start(plan, replicas)     # doctest: +SKIP
    >>> report = run_the_suite_through_the_router()     # doctest: +SKIP
    >>> [r.name for r in watch.results()]               # doctest: +SKIP
    ['kv_transfer_r0', 'kv_transfer_r1']

A split answers through its router even when the transfer is broken in a way that still returns text (a
decode that prefills locally after a failed transfer, a router that sends everything to one side), so the
answers alone do not show that KV moved. Each role replica's own ``/metrics`` does: ``start`` reads the
engine's transfer counter on every role replica before the suite (``EngineMetrics.kv_transfer``: on a
prefill the transfers it sent, on a decode those it received), ``results`` reads them again after it and
gives one result per role replica, ``kv_transfer_<id>``:

- pass: the counter grew while the suite ran through the router;
- fail: it did not grow (within ``SETTLE_S`` after the suite: an engine records a transfer when it polls it
  done, which can trail the answer), a counter of failed transfers grew, or ``/metrics`` did not answer;
- skip, with the reason: the engine counts nothing on that side (vLLM's NIXL pull connector counts on the
  decode only), or the replica serves no ``/metrics``. Never a silent pass.

A counter the engine creates on its first observation (a labelled Prometheus series) is absent until the
first transfer; absent reads as 0. Real RDMA transfer is not exercised by the toolkit's own tests: no engine
here runs a split on CPU, so they serve these names from small fake engines (tests/test_check_transfer.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import requests

from deploy.checking import bounded
from deploy.checking.calls import error_reason, headers
from deploy.checking.result import FAIL, PASS, SKIP, CheckResult
from deploy.checking.target import CheckTarget
from deploy.engines import registry
from deploy.engines.base import TransferCounter
from deploy.monitoring.scrape import Samples, parse_metrics
from deploy.planning.contract import Plan

#: Seconds after the suite a counter that has not grown yet is read again before it fails.
SETTLE_S = 5.0
#: Between those reads.
POLL_S = 0.25
#: One /metrics read.
READ_TIMEOUT_S = 10.0


def counter_value(samples: Samples, counter: TransferCounter) -> float:
    """The sum of ``counter``'s series whose labels include its ``labels``; 0 when it has none yet.

    >>> s = parse_metrics('x_count{stage="a"} 2\\nx_count{stage="b"} 5\\n')
    >>> counter_value(s, TransferCounter("x_count", "t", {"stage": "b"}))
    5.0
    >>> counter_value({}, TransferCounter("x_count", "t"))
    0.0
    """
    return sum(
        (
            value
            for labels, value in samples.get(counter.sample, [])
            if not math.isnan(value) and all(labels.get(k) == v for k, v in counter.labels.items())
        ),
        0.0,
    )


def _failed_value(samples: Samples, names: tuple[str, ...]) -> float:
    return sum((v for name in names for _labels, v in samples.get(name, []) if not math.isnan(v)), 0.0)


@dataclass
class RoleReplica:
    """One replica of a split as the watch reads it: its id, role, target (its own URL) and the engine's
    transfer counter for its role (None: the engine has none, ``why`` says so)."""

    id: str
    role: str
    target: CheckTarget
    counter: TransferCounter | None
    failed: tuple[str, ...]
    why: str = ""
    before: tuple[float, float] | None = None
    error: str = ""
    seconds: float = 0.0


def _read(replica: RoleReplica) -> tuple[float, float]:
    """(transfer counter, failed-transfer counters) from the replica's /metrics; requests errors raise."""
    assert replica.counter is not None
    r = bounded.get(
        f"{replica.target.base_url}/metrics", headers=headers(replica.target), timeout_s=READ_TIMEOUT_S
    )
    if r.status_code != 200:
        raise requests.HTTPError(f"GET /metrics {r.status_code}")
    samples = parse_metrics(r.text)
    return counter_value(samples, replica.counter), _failed_value(samples, replica.failed)


def role_replicas(plan: Plan | None, replicas: list[tuple[str, CheckTarget]]) -> list[RoleReplica]:
    """The role replicas of ``plan``'s split among ``replicas`` (deploy.checking.fleet.replica_targets),
    each with its engine's counter; [] for aggregated replicas or no plan (a URL)."""
    if plan is None:
        return []
    fleet = plan.fleet
    split = fleet.disaggregation
    if fleet.mode != "disaggregated" or split is None:
        return []
    out = []
    for rid, target in replicas:
        role = fleet.role_of(rid)
        if role not in ("prefill", "decode"):
            continue
        engine = registry.get(plan.candidate(str(split[role]["candidate"])).engine)
        metrics = engine.metrics.kv_transfer
        counter = metrics.counter(role) if metrics else None
        why = ""
        if metrics is None:
            why = f"{engine.display_name} {engine.version} names no KV transfer metric"
        elif counter is None:
            why = metrics.missing.get(role) or f"{engine.display_name} counts no transfer on the {role} side"
        elif not target.metrics:
            why = f"the replica serves no /metrics ({target.metrics_source or 'metrics not enabled'})"
            counter = None
        out.append(RoleReplica(rid, role, target, counter, metrics.failed if metrics else (), why))
    return out


@dataclass
class TransferWatch:
    """The role replicas' transfer counters, read before the suite (``start``) and after it
    (``results``)."""

    replicas: list[RoleReplica] = field(default_factory=list)

    @classmethod
    def start(cls, plan: Plan | None, replicas: list[tuple[str, CheckTarget]]) -> TransferWatch:
        """Read each role replica's counter now, before the suite sends anything through the router (no
        plan, or aggregated replicas: nothing to watch)."""
        watch = cls(role_replicas(plan, replicas))
        for r in watch.replicas:
            if r.counter is None:
                continue
            t0 = time.monotonic()
            try:
                r.before = _read(r)
            except requests.RequestException as exc:
                r.error = f"GET /metrics before the suite: {error_reason(exc, r.target)}"
            r.seconds += time.monotonic() - t0
        return watch

    def results(self, requests_sent: int | None = None, settle_s: float = SETTLE_S) -> list[CheckResult]:
        """One ``kv_transfer_<id>`` result per role replica, after the suite (see the module doc);
        ``requests_sent``: the chat requests the suite sent through the router (0: the checks that need
        traffic are not run)."""
        if requests_sent == 0:
            why = "not run: the suite sent no chat request through the router"
            return [
                CheckResult(f"kv_transfer_{r.id}", FAIL, why) if r.counter else _result(r, None, "", 0)
                for r in self.replicas
            ]
        pending = [r for r in self.replicas if r.counter is not None and r.before is not None]
        after: dict[str, tuple[float, float]] = {}
        errors: dict[str, str] = {}
        deadline = time.monotonic() + settle_s
        while True:
            for r in pending:
                t0 = time.monotonic()
                try:
                    after[r.id] = _read(r)
                    errors.pop(r.id, None)
                except requests.RequestException as exc:
                    errors[r.id] = f"GET /metrics after the suite: {error_reason(exc, r.target)}"
                r.seconds += time.monotonic() - t0
            pending = [r for r in pending if r.id not in after or not _grew(r, after[r.id])]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)  # the engine records a transfer when it next polls it done
        return [_result(r, after.get(r.id), errors.get(r.id, ""), settle_s) for r in self.replicas]


def _grew(r: RoleReplica, after: tuple[float, float]) -> bool:
    assert r.before is not None
    return after[0] > r.before[0] or after[1] > r.before[1]


def _result(r: RoleReplica, after: tuple[float, float] | None, error: str, settle_s: float) -> CheckResult:
    name = f"kv_transfer_{r.id}"
    where = f"{r.target.base_url} ({r.role})"
    if r.counter is None:
        return CheckResult(name, SKIP, f"{where}: not checked: {r.why}", r.seconds)
    details = {"url": r.target.base_url, "role": r.role, "metric": r.counter.sample}
    details |= {"labels": dict(r.counter.labels), "source": r.counter.source}
    if r.error or r.before is None:
        return CheckResult(name, FAIL, f"{where}: {r.error}", r.seconds, details)
    if after is None:
        return CheckResult(name, FAIL, f"{where}: {error}", r.seconds, details)
    (before, failed_before), (now, failed_now) = r.before, after
    details |= {"before": before, "after": now, "failed_before": failed_before, "failed_after": failed_now}
    shown = r.counter.sample + "".join(f"{{{k}={v!r}}}" for k, v in r.counter.labels.items())
    if failed_now > failed_before:
        why = f"{failed_now - failed_before:g} KV transfer(s) failed during the suite ({', '.join(r.failed)})"
        return CheckResult(name, FAIL, f"{where}: {why}", r.seconds, details)
    if now <= before:
        why = (
            f"{shown} stayed at {before:g} through the suite (and {settle_s:g} s after): no "
            f"{r.counter.counts} while the router served it; is the router in its prefill/decode mode, and "
            "does the transfer reach the other role (`kimi-deploy preflight`)?"
        )
        return CheckResult(name, FAIL, f"{where}: {why}", r.seconds, details)
    return CheckResult(
        name,
        PASS,
        f"{where}: {now - before:g} {r.counter.counts} during the suite ({shown} {before:g} -> {now:g})",
        r.seconds,
        details,
    )


__all__ = ["POLL_S", "SETTLE_S", "RoleReplica", "TransferWatch", "counter_value", "role_replicas"]
