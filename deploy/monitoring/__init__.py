"""Monitoring: Prometheus scrape config, alert rules and Grafana dashboards per
engine, checked with promtool; reading an engine's ``/metrics``; a local Prometheus for the demo and tests.

- ``engines``: the metric names of each pinned engine (``metrics_for``), with their sources.
- ``spec``: ``MonitoringSpec`` (plain values: engine, targets, SLO, timings) that everything is rendered from.
- ``rules`` (alert rules + ``promtool test rules`` cases), ``dashboards`` (Grafana JSON + provisioning),
  ``render`` (``write_monitoring``: the files under ``monitoring/``), ``promtool`` (``check_dir``).
- ``scrape``: fetch and parse ``/metrics`` into a per-node summary (``kimi-deploy status --watch``).
- ``prometheus``: run a Prometheus server on loopback and query its HTTP API.

It sits before ``serving`` so ``render`` can write the monitoring beside the launch scripts; it takes plain
values, never a plan or render object. Imports only the base.
"""
