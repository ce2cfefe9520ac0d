"""Monitoring files (deploy.monitoring): promtool on every profile, alert unit tests, scrape config, secrets.

Plans come from the real planner on every profile in hardware/ (the demo model where Kimi does not fit); the
configs are checked by the real ``promtool`` (Debian's ``prometheus`` package, installed by
scripts/ci-deps.sh). Metric names are compared with the pinned engines' own sources where the parser venv has
them (vLLM and SGLang; llama.cpp's in the end-to-end test against the real llama-server).
"""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from deploy import constants, pins
from deploy.errors import InputError
from deploy.hardware.profiles import available_profiles, load_profile
from deploy.monitoring import dashboards, engines, promtool, rules
from deploy.monitoring.render import monitoring_texts, write_monitoring
from deploy.monitoring.spec import JOB, MonitoringSpec, ScrapeTarget, Timings
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving import render
from deploy.serving.argv import Endpoint, node_commands
from deploy.serving.replicas import Replica

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: run scripts/ci-deps.sh (Debian prometheus)"
)


def _cases() -> list[tuple[str, str]]:
    """(profile, engine) for the first runnable candidate of each engine on each profile."""
    out = []
    for profile in available_profiles():
        p = plan(load_profile(profile))
        if not any(c.runs for c in p.candidates):
            p = plan(load_profile(profile), PlanRequest(model="demo"))
        seen: set[str] = set()
        for c in p.candidates:
            if c.runs and c.engine not in seen:
                seen.add(c.engine)
                out.append((profile, c.engine))
    return out


CASES = _cases()


def _spec(profile: str, engine: str, ep: Endpoint | None = None, **opts) -> tuple[MonitoringSpec, object]:
    p = plan(load_profile(profile))
    if not any(c.runs for c in p.candidates):
        p = plan(load_profile(profile), PlanRequest(model="demo"))
    cand = next(c for c in p.candidates if c.runs and c.engine == engine)
    model = cand.weights.local_dir if cand.engine != "llama.cpp" else "/m/x-00001-of-00002.gguf"
    ep = ep or Endpoint()
    nodes = node_commands(p, cand, model, ep)
    port = int(ep.port or cand.engine_args.get("port") or 8000)
    return render.monitoring_spec(
        p, cand, [Replica(None, cand, ep, port, nodes)], ep, render.RenderOptions(**opts)
    ), (p, cand, nodes)


def test_every_profile_has_a_case() -> None:
    assert {profile for profile, _ in CASES} == set(available_profiles())
    assert {engine for _, engine in CASES} == {"vllm", "sglang", "ktransformers", "llama.cpp"}


@needs_promtool
@pytest.mark.parametrize(("profile", "engine"), CASES, ids=[f"{p}-{e}" for p, e in CASES])
def test_promtool_accepts_config_and_rules_for_every_profile(
    tmp_path: Path, profile: str, engine: str
) -> None:
    spec, _ = _spec(profile, engine)
    write_monitoring(tmp_path, spec)
    results = promtool.check_dir(tmp_path, unit_tests=False)
    # the engine's rules, and on GPU plans the DCGM exporter's (tests/test_monitoring_fleet.py)
    assert [r.command for r in results] == ["check config", "check rules"] + ["check rules"] * bool(spec.dcgm)
    assert all(r.ok for r in results), [r.summary() for r in results]


@needs_promtool
@pytest.mark.parametrize("engine", ["vllm", "sglang", "ktransformers", "llama.cpp"])
def test_every_alert_fires_and_stays_quiet_in_promtool_unit_tests(tmp_path: Path, engine: str) -> None:
    profile = next(p for p, e in CASES if e == engine)
    spec, _ = _spec(profile, engine)
    write_monitoring(tmp_path, spec)
    # GPU plans also get the DCGM exporter's rules (tests/test_monitoring_fleet.py); this is the engine's
    test_file = (
        tmp_path / "rules" / f"kimi-deploy-{engines.metrics_for(engine).family.replace('.', '')}.test.yml"
    )
    doc = yaml.safe_load(test_file.read_text())
    alerts = [r["alert"] for r in rules.alert_rules(spec)]
    tested = [c["alert_rule_test"][0] for c in doc["tests"]]
    # every alert has a firing case and a quiet case
    assert sorted(t["alertname"] for t in tested if t["exp_alerts"]) == sorted(alerts)
    assert sorted(t["alertname"] for t in tested if not t["exp_alerts"]) == sorted(alerts)
    result = promtool.run(["test", "rules"], test_file)
    assert result.ok, result.output


@needs_promtool
def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: a KV threshold above the test's 95% and a TTFT SLO at 10x stop the alerts."""
    spec, _ = _spec("h200x8", "vllm")
    write_monitoring(tmp_path, spec)
    rule_file = tmp_path / "rules" / "kimi-deploy-vllm.yml"
    text = rule_file.read_text()
    slo = f"> {spec.ttft_p95_slo_s:g}\n"
    assert "> 0.9\n" in text and slo in text
    broken = text.replace("> 0.9\n", "> 0.99\n").replace(slo, f"> {spec.ttft_p95_slo_s * 10:g}\n")
    rule_file.write_text(broken)
    result = promtool.run(["test", "rules"], rule_file.with_name(rule_file.stem + ".test.yml"))
    assert not result.ok
    assert "alertname: KimiKVCacheHigh" in result.output and "alertname: KimiTTFTHigh" in result.output
    assert "alertname: KimiEngineDown" not in result.output


@needs_promtool
@pytest.mark.parametrize("engine", ["vllm", "sglang", "llama.cpp"])
def test_dashboard_queries_are_valid_promql(tmp_path: Path, engine: str) -> None:
    """Each panel query, with Grafana's variables substituted, passes promtool as a recording rule."""
    profile = next(p for p, e in CASES if e == engine)
    spec, _ = _spec(profile, engine)
    board = dashboards.dashboard(spec)
    exprs = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    assert len(exprs) == len(dashboards.queries(spec)) >= 7
    titles = " ".join(p["title"] for p in board["panels"])
    for word in ("tokens/s", "KV-cache", "running / waiting", "Engine up"):
        assert word in titles
    doc = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"kimi:q{i}", "expr": e.replace(dashboards.RATE, "1m").replace("$node", ".*")}
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    f = tmp_path / "queries.yml"
    f.write_text(yaml.safe_dump(doc))
    result = promtool.run(["check", "rules"], f)
    assert result.ok, result.output


def test_scrape_config_two_nodes_wildcard_bind_reads_the_key_from_a_file(tmp_path: Path, monkeypatch) -> None:
    """h100x8-2nodes bound on 0.0.0.0: one target (the head serves HTTP, workers are headless), at the head's
    address from the profile; the API key comes from ``api-key`` (0600), never inlined."""
    canary = "canary-monitoring-key-93b1"
    monkeypatch.setenv("KIMI_API_KEY", canary)
    p = plan(load_profile("h100x8-2nodes"))
    cand = next(c for c in p.candidates if c.runs and c.engine == "vllm" and c.nodes == 2)
    ep = Endpoint(bind="0.0.0.0", api_key_env="KIMI_API_KEY")
    nodes = node_commands(p, cand, cand.weights.local_dir, ep)
    port = int(cand.engine_args["port"])
    spec = render.monitoring_spec(p, cand, [Replica(None, cand, ep, port, nodes)], ep, render.RenderOptions())
    head = p.hardware["nodes"][0]
    assert spec.targets == [ScrapeTarget(head["name"], f"{head['address']}:{port}")]
    assert spec.api_key
    texts = monitoring_texts(spec)  # no key passed: the file is written empty for the operator to fill
    assert texts["api-key"] == ("", 0o600)
    write_monitoring(tmp_path, spec, api_key=canary)
    config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
    job, *others = config["scrape_configs"]
    assert [j["job_name"] for j in others] == ["kimi-deploy-dcgm"]  # GPU nodes: the DCGM exporters
    assert job["job_name"] == JOB
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "api-key"}
    assert job["static_configs"][0]["labels"]["node"] == head["name"]
    assert stat.S_IMODE((tmp_path / "api-key").stat().st_mode) == 0o600
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != "api-key":
            assert canary not in f.read_text(), f
    if shutil.which("promtool"):
        assert promtool.run(["check", "config"], tmp_path / "prometheus.yml").ok


def test_loopback_bind_scrapes_loopback_without_a_key() -> None:
    spec, (p, cand, _) = _spec("ci-24g", "llama.cpp")
    assert [t.address for t in spec.targets] == [f"127.0.0.1:{cand.engine_args['port']}"]
    assert not spec.api_key
    assert spec.slots == int(cand.engine_args["parallel"])


def test_slo_comes_from_the_option_then_the_plan_then_the_default() -> None:
    spec, (p, cand, nodes) = _spec("h200x8", "sglang", ttft_p95_slo_s=0.75)
    assert spec.ttft_p95_slo_s == 0.75
    assert "> 0.75" in next(r["expr"] for r in rules.alert_rules(spec) if r["alert"] == "KimiTTFTHigh")
    # `plan --ttft-slo` records it in plan.json's request; render takes it from there
    p = plan(load_profile("h200x8"), PlanRequest(ttft_p95_slo_s=1.5))
    assert p.request["ttft_p95_slo_s"] == 1.5
    cand = next(c for c in p.candidates if c.runs and c.engine == "sglang")
    spec = render.monitoring_spec(
        p, cand, [Replica(None, cand, Endpoint(), 30000, nodes)], Endpoint(), render.RenderOptions()
    )
    assert spec.ttft_p95_slo_s == 1.5
    with pytest.raises(InputError, match="--ttft-slo"):
        plan(load_profile("h200x8"), PlanRequest(ttft_p95_slo_s=float("nan")))


def test_short_timings_reach_the_rules_and_the_config() -> None:
    t = Timings(scrape_interval_s=1, evaluation_interval_s=1, not_ready_for_s=2, down_for_s=4, window_s=10)
    spec, _ = _spec("ci-24g", "llama.cpp", monitoring_timings=t)
    texts = monitoring_texts(spec)
    config = yaml.safe_load(texts["prometheus.yml"][0])
    assert config["global"]["scrape_interval"] == "1s"
    down = next(r for r in rules.alert_rules(spec) if r["alert"] == "KimiEngineDown")
    assert down["for"] == "4s"
    with pytest.raises(Exception, match="window_s"):
        Timings(scrape_interval_s=10, window_s=15)


def test_llama_cpp_has_no_rule_for_what_it_does_not_expose() -> None:
    spec, _ = _spec("ci-24g", "llama.cpp")
    names = {r["alert"] for r in rules.alert_rules(spec)}
    assert "KimiTTFTHigh" not in names and "KimiErrorRate" not in names and "KimiPreemptions" not in names
    assert {"KimiEngineDown", "KimiKVCacheHigh", "KimiRequestsQueueing", "KimiGenerationStalled"} <= names
    assert set(engines.LLAMA_CPP.missing) == {"ttft", "preemptions", "errors"}


def _parser_site_packages() -> Path | None:
    root = constants.CACHE_DIR / "venvs" / f"parsers-vllm{pins.VLLM_VERSION}-sglang{pins.SGLANG_VERSION}"
    found = sorted(root.glob("lib/python3*/site-packages"))
    return found[0] if found else None


def _declared(source: str, name: str) -> bool:
    """prometheus_client adds ``_total`` to a Counter's name; a histogram's series add ``_bucket``."""
    base = re.sub(r"_total$", "", name)
    return f'"{name}"' in source or f'"{base}"' in source


@pytest.mark.parametrize(
    ("family", "files"),
    [
        ("vllm", ["vllm/v1/metrics/loggers.py"]),
        (
            "sglang",
            [
                "sglang/srt/observability/metrics_collector.py",
                "sglang/srt/observability/http_request_metrics.py",
            ],
        ),
    ],
)
def test_metric_names_are_declared_in_the_pinned_engine_source(family: str, files: list[str]) -> None:
    site = _parser_site_packages()
    if site is None:
        pytest.skip("the parser venv (kimi-deploy engine install parsers) is not in the cache")
    source = "\n".join((site / f).read_text() for f in files)
    m = engines.metrics_for(family)
    names = [m.running, m.waiting, m.generation_tokens, m.prompt_tokens, m.kv_usage, m.preemptions]
    names += [m.ttft_histogram, m.itl_histogram]
    if m.errors and m.errors.metric.startswith(f"{family}:"):
        names.append(m.errors.metric)
    for name in names:
        assert name and _declared(source, name), f"{name} is not declared in {files}"
    # a name that is not there is reported as missing (the check can fail)
    assert not _declared(source, f"{family}:gpu_cache_usage_perc")


def test_dashboard_json_is_provisioned_from_a_file(tmp_path: Path) -> None:
    spec, _ = _spec("h200x8", "vllm")
    write_monitoring(tmp_path, spec)
    (board,) = (tmp_path / "grafana" / "dashboards").glob("*.json")
    doc = json.loads(board.read_text())
    prov = yaml.safe_load((tmp_path / "grafana/provisioning/dashboards/kimi-deploy.yml").read_text())
    assert prov["providers"][0]["type"] == "file"
    ds = yaml.safe_load((tmp_path / "grafana/provisioning/datasources/kimi-deploy.yml").read_text())
    uid = ds["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in doc["panels"]} == {uid}
