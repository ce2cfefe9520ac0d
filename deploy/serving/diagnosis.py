"""Why an engine did not come up: read its log (and exit status) and name the cause in one line.

    >>> from deploy.serving.diagnosis import diagnose
    >>> d = diagnose("E srv  start: couldn't bind HTTP server socket, hostname: 127.0.0.1, port: 8001\\n", 1)
    >>> d.kind, d.summary
    ('port_in_use', 'the port is already in use (another server holds it)')

Patterns are matched against the whole log, most specific first, so a KV-cache refusal that also mentions
"memory" is reported as the KV cache, not as an out-of-memory. Patterns cover vLLM, SGLang, KTransformers and
llama.cpp's messages for the same failures.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from deploy.engines.vllm_cpu import parse_kv_refusal


@dataclass(frozen=True)
class Diagnosis:
    """A cause: a stable ``kind`` (for scripts and tests), a one-line ``summary`` and a ``hint``."""

    kind: str
    summary: str
    hint: str
    evidence: str = ""  # the log line that matched, when one did


@dataclass(frozen=True)
class _Rule:
    kind: str
    patterns: tuple[str, ...]
    summary: str
    hint: str


_RULES: tuple[_Rule, ...] = (
    # llama.cpp's RPC backend aborts with a gdb backtrace whose "No such file or directory" lines would
    # otherwise read as missing weights, so these come first. {rpc} is the worker named (see diagnose).
    _Rule(
        "rpc_unreachable",
        (r"Failed to connect to (?P<rpc>\S+:\d+)",),
        "the head could not connect to rpc-server {rpc} (the worker is not running or not reachable)",
        "start the worker first (`kimi-deploy up --node <worker>` there), then check its address and port",
    ),
    _Rule(
        "rpc_worker_lost",
        (r"Remote RPC server crashed or returned malformed response",),
        "an RPC worker died or dropped its connection: rpc-server {rpc}",
        "restart the worker (`kimi-deploy up --node <worker>` there), then the head; see the worker's log",
    ),
    _Rule(
        "kv_cache_too_small",
        (
            r"is larger than the maximum number of tokens that can be stored in KV cache",
            r"KV cache is needed, which is larger than the available KV cache memory",
            r"No available memory for the cache blocks",
            r"Not enough memory\. Please try to increase --mem-fraction-static",
            r"max_total_num_tokens=\d+.*(?:too small|less than)",
            r"failed to allocate buffer for kv cache",
        ),
        "the KV cache is too small for max_model_len",
        "re-plan with a smaller --context, or raise gpu_memory_utilization / mem_fraction_static",
    ),
    _Rule(
        "cuda_oom",
        (
            r"CUDA out of memory",
            r"torch\.(?:cuda\.)?OutOfMemoryError",
            r"CUDA error: out of memory",
            r"cudaMalloc failed: out of memory",
            r"cudaErrorMemoryAllocation",
            r"ggml_backend_cuda_buffer_type_alloc_buffer: allocating .* failed",
        ),
        "the GPU ran out of memory",
        "re-plan with a lower gpu_memory_utilization, a smaller context or more GPUs",
    ),
    _Rule(
        "host_oom",
        (
            r"\bMemoryError\b",
            r"std::bad_alloc",
            r"Cannot allocate memory",
            r"Out of memory: Killed process",
            r"^Killed$",
        ),
        "the host ran out of memory",
        "free host RAM (other processes, page cache pinned by /dev/shm) or re-plan for this node's RAM",
    ),
    _Rule(
        "port_in_use",
        (
            r"[Aa]ddress already in use",
            r"couldn't bind",
            r"[Ff]ailed to bind",
            r"\[Errno 98\]",
        ),
        "the port is already in use (another server holds it)",
        "stop the other server (`kimi-deploy down`, or find it with `ss -ltnp`) or render with another port",
    ),
    _Rule(
        "unknown_flag",
        (
            r"unrecognized arguments?:",
            r"error: invalid argument: ",
            r"error: unknown argument",
            r"error: argument [^:]+: invalid choice",
            r"ambiguous option:",
        ),
        "the engine rejected a flag (its version does not match the renderer's pins)",
        "install the pinned engine version (`kimi-deploy engine install`) or re-render for the installed one",
    ),
    _Rule(
        "engine_missing",
        (
            r"line \d+: \S+: (?:No such file or directory|command not found)",
            r"command not found",
            r"No module named '?(?:vllm|sglang|ktransformers)",
        ),
        "the engine is not installed where the launch script looks for it",
        "install it with `kimi-deploy engine install <engine>` (or `make setup`)",
    ),
    _Rule(
        "missing_weights",
        (
            r"failed to load model",
            r"failed to open GGUF file",
            r"No such file or directory",
            r"does not appear to have a file named",
            r"is not a valid model identifier",
            r"Can't load (?:the )?(?:config|tokenizer|model)",
            r"FileNotFoundError",
        ),
        "the engine could not load the model files",
        "check the weights path in the plan and run `kimi-deploy download` and `kimi-deploy verify`",
    ),
)

_COMPILED = tuple((rule, tuple(re.compile(p, re.MULTILINE) for p in rule.patterns)) for rule in _RULES)


def diagnose(
    log_text: str, returncode: int | None, timed_out: bool = False, rpc_servers: Sequence[str] = ()
) -> Diagnosis:
    """Name the cause of a failed start from the engine's log and exit status.

    ``returncode`` is the process's status (negative: killed by that signal), ``None`` while it still runs
    (the deadline passed). ``timed_out`` says the deadline, not the process, ended the wait.
    ``rpc_servers`` names the llama.cpp RPC workers to blame when the log does not say which one failed
    (the caller passes those it found unreachable).

        >>> diagnose("Killed\\n", -9).kind
        'host_oom'
        >>> lost = "Remote RPC server crashed or returned malformed response\\n"
        >>> diagnose(lost, -6, rpc_servers=["10.0.0.2:50052"]).summary
        'an RPC worker died or dropped its connection: rpc-server 10.0.0.2:50052'
    """
    for rule, patterns in _COMPILED:
        for pattern in patterns:
            match = pattern.search(log_text)
            if match:
                named = match.groupdict().get("rpc") or ", ".join(rpc_servers) or "(address not logged)"
                summary = rule.summary.replace("{rpc}", named)
                found = Diagnosis(rule.kind, summary, rule.hint, _line_at(log_text, match.start()))
                return _with_kv_numbers(found, log_text) if rule.kind == "kv_cache_too_small" else found
    if returncode is not None and returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return Diagnosis(
            "host_oom",
            "the engine was killed (SIGKILL), most likely by the kernel's out-of-memory killer",
            "check `dmesg` for the OOM killer, free host RAM or re-plan for this node's RAM",
        )
    if returncode == 127:
        rule = next(r for r in _RULES if r.kind == "engine_missing")
        return Diagnosis(rule.kind, rule.summary, rule.hint)
    if timed_out:
        return Diagnosis(
            "deadline",
            "the engine did not become ready before the deadline",
            "raise --deadline if it was still loading (see the last log lines), or check the log",
        )
    return Diagnosis(
        "exited",
        f"the engine exited with status {returncode} and no known cause in its log",
        "read the log lines below",
    )


def _with_kv_numbers(found: Diagnosis, log_text: str) -> Diagnosis:
    """vLLM's refusal says how much KV cache was needed and what context fits: say it, re-plan for it."""
    refusal = parse_kv_refusal(log_text)
    if refusal is None:
        return found
    hint = (
        f"re-plan with --context {refusal.fits} (what vLLM says fits), or give the KV cache more memory"
        if refusal.fits
        else found.hint
    )
    return Diagnosis(found.kind, f"{found.summary} ({refusal.summary()})", hint, found.evidence)


def last_lines(log_text: str, count: int = 15) -> list[str]:
    """The last ``count`` non-empty lines of a log.

    >>> last_lines("a\\n\\nb\\nc\\n", 2)
    ['b', 'c']
    """
    lines = [line for line in log_text.splitlines() if line.strip()]
    return lines[-count:]


def _line_at(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    return text[start : end if end != -1 else len(text)].strip()
