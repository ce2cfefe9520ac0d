"""`kimi-deploy calibrate`: record what a real start measured against what its plan predicted.

kimi-deploy calibrate import journal.log --plan plan.json   # a server started outside the toolkit
kimi-deploy calibrate import bench.json --plan plan.json    # `bench` results of that plan's candidate
kimi-deploy calibrate list [--json]
"""

from __future__ import annotations

import json
from typing import Any

import click

from deploy.calibration.logs import read_startup_log
from deploy.calibration.store import add_record, load_records, store_path
from deploy.planning.calibrated import record_from_start
from deploy.planning.contract import load_plan


@click.group("calibrate")
def calibrate_group() -> None:
    """Measured starts (the calibration store under KIMI_DEPLOY_CACHE): `plan` applies matching ones."""


@calibrate_group.command("import")
@click.argument("logfile", metavar="LOGFILE")
@click.option("--plan", "plan_path", required=True, metavar="PLAN", help="The plan.json the server ran.")
@click.option("--candidate", metavar="ID", help="The candidate it ran (default: the plan's chosen one).")
def import_command(logfile: str, plan_path: str, candidate: str | None) -> None:
    """Add a record from a start-up log saved from `journalctl -u ...` or a container's output, or the
    serving points of a `bench -o bench.json` report of one replica (for `capacity`).

    Exit 2 (one line, nothing written) when the log is empty, binary, truncated before the KV cache line,
    or another engine's."""
    p = load_plan(plan_path)
    cand = p.candidate(candidate) if candidate else p.chosen_candidate
    if logfile.endswith(".json"):
        _import_bench(p, cand, logfile)
        return
    facts = read_startup_log(logfile, cand.engine)
    record = record_from_start(p, cand, facts, source=f"import {logfile}")
    path = add_record(record)
    m, pr = record["measured"], record["predicted"]
    click.echo(
        f"recorded {cand.id} ({record['engine']} {record['engine_version']}, {record['gpu']}): KV "
        f"{_n(m['kv_cache_tokens'])} tokens measured, {_n(pr['kv_cache_tokens'])} predicted -> {path}"
    )


def _import_bench(p: Any, cand: Any, path: str) -> None:
    from deploy.calibration.bench_store import add_bench_records, records_from_report
    from deploy.planning.capacity import replica_of
    from deploy.schema import parse_json, read_text

    report = parse_json(read_text(path), path)
    key = {**replica_of(p, cand).key(), "candidate": cand.id}
    records = records_from_report(report, key, source=f"import {path}")
    where = add_bench_records(records)
    shapes = ", ".join(f"{r['isl']}/{r['osl']} ({len(r['points'])} points)" for r in records)
    click.echo(f"recorded bench of {cand.id}: {shapes} -> {where}")


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "-" if value is None else f"{value:g}"


@calibrate_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="The records as a JSON list.")
def list_command(as_json: bool) -> None:
    """Every record: model, engine and version, GPU, layout, predicted against measured."""
    records = load_records()
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo(f"no calibration records yet ({store_path()})")
        return
    head = ("MODEL", "ENGINE", "VERSION", "GPU", "LAYOUT", "KV PRED", "KV MEAS", "W/GPU P/M", "LOAD P/M s")
    rows = [head]
    for r in records:
        p, m = r["predicted"], r["measured"]
        rows.append(
            (
                r["model"],
                r["engine"],
                r["engine_version"],
                r["gpu"],
                r["layout"],
                _n(p["kv_cache_tokens"]),
                _n(m["kv_cache_tokens"]),
                f"{_n(p['weights_gib_per_gpu'])}/{_n(m['weights_gib_per_gpu'])}",
                f"{_n(p['load_s'])}/{_n(m['load_s'])}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"{len(records)} record(s) in {store_path()}")


COMMANDS = [calibrate_group]
