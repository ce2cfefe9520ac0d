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

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from deploy.errors import CalibrationError, InputError
from deploy.fsutil import read_regular_bytes

#: The most of a log that is read (a start-up log is a few MB at most; journalctl dumps can be longer).
MAX_LOG_BYTES = 64 * 1024 * 1024
ENGINES = ("vllm", "sglang", "llama.cpp")
MIB_PER_GIB = 1024.0

_NUM = r"([0-9][0-9,]*(?:\.[0-9]+)?)"

# ---- vLLM ----------------------------------------------------------------------------------------
_V_LOAD = re.compile(r"Model loading took " + _NUM + r" ?GiB(?: memory)? and " + _NUM + r" ?s")
_V_LOAD_OLD = re.compile(r"Loading model weights took " + _NUM + r" ?GB")
_V_AVAIL = re.compile(r"Available KV cache memory: " + _NUM + r" ?GiB")
_V_TOKENS = re.compile(r"(?:GPU |CPU )?KV cache size: " + _NUM + r" tokens")
_V_GRAPH = re.compile(r"Graph capturing finished in " + _NUM + r" secs?, took " + _NUM + r" ?GiB")
_V_COMPILE = re.compile(r"torch\.compile takes " + _NUM + r" ?s in total")
_V_CPU_KV = re.compile(r"Explicitly set \(" + _NUM + r"/" + _NUM + r"\) GiB for KV cache")
_V_CPU_LOAD = re.compile(r"Loading weights took " + _NUM + r" seconds")
_V_VERSION = re.compile(r"(?:vLLM API server version |\bversion |LLM engine \(v)(\d+\.\d+\.\d+[\w.+-]*)")
_V_REFUSED = re.compile(
    r"ValueError: (To serve at least one request[^\n]*|No available memory for the cache[^\n]*)"
)
_V_TS = re.compile(r"\b(\d\d-\d\d \d\d:\d\d:\d\d)\b")
#: The lines an engine prints once it serves: a log's time span is a time to ready only when it has one.
_V_READY = ("Application startup complete", "Starting vLLM API server")
_S_READY = ("The server is fired up and ready to roll", "Application startup complete")
_V_SIGNS = ("vllm", "(APIServer pid=", "EngineCore", "gpu_worker.py", "kv_cache_utils.py", "cpu_worker.py")

# ---- SGLang --------------------------------------------------------------------------------------
_S_LOAD = re.compile(r"Load weight end\..*?mem usage=" + _NUM + r" ?GB")
_S_KV = re.compile(
    r"KV Cache is allocated\. #tokens: "
    + _NUM
    + r", (?:KV size: "
    + _NUM
    + r" ?GB|K size: "
    + _NUM
    + r" ?GB, V size: "
    + _NUM
    + r" ?GB)"
)
_S_MAX_TOTAL = re.compile(r"max_total_num_tokens=" + _NUM)
_S_GRAPH = re.compile(
    r"Capture cuda graph end\. Time elapsed: " + _NUM + r" ?s\. mem usage=" + _NUM + r" ?GB"
)
_S_TS = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
_S_VERSION = re.compile(r"sglang(?:==| version[: ]+)(\d+\.\d+\.\d+[\w.+-]*)", re.IGNORECASE)
_S_SIGNS = ("sglang", "Load weight begin", "KV Cache is allocated", "max_total_num_tokens")

# ---- llama.cpp -----------------------------------------------------------------------------------
_L_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+" + _NUM + r" MiB")
_L_KV_SIZE = re.compile(r"llama_kv_cache(?:_unified)?: size =\s+" + _NUM + r" MiB \(\s*(\d+) cells")
_L_KV_BUF = re.compile(r"llama_kv_cache(?:_unified|_init)?:\s+(\S+) KV buffer size =\s+" + _NUM + r" MiB")
_L_NCTX = re.compile(r"llama_context: n_ctx\s*=\s*(\d+)")
_L_COMPUTE = re.compile(r"(?:llama_context|sched_reserve):\s+(\S+) compute buffer size =\s+" + _NUM + r" MiB")
_L_BUILD = re.compile(r"build:? (\d+) \(([0-9a-f]+)\)")
#: llama.cpp's log prefix (minutes.seconds.milliseconds.microseconds since start) on its "model loaded" line
_L_LOADED = re.compile(r"^(\d+)\.(\d\d)\.(\d\d\d)\.\d\d\d \w .*(?:model loaded|listening on)", re.M)
_L_SIGNS = ("llama_model_loader", "load_tensors:", "llama_context:", "llama_kv_cache", "llama_new_context")


@dataclass
class StartupFacts:
    """What one start-up measured. GiB figures are per GPU for GPU engines; ``weights_gib_host`` and
    ``kv_cache_gib`` are the host's for CPU runs (``device`` tells which)."""

    engine: str
    device: str = "gpu"  # gpu | cpu
    engine_version: str | None = None
    kv_cache_tokens: int | None = None
    kv_cache_gib: float | None = None
    weights_gib_per_gpu: float | None = None
    weights_gib_host: float | None = None
    ctx_size: int | None = None
    compute_buffer_gib: float | None = None
    cuda_graph_gib: float | None = None
    compile_s: float | None = None
    weights_load_s: float | None = None
    #: first to last line, when the lines carry timestamps and the log reaches the engine's "serving" line
    load_s: float | None = None
    lines: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _f(text: str) -> float:
    return float(text.replace(",", ""))


def _first(rx: re.Pattern[str], text: str) -> re.Match[str] | None:
    return rx.search(text)


def _last(rx: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(rx.finditer(text))
    return matches[-1] if matches else None


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
        "vllm": sum(text.count(s) for s in _V_SIGNS)
        + 5 * bool(_V_TOKENS.search(text) or _V_AVAIL.search(text)),
        "sglang": sum(text.count(s) for s in _S_SIGNS) + 5 * bool(_S_KV.search(text)),
        "llama.cpp": sum(text.count(s) for s in _L_SIGNS) + 5 * bool(_L_KV_SIZE.search(text)),
    }
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] > 0 else None


def _span_s(stamps: list[str], fmt: str) -> float | None:
    if len(stamps) < 2:
        return None
    try:
        first = datetime.strptime(stamps[0], fmt)
        last = datetime.strptime(stamps[-1], fmt)
    except ValueError:
        return None
    seconds = (last - first).total_seconds()
    return seconds if seconds >= 0 else None


def _parse_vllm(text: str, facts: StartupFacts) -> None:
    if "cpu_worker.py" in text or _V_CPU_KV.search(text) or "CPU KV cache size" in text:
        facts.device = "cpu"
    if m := _V_VERSION.search(text):
        facts.engine_version = m.group(1)
    if m := _last(_V_LOAD, text):
        facts.weights_gib_per_gpu = _f(m.group(1))
        facts.weights_load_s = _f(m.group(2))
        facts.lines["weights"] = m.group(0)
    elif m := _last(_V_LOAD_OLD, text):
        facts.weights_gib_per_gpu = round(_f(m.group(1)) * 1e9 / 2**30, 3)
        facts.lines["weights"] = m.group(0)
    if m := _last(_V_AVAIL, text):
        facts.kv_cache_gib = _f(m.group(1))
        facts.lines["kv_cache_gib"] = m.group(0)
    if m := _last(_V_CPU_KV, text):
        facts.kv_cache_gib = _f(m.group(1))
        facts.lines["kv_cache_gib"] = m.group(0)
    if m := _last(_V_CPU_LOAD, text):
        facts.weights_load_s = _f(m.group(1))
    if m := _last(_V_TOKENS, text):
        facts.kv_cache_tokens = int(_f(m.group(1)))
        facts.lines["kv_cache_tokens"] = m.group(0)
    if m := _last(_V_GRAPH, text):
        facts.cuda_graph_gib = _f(m.group(2))
        facts.lines["cuda_graphs"] = m.group(0)
    if m := _last(_V_COMPILE, text):
        facts.compile_s = _f(m.group(1))
    if facts.device == "cpu" and facts.weights_gib_per_gpu is not None:
        facts.weights_gib_host, facts.weights_gib_per_gpu = facts.weights_gib_per_gpu, None
    if any(s in text for s in _V_READY):
        facts.load_s = _span_s(_V_TS.findall(text), "%m-%d %H:%M:%S")


def _parse_sglang(text: str, facts: StartupFacts) -> None:
    if m := _S_VERSION.search(text):
        facts.engine_version = m.group(1)
    if m := _last(_S_LOAD, text):
        facts.weights_gib_per_gpu = _f(m.group(1))
        facts.lines["weights"] = m.group(0)
    if m := _last(_S_KV, text):
        facts.kv_cache_tokens = int(_f(m.group(1)))
        if m.group(2):
            facts.kv_cache_gib = _f(m.group(2))
        elif m.group(3) and m.group(4):
            facts.kv_cache_gib = round(_f(m.group(3)) + _f(m.group(4)), 3)
        facts.lines["kv_cache_tokens"] = m.group(0)
    elif m := _last(_S_MAX_TOTAL, text):
        facts.kv_cache_tokens = int(_f(m.group(1)))
        facts.lines["kv_cache_tokens"] = m.group(0)
    if m := _last(_S_GRAPH, text):
        facts.compile_s = _f(m.group(1))
        facts.lines["cuda_graphs"] = m.group(0)
    if any(s in text for s in _S_READY):
        facts.load_s = _span_s(_S_TS.findall(text), "%Y-%m-%d %H:%M:%S")


def _parse_llama(text: str, facts: StartupFacts) -> None:
    if m := _L_BUILD.search(text):
        facts.engine_version = m.group(2)
    gpu, host = 0.0, 0.0
    for m in _L_MODEL_BUF.finditer(text):
        mib = _f(m.group(2))
        if m.group(1).upper().startswith(("CPU", "RPC")):
            host += mib
        else:
            gpu = max(gpu, mib)
    if host:
        facts.weights_gib_host = round(host / MIB_PER_GIB, 7)
    if gpu:
        facts.weights_gib_per_gpu = round(gpu / MIB_PER_GIB, 7)
    else:
        facts.device = "cpu"
    sizes = list(_L_KV_SIZE.finditer(text))
    if sizes:
        # one line per cache (a sliding-window model has two: full and SWA); the context is the largest
        facts.kv_cache_gib = round(sum(_f(m.group(1)) for m in sizes) / MIB_PER_GIB, 7)
        facts.kv_cache_tokens = max(int(m.group(2)) for m in sizes)
        facts.lines["kv_cache_tokens"] = "; ".join(m.group(0).strip() for m in sizes)
    else:
        bufs = [_f(m.group(2)) for m in _L_KV_BUF.finditer(text)]
        if bufs:
            facts.kv_cache_gib = round(sum(bufs) / MIB_PER_GIB, 7)
            facts.lines["kv_cache_gib"] = _L_KV_BUF.search(text).group(0).strip()  # type: ignore[union-attr]
    if m := _last(_L_NCTX, text):
        facts.ctx_size = int(m.group(1))
        if facts.kv_cache_tokens is None and facts.kv_cache_gib is not None:
            facts.kv_cache_tokens = facts.ctx_size
    if m := _L_LOADED.search(text):
        facts.load_s = int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1000
    computes = [_f(m.group(2)) for m in _L_COMPUTE.finditer(text)]
    if computes:
        facts.compute_buffer_gib = round(max(computes) / MIB_PER_GIB, 7)


#: What each engine must have printed for the log to count as a completed start-up (the KV cache line).
_REQUIRED = {
    "vllm": "the KV cache lines ('Available KV cache memory' / 'KV cache size: N tokens')",
    "sglang": "the KV cache line ('KV Cache is allocated. #tokens: N')",
    "llama.cpp": "the KV cache line ('llama_kv_cache: size = X MiB (N cells')",
}


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
    want = {"ktransformers": "sglang"}.get(engine or "", engine)
    if want is not None and want != found:
        raise CalibrationError(
            f"{source}: this is a {found} start-up log, but the plan's candidate runs {engine}"
        )
    if found == "vllm" and (m := _V_REFUSED.search(text)):
        raise CalibrationError(f"{source}: vLLM refused to start: {m.group(1)[:200]}")
    facts = StartupFacts(engine=found)
    {"vllm": _parse_vllm, "sglang": _parse_sglang, "llama.cpp": _parse_llama}[found](text, facts)
    if facts.kv_cache_tokens is None and facts.kv_cache_gib is None:
        raise CalibrationError(f"{source}: truncated: the {found} start-up stops before {_REQUIRED[found]}")
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
