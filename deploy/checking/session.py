"""One `check` run: the endpoint, an optional reference, the sample set, and the limits they share.

    >>> opts = ReferenceOptions(results="results.jsonl")
    >>> run = prepare_run(target, opts, "samples.jsonl", limit=50)  # doctest: +SKIP
    >>> report = execute(run, threshold=0.95, f1_threshold=0.73)  # doctest: +SKIP
    >>> report.trigger_f1["f1"], report.usage[0]["total_tokens"]  # doctest: +SKIP
    (0.8125, 5312)

The budget (``--max-requests``) is one for the whole run, both endpoints and retries together; it is
checked before anything is sent against what the run needs at least (the chat checks plus each sample
once per live endpoint), and again at every request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from deploy.checking import providers
from deploy.checking.meter import Budget, Meter
from deploy.checking.result import FAIL, CheckReport, CheckResult
from deploy.checking.suite import GATES, check_liveness, run_checks
from deploy.checking.target import CheckTarget, require_key, target_from_url
from deploy.checking.toolset import Sample, check_threshold, load_samples, run_samples, tool_call_set_result
from deploy.checking.trigger import f1_result, load_reference_results
from deploy.errors import InputError

DEFAULT_F1_THRESHOLD = 0.73
DEFAULT_MAX_REQUESTS = 1000
#: chat checks the suite may send (instant, thinking, tool_call, streaming, vision)
SUITE_CHAT_REQUESTS = 5


@dataclass
class ReferenceOptions:
    """Where the reference answers come from: a live endpoint (url, model, key) or a results file."""

    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    flavor: str | None = None
    results: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.url or self.results)


@dataclass
class Run:
    target: CheckTarget
    reference: CheckTarget | None = None
    reference_results: str | None = None
    samples: list[Sample] = field(default_factory=list)
    samples_path: str | None = None
    budget: Budget = field(default_factory=Budget)

    def secrets(self) -> list[str | None]:
        """Every key this run holds: redacted from anything it prints or writes."""
        return [self.target.api_key, self.reference.api_key if self.reference else None]


def validate_options(
    tool_calls: str | None,
    ref: ReferenceOptions,
    f1_threshold: float,
    threshold: float,
    concurrency: int,
    max_requests: int,
    max_retry_wait: float,
) -> None:
    """Bad combinations are bad input, before anything is read or sent."""
    check_threshold("--threshold", threshold)
    check_threshold("--f1-threshold", f1_threshold)
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1 (got {concurrency})")
    if max_requests < 0:
        raise InputError(f"--max-requests must be 0 (no limit) or more (got {max_requests})")
    if max_retry_wait < 0:
        raise InputError(f"--max-retry-wait must be 0 or more (got {max_retry_wait})")
    if ref.url and ref.results:
        raise InputError("give either --reference-url or --reference-results, not both")
    if ref.given and not tool_calls:
        raise InputError("a reference needs --tool-calls SAMPLES.jsonl (the F1 is over those samples)")
    if ref.url and not ref.model:
        raise InputError("--reference-url needs --reference-model (the reference's model id)")
    for name, value in (
        ("--reference-model", ref.model),
        ("--reference-api-key-env", ref.api_key_env),
        ("--reference-flavor", ref.flavor),
    ):
        if value and not ref.url:
            raise InputError(f"{name} goes with --reference-url")


def prepare_run(
    target: CheckTarget,
    ref: ReferenceOptions,
    tool_calls: str | None,
    limit: int | None = 50,
    concurrency: int = 4,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    max_retry_wait: float = 30.0,
    timeout_s: float = 120.0,
) -> Run:
    """Targets with their meters, the samples read, and the budget checked against what the run needs."""
    budget = Budget(max_requests or None)
    target.meter = Meter("candidate", budget, concurrency, max_wait_s=max_retry_wait)
    run = Run(target=target, budget=budget, samples_path=tool_calls)
    if ref.url:
        flavor = ref.flavor or providers.guess_flavor(ref.url, default="openai")
        run.reference = target_from_url(
            ref.url, str(ref.model), flavor=flavor, api_key_env=ref.api_key_env, timeout_s=timeout_s
        )
        require_key(run.reference, "--reference-api-key-env")
        run.reference.meter = Meter("reference", budget, concurrency, max_wait_s=max_retry_wait)
    if tool_calls:
        run.samples = load_samples(tool_calls, limit)
    if ref.results:
        load_reference_results(ref.results, run.samples)  # bad input shows before any request
        run.reference_results = ref.results
    endpoints = 1 + (run.reference is not None)
    probes = SUITE_CHAT_REQUESTS * max(1, run.target.samples)
    needed = probes + len(run.samples) * endpoints
    if budget.max_requests is not None and needed > budget.max_requests:
        raise InputError(
            f"this run sends up to {needed} requests ({probes} probe answers + {len(run.samples)} "
            f"samples x {endpoints} endpoint(s)) but --max-requests is {budget.max_requests}"
        )
    return run


def execute(run: Run, threshold: float = 0.95, f1_threshold: float = DEFAULT_F1_THRESHOLD) -> CheckReport:
    """The suite, then the sample set, then the trigger F1 against the reference."""
    report = run_checks(run.target)
    if run.samples_path:
        gates = [r for r in report.results if r.name in GATES and r.status == FAIL]
        if gates:
            report.results.append(CheckResult("tool_call_set", FAIL, f"not run: {gates[0].name} failed"))
            if run.reference or run.reference_results:
                report.results.append(CheckResult("tool_call_f1", FAIL, f"not run: {gates[0].name} failed"))
        else:
            t0 = time.monotonic()
            outcomes = run_samples(run.target, run.samples)
            result, report.tool_call_set = tool_call_set_result(
                outcomes, run.samples_path, threshold, time.monotonic() - t0
            )
            report.results.append(result)
            if run.reference is not None or run.reference_results:
                t1 = time.monotonic()
                live = check_liveness(run.reference) if run.reference is not None else None
                if live is not None and live.status == FAIL:
                    why = f"the reference is not live, no sample sent to it: {live.reason}"
                    report.results.append(CheckResult("tool_call_f1", FAIL, why, live.seconds))
                elif run.reference is not None:
                    reference = run_samples(run.reference, run.samples)
                    source = f"{run.reference.api_base} ({run.reference.model})"
                    report.results.append(_f1(report, outcomes, reference, f1_threshold, source, t1))
                else:
                    reference = load_reference_results(str(run.reference_results), run.samples)
                    source = f"recorded results {run.reference_results}"
                    report.results.append(_f1(report, outcomes, reference, f1_threshold, source, t1))
    report.usage = [run.target.meter.summary()]
    if run.reference is not None:
        report.usage.append(run.reference.meter.summary())
    return report


def _f1(
    report: CheckReport,
    outcomes: dict[int, dict[str, Any]],
    reference: dict[int, dict[str, Any]],
    threshold: float,
    source: str,
    t0: float,
) -> CheckResult:
    result, report.trigger_f1 = f1_result(outcomes, reference, threshold, source, time.monotonic() - t0)
    return result
