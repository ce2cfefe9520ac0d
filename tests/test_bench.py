"""`kimi-deploy bench` without a server: SLO parsing and capacity, AIPerf's export read through its schema,
and the one-line errors for a missing, broken or unknown AIPerf.

The AIPerf venvs made here are FAULT INJECTION: a `python` that fails its import check (a broken install) or
one that writes an export in a schema version this toolkit does not know. A real AIPerf produces neither on
purpose; tests/test_bench_llamacpp.py runs the real one against a real engine.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import pins
from deploy.benchmark.export import ExportError, point_from_export, read_export
from deploy.benchmark.run import build_report, compare_expected, default_sweep, measured_decode_c1
from deploy.benchmark.slo import capacity, misses, parse_slo
from deploy.errors import InputError

FIXTURE = Path(__file__).parent / "fixtures" / "aiperf" / "profile_export_aiperf-llamacpp-c1.json"
KD = [sys.executable, "-m", "deploy"]


def _point(c: int, ttft: float, itl: float, errors: int = 0, ok: int = 4) -> dict:
    return {
        "concurrency": c,
        "requests": ok,
        "errors": errors,
        "ttft_ms": {"p50": ttft / 2, "p95": ttft, "p99": ttft},
        "itl_ms": {"p50": itl / 2, "p95": itl, "p99": itl},
        "e2e_ms": {"p50": 1.0, "p95": 1.0, "p99": 1.0},
        "output_tokens_per_s": 10.0 * c,
        "requests_per_s": 0.1 * c,
    }


def test_slo_parses_units_and_refuses_garbage() -> None:
    assert parse_slo("ttft_p95=2s,itl_p95=80ms,e2e_p99=1.5s") == {
        "ttft_p95": 2000.0,
        "itl_p95": 80.0,
        "e2e_p99": 1500.0,
    }
    for bad in ("ttft=2s", "tpot_p95=1s", "ttft_p95=fast", "itl_p95=0ms"):
        with pytest.raises(InputError):
            parse_slo(bad)


def test_capacity_is_the_highest_point_meeting_the_slo() -> None:
    slo = parse_slo("ttft_p95=2s,itl_p95=100ms")
    points = [_point(1, 500, 50), _point(2, 900, 80), _point(4, 1900, 99), _point(8, 2500, 150)]
    cap = capacity(points, slo)
    assert cap["concurrency"] == 4 and cap["lowest_point_meets"]
    assert cap["output_tokens_per_s"] == 40.0
    assert misses(points[3], slo) == ["ttft_p95 2500.0 ms > 2000.0 ms", "itl_p95 150.0 ms > 100.0 ms"]
    # a point with failed requests never meets it, however fast the rest was
    cap = capacity([_point(1, 10, 1, errors=1), _point(2, 10, 1)], slo)
    assert not cap["lowest_point_meets"] and cap["concurrency"] == 2
    assert capacity([_point(1, 5000, 50)], slo)["concurrency"] is None


def test_the_recorded_export_becomes_a_point() -> None:
    raw = json.loads(FIXTURE.read_text())
    point = read_export(FIXTURE, concurrency=1)
    assert point["schema_version"] == raw["schema_version"] == "1.4"
    assert point["requests"] == 4 and point["errors"] == 0
    for key, metric in (("ttft_ms", "time_to_first_token"), ("itl_ms", "inter_token_latency")):
        for pct in ("p50", "p90", "p99"):
            assert point[key][pct] == pytest.approx(raw[metric][pct], abs=1e-3)
    assert point["e2e_ms"]["p50"] == pytest.approx(raw["request_latency"]["p50"], abs=1e-3)
    # 4 requests x 16 output tokens over the benchmark's duration
    assert point["output_tokens_per_s"] == pytest.approx(4 * 16 / raw["benchmark_duration"]["avg"], rel=0.01)
    # steady decode of one stream: 1000 / median ITL
    assert measured_decode_c1([point]) == pytest.approx(1000 / raw["inter_token_latency"]["p50"], abs=0.01)


@pytest.mark.parametrize("version", ["2.0", "0.9", None, "one"])
def test_an_unknown_schema_version_is_one_line(version: object) -> None:
    raw = json.loads(FIXTURE.read_text())
    raw["schema_version"] = version
    with pytest.raises(ExportError) as exc:
        point_from_export(raw, 1, "x.json")
    assert "schema_version" in str(exc.value) and "\n" not in str(exc.value)


def test_a_renamed_metric_fails_the_schema() -> None:
    raw = json.loads(FIXTURE.read_text())
    raw["time_to_first_token"] = {"avg": 1.0}  # no unit
    with pytest.raises(ExportError, match="time_to_first_token"):
        point_from_export(raw, 1, "x.json")


def test_expected_against_measured() -> None:
    points = [_point(1, 100, 20)]  # ITL p50 10 ms: 100 tok/s
    e = compare_expected({"decode_tokens_per_s_c1": 200.0, "basis": "b"}, points)
    assert e["measured_decode_tokens_per_s_c1"] == 100.0 and e["ratio"] == 0.5
    assert compare_expected(None, points)["ratio"] is None


def test_default_sweeps() -> None:
    demo = default_sweep("demo")
    assert demo["concurrency"] == [1, 2] and demo["requests"]
    real = default_sweep("kimi-k2.5", {"max_num_seqs": 48})
    assert real["concurrency"] == [1, 2, 4, 8, 16, 32, 48]
    assert list(zip(real["isl"], real["osl"], strict=True)) == [(1024, 1024), (8192, 1024)]


def _kd(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KD, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    return errors[0]


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text("{}")
    return d


def _fake_venv(cache: Path, script: str) -> Path:
    """FAULT INJECTION: an AIPerf venv whose python is ``script`` (see the module doc)."""
    py = cache / "venvs" / f"aiperf-{pins.AIPERF_VERSION}" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(script)
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    return py


def test_missing_aiperf_names_the_install_command(tmp_path: Path, tokenizer_dir: Path) -> None:
    out = _kd(
        "bench", "--url", "http://127.0.0.1:9", "--model", "demo", "--tokenizer", str(tokenizer_dir),
        env={"KIMI_DEPLOY_CACHE": str(tmp_path / "empty-cache")},
    )  # fmt: skip
    assert out.returncode == 1
    line = _one_error_line(out)
    assert "not installed" in line and "kimi-deploy engine install aiperf" in line


def test_broken_aiperf_names_the_install_command(tmp_path: Path, tokenizer_dir: Path) -> None:
    cache = tmp_path / "cache"
    _fake_venv(cache, "#!/bin/sh\necho 'ModuleNotFoundError: No module named aiperf' >&2\nexit 1\n")
    out = _kd(
        "bench", "--url", "http://127.0.0.1:9", "--model", "demo", "--tokenizer", str(tokenizer_dir),
        env={"KIMI_DEPLOY_CACHE": str(cache)},
    )  # fmt: skip
    assert out.returncode == 1
    line = _one_error_line(out)
    assert (
        "broken" in line and "No module named aiperf" in line and "kimi-deploy engine install aiperf" in line
    )


def test_an_export_in_an_unknown_schema_fails_with_one_line(tmp_path: Path, tokenizer_dir: Path) -> None:
    cache = tmp_path / "cache"
    raw = json.loads(FIXTURE.read_text())
    raw["schema_version"] = "2.0"
    (tmp_path / "export.json").write_text(json.dumps(raw))
    # the check passes; `-m aiperf profile` copies a schema-2.0 export into --output-artifact-dir
    _fake_venv(
        cache,
        "#!/bin/sh\n"
        'if [ "$1" = "-c" ]; then exit 0; fi\n'
        'while [ $# -gt 0 ]; do if [ "$1" = "--output-artifact-dir" ]; then dir="$2"; fi; shift; done\n'
        f'mkdir -p "$dir" && cp {tmp_path / "export.json"} "$dir/profile_export_aiperf.json"\n',
    )
    out = _kd(
        "bench", "--url", "http://127.0.0.1:9", "--model", "demo", "--tokenizer", str(tokenizer_dir),
        "--concurrency", "1", "--requests", "1",
        env={"KIMI_DEPLOY_CACHE": str(cache)},
    )  # fmt: skip
    assert out.returncode == 1
    line = _one_error_line(out)
    assert "schema_version '2.0'" in line and "1.x" in line


def test_bad_input_is_exit_2(tokenizer_dir: Path) -> None:
    base = ["bench", "--url", "http://127.0.0.1:9", "--model", "demo", "--tokenizer", str(tokenizer_dir)]
    for extra, needle in (
        (["--gate"], "--gate needs --slo"),
        (["--slo", "ttft=1s"], "--slo"),
        (["--concurrency", "1,x"], "--concurrency"),
        (["--requests", "2", "--duration", "5"], "exclusive"),
        (["--plot", "out.svg"], ".png"),
    ):
        out = _kd(*base, *extra)
        assert out.returncode == 2, (extra, out.stderr)
        assert needle in _one_error_line(out)
    out = _kd("bench", "--url", "http://127.0.0.1:9", "--model", "demo")
    assert out.returncode == 2 and "--tokenizer" in _one_error_line(out)


def test_report_without_points_still_renders() -> None:
    from deploy.benchmark.report import render_report
    from deploy.benchmark.run import BenchOptions
    from deploy.benchmark.tokenizer import LocalTokenizer
    from deploy.checking.target import target_from_url

    target = target_from_url("http://127.0.0.1:9", "demo", flavor="llama.cpp")
    opts = BenchOptions(concurrency=[1], slo=parse_slo("ttft_p95=1s"))
    report = build_report(target, opts, LocalTokenizer(Path("/x"), "x"), [], [], None, 0.0)
    text = render_report(report)
    assert "Capacity at the SLO" in text and "none" in text


# ------------------------------------------------------------------ engine metrics during a point


class _MetricsServer:
    """A real HTTP server on loopback whose /metrics text is whatever ``pages`` holds next (the last page
    repeats): the engines' own exposition, replayed, with the values a test needs."""

    def __init__(self, pages: list[str]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.pages = list(pages)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = (server.pages.pop(0) if len(server.pages) > 1 else server.pages[0]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _vllm_page(kv: tuple[float, float], waiting: int, preemptions: int) -> str:
    """vLLM with two data-parallel engine cores: one series per core, labelled as its stat logger does."""
    lines = ["# TYPE vllm:kv_cache_usage_perc gauge"]
    for core, value in enumerate(kv):
        lines.append(f'vllm:kv_cache_usage_perc{{engine="{core}",model_name="kimi-k2.5"}} {value}')
        lines.append(f'vllm:num_requests_waiting{{engine="{core}",model_name="kimi-k2.5"}} {waiting}')
        lines.append(f'vllm:num_requests_running{{engine="{core}",model_name="kimi-k2.5"}} 4')
        lines.append(f'vllm:num_preemptions_total{{engine="{core}",model_name="kimi-k2.5"}} {preemptions}')
    return "\n".join(lines) + "\n"


def test_scraper_reads_the_names_monitoring_uses_and_averages_data_parallel_kv() -> None:
    from deploy.benchmark.scrape import MetricsScraper
    from deploy.monitoring.engines import VLLM

    pages = [_vllm_page((0.5, 0.7), 1, 2), _vllm_page((0.9, 0.5), 3, 5), _vllm_page((0.2, 0.2), 0, 5)]
    server = _MetricsServer(pages)
    try:
        scraper = MetricsScraper(server.url, interval_s=60, engine="vllm")
        for _ in pages:
            scraper.scrape_once()
    finally:
        server.close()
    s = scraper.summary()
    # the mean of the cores' gauges (0.9 and 0.5), never their sum, which could read above 1
    assert s["peak_kv_cache_usage"] == pytest.approx(0.7)
    assert s["peak_queue"] == 6 and s["peak_running"] == 8
    assert s["preemptions"] == (5 - 2) * 2  # the counter's rise over the window, both cores
    assert s["sources"] == {
        "engine": "vllm",
        "kv_cache_usage": VLLM.kv_usage,
        "queue": VLLM.waiting,
        "running": VLLM.running,
        "preemptions": VLLM.preemptions,
    }


def test_scraper_recognises_the_engine_behind_a_url_and_reports_what_it_lacks_as_null() -> None:
    from deploy.benchmark.scrape import MetricsScraper

    page = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\nllamacpp:tokens_predicted_total 9\n"
    server = _MetricsServer([page])
    try:
        scraper = MetricsScraper(server.url, interval_s=60, engine="openai")
        scraper.scrape_once()
        other = _MetricsServer(["# an exporter that is not an engine\nprocess_cpu_seconds_total 3\n"])
        unknown = MetricsScraper(other.url, interval_s=60)
        unknown.scrape_once()
        other.close()
    finally:
        server.close()
    s = scraper.summary()
    assert s["sources"]["engine"] == "llama.cpp" and s["peak_running"] == 2 and s["peak_queue"] == 1
    assert s["peak_kv_cache_usage"] is None and s["preemptions"] is None
    assert s["sources"]["kv_cache_usage"] is None and s["sources"]["preemptions"] is None
    assert unknown.summary()["available"] is False and "no metric of vLLM" in unknown.summary()["reason"]


def test_through_a_router_each_replicas_own_metrics_are_read_and_named() -> None:
    """A router serves no engine metrics: the scrapers read each replica's, the peaks are the highest any
    replica reached, preemptions the sum, and a replica that does not answer is named, not hidden."""
    from deploy.benchmark.scrape import MetricsScraper, ReplicaScrapers, scraper_for

    busy = _MetricsServer([_vllm_page((0.5, 0.5), 0, 1), _vllm_page((0.9, 0.7), 5, 4)])
    idle = _MetricsServer([_vllm_page((0.1, 0.1), 0, 0), _vllm_page((0.2, 0.2), 1, 0)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens here once the socket closes
    assert isinstance(scraper_for(busy.url, {}, "vllm"), MetricsScraper)
    try:
        fleet = scraper_for("http://router:8001", {}, "vllm", [("0", busy.url), ("1", idle.url), ("2", gone)])
        assert isinstance(fleet, ReplicaScrapers)
        for _ in range(2):
            for scraper in fleet.scrapers.values():
                scraper.scrape_once()
    finally:
        busy.close()
        idle.close()
    s = fleet.summary()
    assert s["available"] is True
    assert s["peak_kv_cache_usage"] == pytest.approx(0.8)  # replica 0's second page, its cores' mean
    assert s["peak_queue"] == 10 and s["peak_running"] == 8  # per replica: 2 cores x 5 waiting, 2 x 4 running
    assert s["preemptions"] == (4 - 1) * 2 + 0
    assert s["sources"]["replicas"] == "2 of 3 replicas' own /metrics"
    assert s["replicas"]["1"]["peak_queue"] == 2
    assert s["replicas"]["2"]["available"] is False and gone in s["replicas"]["2"]["reason"]


def test_a_fleet_plan_benches_the_router_and_scrapes_every_replica(tmp_path: Path) -> None:
    from deploy.benchmark.run import replica_endpoints
    from deploy.cli import main
    from deploy.planning.contract import load_plan

    for replicas in ("1", "2"):
        out = tmp_path / f"plan-{replicas}.json"
        with pytest.raises(SystemExit) as done:
            main(["plan", "--hardware", "ci-24g", "--model", "demo", "--replicas", replicas, "-o", str(out)])
        assert done.value.code in (0, None)
    assert replica_endpoints(load_plan(tmp_path / "plan-1.json")) == []
    fleet = load_plan(tmp_path / "plan-2.json").fleet
    assert replica_endpoints(load_plan(tmp_path / "plan-2.json")) == [(r.id, r.url) for r in fleet.replicas]
    assert len({url for _, url in replica_endpoints(load_plan(tmp_path / "plan-2.json"))}) == 2


@pytest.mark.parametrize(
    ("flavor", "lifted"),
    [("llama.cpp", True), ("vllm", False), ("sglang", False)],
)
def test_a_fixed_length_request_replaces_the_model_stop_strings_only_where_the_server_applies_them(
    flavor: str, lifted: bool
) -> None:
    """The demo's turn markers are llama-server --reverse-prompt stops, which ignore_eos does not lift and an
    empty ``stop`` does not clear: the request names one string no answer holds. Engines that apply no stop
    strings of their own get no ``stop`` field (their own defaults stand)."""
    from deploy.benchmark.run import NO_STOP, BenchOptions, _extra_body
    from deploy.checking.target import target_from_url

    target = target_from_url("http://127.0.0.1:9", "demo", flavor=flavor, catalog_model="demo")
    assert target.stop, "the demo catalog entry names its turn markers"
    body = _extra_body(target, BenchOptions(concurrency=[1]))
    assert body["ignore_eos"] is True
    assert body.get("stop") == ([NO_STOP] if lifted else None)
    assert "\x00" in NO_STOP and not any(NO_STOP in s or s in NO_STOP for s in target.stop)
