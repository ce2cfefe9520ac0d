"""`check` of a fleet: the whole suite through the router (what users reach), then each replica on its own.

    >>> from deploy.checking.fleet import replica_targets
    >>> replica_targets(load_plan("plan.json"), target)[0][0]      # doctest: +SKIP
    'r0'

The router serves the OpenAI API of its replicas but not their engine metrics (it has its own, on its
Prometheus port, which monitoring scrapes), so through the router the metrics check is declared skipped and
each replica gets liveness, models and metrics on its own URL: a replica the router hides (dead, not in its
list) still fails the check. On a prefill/decode split each role replica's KV transfer counter is read
before and after the suite (deploy.checking.transfer): the transfer moved, or the check says why it cannot
tell.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from deploy.checking.meter import Meter
from deploy.checking.result import FAIL, PASS, CheckResult
from deploy.checking.suite import run_checks
from deploy.checking.target import CheckTarget
from deploy.checking.transfer import TransferWatch
from deploy.planning.contract import Plan
from deploy.serving import replicas

#: What each replica is checked for on its own URL (the gates come with them).
REPLICA_CHECKS = ("liveness", "models", "metrics", "sampling")


def replica_targets(plan: Plan, front: CheckTarget) -> list[tuple[str, CheckTarget]]:
    """(replica id, target) for each replica behind the plan's router; [] for one endpoint. ``front`` (the
    router's target) stops asking for engine metrics: the replicas answer for theirs."""
    fleet = replicas.fleet_of(plan)
    if fleet is None:
        return []
    engine_metrics = front.metrics
    front.metrics = False
    front.router_front = True
    front.metrics_source = "the router serves no engine metrics: each replica's are checked (replica_<id>)"
    out = []
    for r in fleet["replicas"]:
        url = str(r.get("url") or "").rstrip("/")
        if not url:
            continue
        target = dataclasses.replace(
            front,
            base_url=url,
            api_base=f"{url}/v1",
            meter=Meter(f"replica {r['id']}"),
            metrics=engine_metrics,
            router_front=False,
            metrics_source="the replica's engine (plan engine_args)",
        )
        out.append((str(r["id"]), target))
    return out


@dataclass
class FleetCheck:
    """What `check` adds for a fleet behind a router: each replica on its own URL (``check_replicas``) and,
    on a prefill/decode split, each role replica's KV transfer (deploy.checking.transfer). Empty for one
    endpoint (a URL, a plan of one replica)."""

    replicas: list[tuple[str, CheckTarget]] = field(default_factory=list)
    watch: TransferWatch = field(default_factory=TransferWatch)

    @classmethod
    def start(cls, plan: Plan, front: CheckTarget) -> FleetCheck:
        """The replicas behind ``front`` (see ``replica_targets``), their transfer counters read now: call
        it before the suite sends anything through the router."""
        replicas = replica_targets(plan, front)
        return cls(replicas, TransferWatch.start(plan, replicas))

    def results(self, requests_sent: int) -> list[CheckResult]:
        """After the suite (``requests_sent``: the chat requests it sent through the router): one result per
        replica (``replica_<id>``), then one per role replica of a split (``kv_transfer_<id>``)."""
        return check_replicas(self.replicas) + self.watch.results(requests_sent=requests_sent)


def check_replicas(replicas: list[tuple[str, CheckTarget]]) -> list[CheckResult]:
    """One result per replica (``replica_<id>``): pass when its liveness, models, metrics and (where its
    engine reports it) served default sampling pass."""
    out = []
    for rid, target in replicas:
        report = run_checks(target, only=REPLICA_CHECKS)
        failed = report.failed
        reason = (
            f"{target.base_url}: " + "; ".join(f"{r.name}: {r.reason}" for r in failed)
            if failed
            else f"{target.base_url}: " + ", ".join(f"{r.name} {r.status}" for r in report.results)
        )
        out.append(
            CheckResult(
                f"replica_{rid}",
                FAIL if failed else PASS,
                reason,
                sum(r.seconds for r in report.results),
                {"url": target.base_url, "results": [dataclasses.asdict(r) for r in report.results]},
            )
        )
    return out


__all__ = ["REPLICA_CHECKS", "FleetCheck", "check_replicas", "replica_targets"]
