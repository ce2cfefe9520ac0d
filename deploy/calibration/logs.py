"""Read an engine's start-up log: what it allocated, how long it took.

    >>> from deploy.calibration.logs import parse_startup_log
    >>> facts = parse_startup_log(
    ...     "INFO 11-06 12:08:54 [gpu_worker.py:349] Available KV cache memory: 46.80 GiB\\n"
    ...     "INFO 11-06 12:08:55 [kv_cache_utils.py:1229] GPU KV cache size: 715,072 tokens\\n"
    ... )
    >>> facts.engine, facts.kv_cache_tokens, facts.kv_cache_gib
    ('vllm', 715072, 46.8)

The lines read, per engine (the engines' own log statements; figures are per GPU / per rank):

- vLLM (``vllm/v1/worker/gpu_worker.py`` Worker.determine_available_memory, ``vllm/v1/core/kv_cache_utils.py``
  _report_kv_cache_config, ``gpu_model_runner.py`` load_model / capture_model): "Model loading took X GiB
  ... and Y seconds", "Available KV cache memory: X GiB", "GPU KV cache size: N tokens", "Graph capturing
  finished in X secs, took Y GiB", "torch.compile takes X s in total". The CPU build (``cpu_worker.py``):
  "Explicitly set (X/Y) GiB for KV cache", "Loading weights took X seconds".
- SGLang (``model_runner.py`` load_model / init_memory_pool, ``cuda_graph_runner.py``): "Load weight end. ...
  mem usage=X GB", "KV Cache is allocated. #tokens: N, KV size: X GB", "max_total_num_tokens=N",
  "Capture cuda graph end. Time elapsed: X s. mem usage=Y GB".
- llama.cpp (``src/llama-model.cpp`` load_tensors, ``src/llama-kv-cache.cpp``, ``src/llama-context.cpp``):
  "<device> model buffer size = X MiB", "llama_kv_cache: size = X MiB (N cells, ...)", "<device> KV buffer
  size = X MiB", "n_ctx = N", "<device> compute buffer size = X MiB", "build: N (commit)".

Anything that is not such a log (empty, binary, truncated before the KV cache line, another engine's, a
refusal to start) raises CalibrationError with one line naming the file.
"""

from __future__ import annotations

from deploy.engines import registry
from deploy.engines.base import StartupLog
from deploy.engines.startup import StartupFacts
from deploy.errors import CalibrationError, InputError
from deploy.fsutil import read_regular_bytes

#: The most of a log that is read (a start-up log is a few MB at most; journalctl dumps can be longer).
MAX_LOG_BYTES = 64 * 1024 * 1024


def _families() -> dict[str, StartupLog]:
    """Each log family once (KTransformers logs as SGLang), in the registry's order; the patterns and
    parsers live with each engine (``deploy/engines/<engine>.py``)."""
    out: dict[str, StartupLog] = {}
    for engine in registry.all():
        out.setdefault(engine.startup_log.family, engine.startup_log)
    return out


def decode_log(data: bytes, source: str) -> str:
    """The log as text, or CalibrationError for an empty or binary file."""
    if not data.strip():
        raise CalibrationError(f"{source}: the log is empty")
    head = data[: 1024 * 1024]
    if b"\x00" in head:
        raise CalibrationError(f"{source}: not a text log (binary content)")
    text = data.decode("utf-8", errors="replace")
    bad = text[: 1024 * 1024].count("\ufffd")
    if bad > max(16, len(head) // 100):
        raise CalibrationError(f"{source}: not a text log (binary content)")
    return text


def detect_engine(text: str) -> str | None:
    """The engine whose start-up lines the log holds most of (None: none of them)."""
    scores = {
        family: sum(text.count(s) for s in log.signs) + 5 * bool(log.detect and log.detect(text))
        for family, log in _families().items()
    }
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] > 0 else None


def parse_startup_log(text: str, engine: str | None = None, source: str = "<log>") -> StartupFacts:
    """The start-up facts of ``text``. ``engine`` (from the plan) must match the log's own engine.

    >>> parse_startup_log("llama_kv_cache: size =   48.00 MiB (  4096 cells,  18 layers)").kv_cache_tokens
    4096
    """
    if not text.strip():
        raise CalibrationError(f"{source}: the log is empty")
    found = detect_engine(text)
    if found is None:
        raise CalibrationError(f"{source}: no start-up lines of vLLM, SGLang or llama.cpp in the log")
    want = registry.get(engine).startup_log.family if engine and registry.is_known(engine) else engine
    if want is not None and want != found:
        raise CalibrationError(
            f"{source}: this is a {found} start-up log, but the plan's candidate runs {engine}"
        )
    log = _families()[found]
    if log.refused is not None and (refusal := log.refused(text)):
        raise CalibrationError(f"{source}: {registry.get(found).display_name} refused to start: {refusal}")
    facts = StartupFacts(engine=found)
    if log.parse is not None:
        log.parse(text, facts)
    if facts.kv_cache_tokens is None and facts.kv_cache_gib is None:
        raise CalibrationError(f"{source}: truncated: the {found} start-up stops before {log.required}")
    return facts


def read_startup_log(path: str, engine: str | None = None) -> StartupFacts:
    """Read (a regular file of at most MAX_LOG_BYTES, never blocking on a FIFO) and parse a log file."""
    try:
        data = read_regular_bytes(path, MAX_LOG_BYTES)
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no such log file") from None
    except InputError as exc:
        raise CalibrationError(str(exc)) from None
    return parse_startup_log(decode_log(data, path), engine, path)


__all__ = ["StartupFacts", "decode_log", "detect_engine", "parse_startup_log", "read_startup_log"]
