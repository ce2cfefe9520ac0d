"""One AIPerf run per concurrency point: the command, its environment, and the export it leaves.

    >>> spec = PointSpec(concurrency=2, requests=4, isl=64, osl=16)
    >>> argv = aiperf_argv(Path("py"), "http://127.0.0.1:8001", "demo", "kimi-deploy/demo", spec, Path("a"))
    >>> argv[:4], "--streaming" in argv, argv[argv.index("--concurrency") + 1]
    (['py', '-m', 'aiperf', 'profile'], True, '2')

The options are AIPerf 0.13.0's ``aiperf profile`` (``aiperf profile --help``; aiperf/config/*.py): the chat
endpoint streamed (TTFT and ITL need streaming), synthetic prompts of ``--prompt-input-tokens-mean`` tokens
asking for ``--prompt-output-tokens-mean`` tokens (stddev 0), or a ``raw-payload`` dataset (one request
body per line, sent verbatim) for the tool-call workload; ``--request-count`` or ``--benchmark-duration``
per point; ``--request-timeout-seconds`` so a stalled server ends as counted errors; the summary export
in ``--output-artifact-dir``. The API key never reaches argv or a file: AIPerf resolves ``${VAR}`` in its
``--config`` YAML (aiperf/config/config.py), so the YAML names a variable set only in AIPerf's environment
(AIPerf itself keeps the key off its children's command lines: aiperf/orchestrator/local_executor.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.errors import AiperfRunError

#: the variable AIPerf's config YAML reads the key from (set only in AIPerf's environment)
KEY_VAR = "KIMI_DEPLOY_BENCH_API_KEY"
EXPORT_NAME = "profile_export_aiperf.json"
#: how far (percent) below the requested output length a response may end before it counts as short
SHORT_OUTPUT_PCT = 25
#: AIPerf's pool drops a connection idle this long (aiohttp checks the age when it takes one from the pool;
#: AIPerf's own default is 300 s), below every engine's ``keepalive_idle_s`` (5 s), so it never reuses a
#: connection the server may be closing for idleness
POOL_IDLE_S = 2


@dataclass(frozen=True)
class PointSpec:
    """What one point sends: concurrency, count or duration, token lengths, and extra body fields."""

    concurrency: int
    requests: int | None = None
    duration_s: float | None = None
    isl: int = 64
    osl: int = 16
    extra_body: dict[str, Any] = field(default_factory=dict)
    payloads: Path | None = None  # a raw-payload JSONL (tool-call workload) instead of synthetic prompts
    request_timeout_s: float = 120.0
    seed: int = 1


#: requests/s AIPerf may start at most, with --concurrency the real limit. Left to its concurrency mode alone,
#: AIPerf 0.13.0's timing manager re-polls for a free slot without sleeping while every slot is busy
#: (``yield_to_event_loop`` in timing/strategies/request_rate.py): a whole core for the point (measured on
#: the demo), taken from the replicas of a server on the same host. With a rate it sleeps between polls
#: (timerfd); a slot freed waits at most 1 / rate for its next request.
SLOT_POLL_RATE = 1000


def aiperf_argv(
    python: Path,
    base_url: str,
    model: str,
    tokenizer: str,
    spec: PointSpec,
    artifacts: Path,
    trust_remote_code: bool = False,
    config: Path | None = None,
    fresh_connections: bool = False,
) -> list[str]:
    """The ``aiperf profile`` command for one point; ``fresh_connections`` opens one connection per request
    (for a server that closes its connection after each stream: ``Engine.closes_after_stream``)."""
    argv = [
        str(python), "-m", "aiperf", "profile",
        "--model", model,
        "--url", base_url,
        "--endpoint-type", "chat",
        "--streaming",
        "--tokenizer", tokenizer,
        "--concurrency", str(spec.concurrency),
        # a free slot is looked for at this rate, not in a spin (see SLOT_POLL_RATE)
        "--request-rate", str(SLOT_POLL_RATE), "--arrival-pattern", "constant",
        "--request-timeout-seconds", f"{spec.request_timeout_s:g}",
        "--output-artifact-dir", str(artifacts),
        "--export-level", "records",
        "--ui-type", "none",
        "--no-gpu-telemetry",
        "--no-server-metrics",
        "--random-seed", str(spec.seed),
    ]  # fmt: skip
    if trust_remote_code:
        argv.append("--tokenizer-trust-remote-code")
    if config is not None:
        argv += ["--config", str(config)]
    if fresh_connections:
        argv += ["--connection-reuse-strategy", "never"]
    if spec.duration_s is not None:
        argv += ["--benchmark-duration", f"{spec.duration_s:g}", "--benchmark-grace-period", "0"]
    else:
        argv += ["--request-count", str(spec.requests or max(4, 2 * spec.concurrency))]
    if spec.payloads is not None:
        argv += ["--input-file", str(spec.payloads), "--custom-dataset-type", "raw-payload"]
    else:
        argv += [
            "--prompt-input-tokens-mean", str(spec.isl),
            "--prompt-input-tokens-stddev", "0",
            "--prompt-output-tokens-mean", str(spec.osl),
            "--prompt-output-tokens-stddev", "0",
        ]  # fmt: skip
        if spec.extra_body:
            argv += ["--extra-inputs", json.dumps(spec.extra_body, separators=(",", ":"))]
    return argv


def aiperf_env(hub_cache: Path, api_key: str | None) -> dict[str, str]:
    """AIPerf's environment: offline, our private tokenizer cache, the key under :data:`KEY_VAR` only."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "HF_TOKEN", KEY_VAR)}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)})
    env.update({"HF_HUB_DISABLE_TELEMETRY": "1", "NO_COLOR": "1", "COLUMNS": "160"})
    # a response counts as short of its requested length (osl_mismatch_count) beyond 25% rather than
    # AIPerf's 5%: re-tokenizing a short output shifts its count by a token or two, a dropped stream by half
    env["AIPERF_METRICS_OSL_MISMATCH_PCT_THRESHOLD"] = str(SHORT_OUTPUT_PCT)
    env["AIPERF_HTTP_KEEPALIVE_TIMEOUT"] = str(POOL_IDLE_S)
    if api_key:
        env[KEY_VAR] = api_key
    return env


def write_key_config(directory: Path, spec: PointSpec) -> Path:
    """A ``--config`` YAML whose endpoint key is ``${KIMI_DEPLOY_BENCH_API_KEY}``, resolved by AIPerf from its
    own environment. A config file must hold the dataset and the phase too (AIPerf 0.13.0 requires them once
    ``--config`` is given); they repeat the point's flags, which override them. The key itself is never in it.
    """
    phase = (
        f"      duration: {spec.duration_s:g}"
        if spec.duration_s is not None
        else (f"      requests: {spec.requests or max(4, 2 * spec.concurrency)}")
    )
    text = (
        "benchmark:\n"
        "  endpoint:\n"
        f"    api_key: ${{{KEY_VAR}}}\n"
        "  datasets:\n"
        "    - name: main\n"
        "      type: synthetic\n"
        "      prompts:\n"
        f"        isl: {{mean: {spec.isl}, stddev: 0}}\n"
        f"        osl: {{mean: {spec.osl}, stddev: 0}}\n"
        "  phases:\n"
        "    - name: profiling\n"
        "      type: concurrency\n"
        f"      concurrency: {spec.concurrency}\n"
        f"{phase}\n"
    )
    path = directory / f"aiperf-endpoint-c{spec.concurrency}-isl{spec.isl}-osl{spec.osl}.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_point(
    argv: list[str], env: dict[str, str], artifacts: Path, timeout_s: float
) -> tuple[Path, int, str]:
    """Run AIPerf once; returns (export path, exit code, last lines of its output). Never raises on a
    non-zero exit: the caller decides from the export whether the point is usable."""
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts / "aiperf-console.log"
    with log.open("w") as fh:
        # its own session: AIPerf starts service processes, and a timeout must end all of them
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            rc = 124
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else ""
    return artifacts / EXPORT_NAME, rc, tail


__all__ = [
    "EXPORT_NAME",
    "KEY_VAR",
    "POOL_IDLE_S",
    "AiperfRunError",
    "PointSpec",
    "aiperf_argv",
    "aiperf_env",
    "run_point",
    "write_key_config",
]
