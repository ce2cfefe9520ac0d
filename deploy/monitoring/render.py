"""Write the monitoring files for a deployment and check them with promtool.

    >>> from deploy.monitoring.render import write_monitoring
    >>> files = write_monitoring("rendered/monitoring", spec)          # doctest: +SKIP
    >>> sorted(str(p.relative_to("rendered/monitoring")) for p in files)[:2]      # doctest: +SKIP
    ['grafana/dashboards/kimi-deploy-llamacpp.json', 'grafana/provisioning/dashboards/kimi-deploy.yml']

Layout (under ``monitoring/`` beside the launch scripts):

- ``prometheus.yml``: one scrape job (``kimi-deploy``) with a target per node that serves HTTP, labelled
  ``node``, ``engine``, ``model``, ``candidate``; where the engine needs the API key, it is read from
  ``api-key`` (mode 0600, next to prometheus.yml) through ``authorization.credentials_file``, never inlined;
- ``rules/kimi-deploy-<engine>.yml`` and ``rules/kimi-deploy-<engine>.test.yml`` (``promtool test rules``);
- ``grafana/dashboards/kimi-deploy-<engine>.json`` and ``grafana/provisioning/{datasources,dashboards}/``;
- a fleet (``spec.router``): a ``kimi-deploy-router`` job for the router's metrics port, whose per-worker
  series get a ``replica`` label (the worker URL mapped to the replica id), and
  ``rules/kimi-deploy-router{,.test}.yml``;
- GPU nodes (``spec.dcgm``): a ``kimi-deploy-dcgm`` job (dcgm-exporter on each node, port 9400),
  ``rules/kimi-deploy-dcgm{,.test}.yml`` and ``dcgm/kimi-deploy-counters.csv``, the counters file the exporter
  must run with (``dcgm-exporter -f``) for the ECC, clock-event and NVLink fields its default file leaves out.

The key file holds the key only when the caller passes it (``render --secrets-to-env-file``); otherwise it is
written empty, for the operator to fill, and ``prometheus.yml`` says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from deploy.fsutil import atomic_write_text
from deploy.monitoring import dashboards, dcgm, fleet_rules, rules
from deploy.monitoring.engines import metrics_for
from deploy.monitoring.spec import CREDENTIALS_FILE, DCGM_JOB, JOB, ROUTER_JOB, MonitoringSpec, Timings

PROMETHEUS_YML = "prometheus.yml"


def prometheus_config(spec: MonitoringSpec, rule_files: list[str]) -> dict[str, Any]:
    """The prometheus.yml document (rule and credential paths relative to the file itself)."""
    t = spec.timings
    job: dict[str, Any] = {
        "job_name": JOB,
        "metrics_path": "/metrics",
        "scheme": "http",
        "static_configs": [
            {
                "targets": [target.address],
                "labels": {
                    "node": target.node,
                    "engine": spec.engine,
                    "model": spec.served_model_name,
                    "candidate": spec.candidate,
                },
            }
            for target in spec.targets
        ],
    }
    if spec.api_key:
        job["authorization"] = {"type": "Bearer", "credentials_file": CREDENTIALS_FILE}
    return {
        "global": {
            "scrape_interval": Timings.duration(t.scrape_interval_s),
            "evaluation_interval": Timings.duration(t.evaluation_interval_s),
            "external_labels": {"deployment": spec.served_model_name},
        },
        "rule_files": rule_files,
        "scrape_configs": [job, *fleet_jobs(spec)],
    }


def fleet_jobs(spec: MonitoringSpec) -> list[dict[str, Any]]:
    """The router's job (a fleet) and the DCGM exporters' job (GPU nodes); none for one CPU replica."""
    jobs: list[dict[str, Any]] = []
    router = spec.router
    if router is not None:
        jobs.append(
            {
                "job_name": ROUTER_JOB,
                "metrics_path": "/metrics",
                "scheme": "http",
                "static_configs": [
                    {
                        "targets": [router.address],
                        "labels": {
                            "node": router.node,
                            "program": router.program,
                            "model": spec.served_model_name,
                            "candidate": spec.candidate,
                        },
                    }
                ],
                # the router names a worker by its URL; alerts and panels name it by its replica id too
                "metric_relabel_configs": [
                    {
                        "source_labels": ["worker"],
                        "regex": re.escape(url),
                        "target_label": "replica",
                        "replacement": rid,
                    }
                    for rid, url in router.replicas
                ],
            }
        )
    if spec.dcgm:
        jobs.append(
            {
                "job_name": DCGM_JOB,
                "metrics_path": "/metrics",
                "scheme": "http",
                "static_configs": [{"targets": [t.address], "labels": {"node": t.node}} for t in spec.dcgm],
            }
        )
    return jobs


def _yaml(data: Any, header: list[str] | None = None) -> str:
    lines = "".join(f"# {h}\n" for h in header or [])
    return lines + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def _fleet_texts(spec: MonitoringSpec) -> dict[str, tuple[str, int]]:
    """The router's and the GPUs' rule files, their unit tests, and the DCGM counters file."""
    texts: dict[str, tuple[str, int]] = {}
    for part, doc in fleet_rules.rules_documents(spec).items():
        rel = f"rules/kimi-deploy-{part}.yml"
        if part == "router":
            assert spec.router is not None
            header = [f"Rendered by kimi-deploy for {spec.router.program} in front of {spec.engine}."]
        else:
            header = [f"Rendered by kimi-deploy for NVIDIA dcgm-exporter with {dcgm.COUNTERS_FILE}."]
        texts[rel] = (_yaml(doc, header), 0o644)
        texts[rel.replace(".yml", ".test.yml")] = (
            _yaml(
                fleet_rules.rule_tests(spec, part, Path(rel).name),
                [*header, "Unit tests of every alert: promtool test rules <this file>."],
            ),
            0o644,
        )
    if spec.dcgm:
        texts[dcgm.COUNTERS_FILE] = (dcgm.counters_csv(), 0o644)
    return texts


def monitoring_texts(spec: MonitoringSpec, api_key: str | None = None) -> dict[str, tuple[str, int]]:
    """Every monitoring file: relative path -> (text, mode)."""
    family = metrics_for(spec.engine).family.replace(".", "")
    rule_file = f"rules/kimi-deploy-{family}.yml"
    header = [f"Rendered by kimi-deploy for {spec.engine} ({metrics_for(spec.engine).version})."]
    prom_header = [*header, "Run: prometheus --config.file=prometheus.yml (paths below are relative to it)."]
    texts: dict[str, tuple[str, int]] = {}
    if spec.api_key:
        prom_header.append(
            f"{CREDENTIALS_FILE} (mode 0600) holds the API key the engine wants on /metrics; fill it if empty"
        )
        texts[CREDENTIALS_FILE] = (api_key or "", 0o600)
    fleet_texts = _fleet_texts(spec)
    if spec.dcgm:
        prom_header.append(
            f"The {DCGM_JOB} job scrapes dcgm-exporter (port {dcgm.DEFAULT_PORT}) on each GPU node; run "
            f"it with {dcgm.COUNTERS_FILE} for the GPU alerts' fields: dcgm-exporter -f <that file>"
        )
    rule_files = [
        rule_file,
        *(rel for rel in fleet_texts if rel.startswith("rules/") and ".test." not in rel),
    ]
    texts[PROMETHEUS_YML] = (_yaml(prometheus_config(spec, rule_files), prom_header), 0o644)
    texts[rule_file] = (_yaml(rules.rules_document(spec), header), 0o644)
    texts[f"rules/kimi-deploy-{family}.test.yml"] = (
        _yaml(
            rules.rule_tests(spec, Path(rule_file).name),
            [*header, "Unit tests of every alert: promtool test rules <this file>."],
        ),
        0o644,
    )
    texts.update(fleet_texts)
    texts[f"grafana/dashboards/kimi-deploy-{family}.json"] = (
        json.dumps(dashboards.dashboard(spec), indent=2) + "\n",
        0o644,
    )
    for rel, doc in dashboards.provisioning(spec).items():
        texts[f"grafana/provisioning/{rel}"] = (_yaml(doc, header), 0o644)
    return texts


def write_monitoring(out_dir: str | Path, spec: MonitoringSpec, api_key: str | None = None) -> list[Path]:
    """Write the monitoring files under ``out_dir`` (created); returns their paths."""
    out = Path(out_dir)
    return [
        atomic_write_text(out / rel, text, mode=mode)
        for rel, (text, mode) in monitoring_texts(spec, api_key).items()
    ]


__all__ = ["PROMETHEUS_YML", "fleet_jobs", "monitoring_texts", "prometheus_config", "write_monitoring"]
