"""Monitoring of a fleet and of GPU nodes: the router's scrape job and alerts, the DCGM exporters' job, alerts
and counters file, the dashboard's fleet row; all checked by the real ``promtool``.

Plans come from the real planner on the profiles in hardware/; the fleet section is the manifest's (the
contract of issue 21: ``fleet.router.metrics`` is the router's metrics ``host:port``, replica nodes are named
``<replica>-<node>``). The router's metric names and encodings are checked against a live vllm-router in
tests/test_monitoring_fleet_e2e.py; the DCGM names against dcgm-exporter's own counters file in
deploy/monitoring/dcgm.py (no GPU here: the GPU alerts are tested on promtool's synthetic series only).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from deploy.engines import registry as engines
from deploy.errors import InputError
from deploy.hardware.profiles import load_profile
from deploy.monitoring import dashboards, dcgm, fleet_rules, promtool
from deploy.monitoring.render import monitoring_texts, write_monitoring
from deploy.monitoring.spec import (
    DCGM_JOB,
    JOB,
    ROUTER_JOB,
    MonitoringSpec,
    RouterTarget,
    ScrapeTarget,
    dcgm_targets,
    fleet_hosts,
)
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.routers import registry as routers
from deploy.serving import render
from deploy.serving.argv import Endpoint, node_commands
from deploy.serving.replicas import Replica

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: run scripts/ci-deps.sh (Debian prometheus)"
)
#: the rules and panels are checked for the router most fleets get (llama.cpp's, SGLang's, KTransformers')
ROUTER = routers.for_engine(engines.get("llama.cpp"))


def _fleet(replicas: list[tuple[str, list[str], str]], node: str, metrics: str) -> dict:
    """A manifest's ``fleet`` section: (id, profile nodes, url) per replica."""
    return {
        "router": {"name": "router", "program": ROUTER.name, "version": ROUTER.version, "node": node,
                   "bind": "127.0.0.1", "port": 8000, "url": "http://127.0.0.1:8000", "metrics": metrics},
        "replicas": [
            {"id": rid, "nodes": [f"{rid}-{n}" for n in nodes], "head": f"{rid}-{nodes[0]}", "url": url}
            for rid, nodes, url in replicas
        ],
    }  # fmt: skip


def _spec(profile: str, engine: str, fleet: dict | None = None, nodes: int | None = None, **opts):
    p = plan(load_profile(profile))
    if not any(c.runs and c.engine == engine for c in p.candidates):
        p = plan(load_profile(profile), PlanRequest(model="demo"))
    cand = next(c for c in p.candidates if c.runs and c.engine == engine and nodes in (None, c.nodes))
    model = cand.weights.local_dir if cand.engine != "llama.cpp" else "/m/x-00001-of-00002.gguf"
    ep = Endpoint()
    cmds = node_commands(p, cand, model, ep)
    port = int(cand.engine_args.get("port") or 8000)
    opts_ = render.RenderOptions(**opts)
    return render.monitoring_spec(p, cand, [Replica(None, cand, ep, port, cmds)], ep, opts_, fleet=fleet), (
        p,
        cand,
        cmds,
        port,
    )


def _hardware_nodes(profile: str) -> list[dict]:
    return plan(load_profile(profile)).hardware["nodes"]


CPU_FLEET = _fleet(
    [("r0", ["ci"], "http://127.0.0.1:8001"), ("r1", ["ci"], "http://127.0.0.1:8002")],
    "ci",
    "127.0.0.1:29000",
)


def test_without_a_fleet_the_spec_and_files_are_as_before() -> None:
    """The old call (no fleet argument) on a CPU plan: no router, no DCGM, one scrape job, the same files."""
    spec, (p, cand, cmds, port) = _spec("ci-24g", "llama.cpp")
    assert spec.router is None and spec.dcgm == ()
    old = render.monitoring_spec(
        p, cand, [Replica(None, cand, Endpoint(), port, cmds)], Endpoint(), render.RenderOptions()
    )
    assert old == spec
    texts = monitoring_texts(spec)
    config = yaml.safe_load(texts["prometheus.yml"][0])
    assert [j["job_name"] for j in config["scrape_configs"]] == [JOB]
    assert config["rule_files"] == ["rules/kimi-deploy-llamacpp.yml"]
    assert not [rel for rel in texts if "router" in rel or "dcgm" in rel]
    assert "Fleet" not in json.dumps(dashboards.dashboard(spec))


def test_the_router_job_scrapes_the_manifest_metrics_address_and_names_replicas() -> None:
    spec, _ = _spec("ci-24g", "llama.cpp", fleet=CPU_FLEET)
    assert spec.router == RouterTarget(
        ROUTER.name,
        "127.0.0.1:29000",
        "ci",
        (("r0", "http://127.0.0.1:8001"), ("r1", "http://127.0.0.1:8002")),
    )
    assert spec.dcgm == ()  # a CPU plan
    config = yaml.safe_load(monitoring_texts(spec)["prometheus.yml"][0])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {JOB, ROUTER_JOB}
    router = jobs[ROUTER_JOB]
    assert router["static_configs"] == [
        {
            "targets": ["127.0.0.1:29000"],
            "labels": {"node": "ci", "program": ROUTER.name, "model": spec.served_model_name,
                       "candidate": spec.candidate},
        }
    ]  # fmt: skip
    # Prometheus anchors relabel regexes: each worker URL maps to exactly its replica id
    relabel = router["metric_relabel_configs"]
    assert [(r["source_labels"], r["target_label"], r["replacement"]) for r in relabel] == [
        (["worker"], "replica", "r0"),
        (["worker"], "replica", "r1"),
    ]
    assert re.fullmatch(relabel[0]["regex"], "http://127.0.0.1:8001")
    assert not re.fullmatch(relabel[0]["regex"], "http://127.0.0.1:8002")
    assert not re.fullmatch(relabel[0]["regex"], "http://127a0.0.1:8001")  # the dots are literal
    assert "authorization" not in router  # the router's metrics listener takes no key
    assert config["rule_files"] == ["rules/kimi-deploy-llamacpp.yml", "rules/kimi-deploy-router.yml"]


def test_dcgm_targets_are_the_gpu_nodes_the_deployment_uses() -> None:
    addresses = {n["name"]: n["address"] for n in _hardware_nodes("h100x8-2nodes")}
    # one instance over both nodes: both are scraped, at their addresses, on dcgm-exporter's port
    spec, (_, cand, cmds, _) = _spec("h100x8-2nodes", "vllm", nodes=2)
    assert [t.node for t in spec.dcgm] == [c.node for c in cmds] == list(addresses)
    assert [t.address for t in spec.dcgm] == [f"{addresses[n]}:{dcgm.DEFAULT_PORT}" for n in addresses]
    # one instance on the head only (llama.cpp on its GPUs): the idle node's GPUs are not part of it
    spec1, (_, _, cmds1, _) = _spec("h100x8-2nodes", "llama.cpp", nodes=1)
    assert [t.node for t in spec1.dcgm] == [cmds1[0].node]
    # a fleet of two one-node replicas: the manifest's node names are <replica>-<node>
    head, worker = list(addresses)
    fleet = _fleet(
        [
            ("r0", [head], f"http://{addresses[head]}:8000"),
            ("r1", [worker], f"http://{addresses[worker]}:8000"),
        ],
        head,
        f"{addresses[head]}:29000",
    )
    assert fleet_hosts(fleet) == [head, worker]
    spec2, _ = _spec("h100x8-2nodes", "llama.cpp", fleet=fleet, nodes=1)
    assert [t.node for t in spec2.dcgm] == [head, worker]
    config = yaml.safe_load(monitoring_texts(spec2)["prometheus.yml"][0])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {JOB, ROUTER_JOB, DCGM_JOB}
    assert [c["targets"] for c in jobs[DCGM_JOB]["static_configs"]] == [[t.address] for t in spec2.dcgm]


def test_dcgm_targets_skip_cpu_nodes_and_bracket_ipv6() -> None:
    hw = {
        "nodes": [
            {"name": "g", "address": "fd00::5", "gpus": {"count": 8}},
            {"name": "c", "address": "10.0.0.9", "gpus": {"model": "none", "count": 0}},
            {"name": "local", "gpus": {"count": 1}},
        ]
    }
    assert dcgm_targets(hw) == (ScrapeTarget("g", "[fd00::5]:9400"), ScrapeTarget("local", "127.0.0.1:9400"))
    assert dcgm_targets(hw, ["c"]) == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"address": "127.0.0.1"}, "expected host:port"),
        ({"address": "127.0.0.1:29000; rm -rf /"}, "expected host:port"),
        ({"node": "bad node"}, "label value"),
        ({"replicas": (("r0", 'http://x:1"} or vector(1) #'),)}, "replica URL"),
        ({"replicas": (("r 0", "http://x:1"),)}, "label value"),
    ],
)
def test_a_bad_router_target_is_one_clear_error(kwargs: dict, message: str) -> None:
    args = {"program": ROUTER.name, "address": "127.0.0.1:29000", **kwargs}
    with pytest.raises(InputError, match=message):
        RouterTarget(**args)


def test_an_unknown_router_program_is_one_clear_error() -> None:
    spec = MonitoringSpec("llama.cpp", "demo", "c0", [ScrapeTarget("r0-ci", "127.0.0.1:8001")],
                          router=RouterTarget("not-a-router", "127.0.0.1:29000"))  # fmt: skip
    with pytest.raises(InputError, match="router 'not-a-router' is not known"):
        monitoring_texts(spec)


def _gpu_fleet_spec() -> MonitoringSpec:
    (head, ha), (worker, wa) = [(n["name"], n["address"]) for n in _hardware_nodes("h100x8-2nodes")]
    fleet = _fleet(
        [("r0", [head], f"http://{ha}:8000"), ("r1", [worker], f"http://{wa}:8000")], head, f"{ha}:29000"
    )
    spec, _ = _spec("h100x8-2nodes", "llama.cpp", fleet=fleet, nodes=1)
    return spec


@needs_promtool
def test_every_router_and_gpu_alert_fires_and_stays_quiet_in_promtool(tmp_path: Path) -> None:
    spec = _gpu_fleet_spec()
    write_monitoring(tmp_path, spec)
    results = promtool.check_dir(tmp_path)
    assert all(r.ok for r in results), [r.summary() for r in results]
    assert sorted(r.file for r in results if r.command == "test rules") == [
        "kimi-deploy-dcgm.test.yml",
        "kimi-deploy-llamacpp.test.yml",
        "kimi-deploy-router.test.yml",
    ]
    for part, rules in (("router", fleet_rules.router_rules(spec)), ("dcgm", fleet_rules.dcgm_rules(spec))):
        doc = yaml.safe_load((tmp_path / "rules" / f"kimi-deploy-{part}.test.yml").read_text())
        tested = [c["alert_rule_test"][0] for c in doc["tests"]]
        names = sorted(r["alert"] for r in rules)
        assert sorted(t["alertname"] for t in tested if t["exp_alerts"]) == names
        assert sorted(t["alertname"] for t in tested if not t["exp_alerts"]) == names
        for rule in rules:
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical")
    router_alerts = {r["alert"]: r for r in fleet_rules.router_rules(spec)}
    assert router_alerts["KimiNoHealthyReplicas"]["labels"]["severity"] == "critical"
    assert ROUTER.metrics["worker_health"] in router_alerts["KimiReplicaUnhealthy"]["expr"]
    assert ROUTER.metrics["cb_state"] in router_alerts["KimiCircuitBreakerOpen"]["expr"]


@needs_promtool
@pytest.mark.parametrize(
    ("part", "old", "new", "broken"),
    [
        # a thermal mask read at the wrong bits: the hardware-thermal GPU stays quiet
        ("dcgm", "/ 32) % 4", "/ 256) % 4", "KimiGpuThermalThrottling"),
        # a mask four bits wide (power brake and display clocks taken for thermal): the quiet GPU fires
        ("dcgm", "/ 32) % 4 > 0", "/ 32) % 16 > 0", "KimiGpuThermalThrottling"),
        # half-open taken for open: the probing breaker fires
        ("router", "== 1\n", ">= 1\n", "KimiCircuitBreakerOpen"),
        # active_workers instead of the health sum: the router keeps counting unhealthy workers in it
        ("router", f"({ROUTER.metrics['worker_health']}", f"({ROUTER.metrics['active_workers']}",
         "KimiNoHealthyReplicas"),
    ],
)  # fmt: skip
def test_a_broken_fleet_rule_fails_its_unit_test(
    tmp_path: Path, part: str, old: str, new: str, broken: str
) -> None:
    write_monitoring(tmp_path, _gpu_fleet_spec())
    rule_file = tmp_path / "rules" / f"kimi-deploy-{part}.yml"
    text = rule_file.read_text()
    assert old in text
    rule_file.write_text(text.replace(old, new))
    result = promtool.run(["test", "rules"], rule_file.with_name(rule_file.stem + ".test.yml"))
    assert not result.ok
    failed = set(re.findall(r"alertname: (\w+)", result.output))
    assert failed == {broken}, result.output[-2000:]


def test_the_counters_file_collects_every_field_the_gpu_rules_read() -> None:
    spec = _gpu_fleet_spec()
    text = dcgm.counters_csv()
    collected = {
        line.split(",")[0].strip() for line in text.splitlines() if line and not line.startswith("#")
    }
    read = {
        name for rule in fleet_rules.dcgm_rules(spec) for name in re.findall(r"DCGM_FI_\w+", rule["expr"])
    }
    assert read - {dcgm.CLOCK_THROTTLE_REASONS_LEGACY} <= collected
    assert dcgm.CLOCK_THROTTLE_REASONS_LEGACY not in collected  # one field id (112), collected once
    # the fields that dcgm-exporter's default file leaves commented out are the reason the file ships
    assert set(dcgm.ALERT_FIELDS) - set(dcgm.DEFAULT_COLLECTED) == {
        dcgm.ECC_DBE,
        dcgm.CLOCK_EVENT_REASONS,
        *dcgm.NVLINK_ERRORS,
    }
    for line in text.splitlines():
        if line and not line.startswith("#"):
            field, kind, _help = (s.strip() for s in line.split(",", 2))
            assert re.fullmatch(r"DCGM_FI_[A-Z0-9_]+", field) and kind in ("gauge", "counter", "label"), line
    texts = monitoring_texts(spec)
    assert texts[dcgm.COUNTERS_FILE] == (text, 0o644)
    assert dcgm.COUNTERS_FILE in texts["prometheus.yml"][0]  # the header says how to run the exporter


@needs_promtool
def test_the_dashboard_has_a_fleet_row_with_valid_queries(tmp_path: Path) -> None:
    spec, _ = _spec("ci-24g", "llama.cpp", fleet=CPU_FLEET)
    board = dashboards.dashboard(spec)
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert len(rows) == 1 and rows[0]["title"].startswith("Fleet")
    fleet = [p for p in board["panels"] if p["gridPos"]["y"] > rows[0]["gridPos"]["y"]]
    titles = " | ".join(p["title"] for p in fleet)
    for word in ("Healthy replicas", "Replica health", "Circuit breaker", "requests/s", "latency"):
        assert word in titles
    exprs = " ".join(t["expr"] for p in fleet for t in p["targets"])
    for key in ("worker_health", "cb_state", "active_workers", "requests_total", "processed_requests"):
        assert ROUTER.metrics[key] in exprs
    assert f"{ROUTER.metrics['generate_duration']}_bucket" in exprs
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    assert {p["datasource"]["uid"] for p in board["panels"] if p["type"] != "row"} == {
        "kimi-deploy-prometheus"
    }
    # every fleet query is valid PromQL (as a recording rule, Grafana's variables substituted)
    doc = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"kimi:q{i}", "expr": e.replace(dashboards.RATE, "1m").replace("$node", ".*")}
                    for i, (_title, e) in enumerate(dashboards.queries(spec))
                ],
            }
        ]
    }
    f = tmp_path / "queries.yml"
    f.write_text(yaml.safe_dump(doc))
    result = promtool.run(["check", "rules"], f)
    assert result.ok, result.output
