"""`kimi-deploy render`: a plan's launch files (scripts, env file, systemd units, install steps, manifest)."""

from __future__ import annotations

import click

from deploy.cli import params
from deploy.cli.render_k8s import k8s_options, refuse_systemd_only, render_k8s
from deploy.errors import ParserCheckFailed
from deploy.monitoring.spec import Timings
from deploy.routers import registry as routers
from deploy.routers.check import check_router_argv
from deploy.serving import parser_check, render
from deploy.serving.argv import argv_strings
from deploy.targets.k8s import K8sOptions


@click.command("render")
@click.option(
    "--target",
    type=click.Choice(["systemd", "k8s"]),
    default="systemd",
    show_default=True,
    help="systemd: scripts and units per node; k8s: a LeaderWorkerSet, Service, ConfigMap, monitoring.",
)
@click.option(
    "--plan", "plan_path", default="plan.json", show_default=True, metavar="FILE", help="plan.json."
)
@click.option(
    "--candidate", "candidate_id", metavar="ID", help="Render this candidate instead of the chosen one."
)
@click.option("--out", "out_dir", default="rendered", show_default=True, metavar="DIR", help="Output folder.")
@click.option("--weights-dir", metavar="DIR", help="The folder with the weights (default: the plan's).")
@click.option("--bind", metavar="ADDR", help="Address the head serves on (default: the plan's, loopback).")
@click.option("--port", type=params.PORT, metavar="N", help="Port the head serves on (default: the plan's).")
@click.option(
    "--api-key-env",
    metavar="NAME",
    help="Env var holding the API key; required (and set) for a non-loopback --bind. k8s: the container "
    "variable the Secret feeds (its value is not read).",
)
@click.option(
    "--multinode-backend",
    type=click.Choice(["mp", "ray"]),
    help="vLLM multi-node: mp (--nnodes/--headless, default) or ray (ray start + executor ray).",
)
@click.option(
    "--secrets-to-env-file",
    is_flag=True,
    help="Copy HF_TOKEN and the API key from the environment into the 0600 env file (for systemd).",
)
@click.option(
    "--service-user",
    metavar="NAME",
    help="Run every systemd unit as this existing user (User=) instead of root; install-<node>.sh builds the "
    "cache as it. systemd target only.",
)
@click.option(
    "--ttft-slo",
    "ttft_slo",
    type=click.FloatRange(min=0.001),
    metavar="SECONDS",
    help="TTFT p95 SLO for the monitoring alert (default: the plan's, else 2 s).",
)
@click.option(
    "--fast-alerts",
    is_flag=True,
    help="Monitoring for a demo: 1 s scrapes and alert `for:` durations of seconds (default: 15 s, minutes).",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=render.release_dir.DEFAULT_KEEP,
    show_default=True,
    metavar="N",
    help="Earlier releases kept under DIR/releases (besides current and the one before it).",
)
@click.option(
    "--check-parsers",
    is_flag=True,
    help="Also parse the vLLM/SGLang commands with the engines' own parsers (needs the parser venv), and a "
    "fleet's router command with the pinned router's own parser (needs the router venv).",
)
@k8s_options
def render_command(
    target: str,
    plan_path: str,
    candidate_id: str | None,
    out_dir: str,
    weights_dir: str | None,
    bind: str | None,
    port: int | None,
    api_key_env: str | None,
    multinode_backend: str | None,
    secrets_to_env_file: bool,
    service_user: str | None,
    ttft_slo: float | None,
    fast_alerts: bool,
    keep: int,
    check_parsers: bool,
    **k8s_args: object,
) -> None:
    """Write launch-<node>.sh, install-<node>.sh, kimi-deploy-<node>.service, the env file, a manifest, and
    monitoring/ (Prometheus scrape config, alert rules, Grafana dashboards; checked with promtool when it is
    on PATH).

    They go into a release folder DIR/releases/<id> (named by the plan and the render options) and
    DIR/current is switched to it; DIR/<file> links follow current.

    --target k8s writes a LeaderWorkerSet, its Service, a ConfigMap, a PodMonitor and a PrometheusRule into
    DIR instead, validated against the schemas (docs/how-to/kubernetes.md).
    """
    # what the systemd and the Kubernetes targets both take, in the same words
    both = {
        "out_dir": out_dir,
        "candidate_id": candidate_id,
        "weights_dir": weights_dir,
        "bind": bind,
        "port": port,
        "api_key_env": api_key_env,
        "multinode_backend": multinode_backend,
    }
    if target == "k8s":
        refuse_systemd_only(
            secrets_to_env_file=secrets_to_env_file, fast_alerts=fast_alerts, service_user=service_user
        )
        k8s_opts = K8sOptions(
            **both,
            ttft_p95_slo_s=ttft_slo,
            **{k.removeprefix("k8s_"): v for k, v in k8s_args.items()},  # type: ignore[arg-type]
        )
        render_k8s(plan_path, k8s_opts, check_parsers)
        return
    opts = render.RenderOptions(
        **both,
        secrets_to_env_file=secrets_to_env_file,
        service_user=service_user,
        plan_path=plan_path,
        ttft_p95_slo_s=ttft_slo,
        check_monitoring=True,
        monitoring_timings=Timings.fast() if fast_alerts else None,
        keep=keep,
    )
    result = render.render(plan_path, opts)
    m = result.manifest
    click.echo(
        f"rendered {m['engine']} candidate {m['candidate']} for {len(result.nodes)} node(s) "
        f"into {result.out_dir} (serving on {m['bind']}:{m['port']})"
    )
    click.echo(f"release {result.release_id} is current ({result.out_dir}/current)")
    for path in result.files:
        click.echo(f"  {path.relative_to(result.out_dir)}")
    for r in result.promtool:
        click.echo(r.summary())
    if not result.promtool:
        click.echo("promtool not on PATH: monitoring/ not checked (Debian: apt-get install prometheus)")
    for rid in result.pruned:
        click.echo(f"removed old release {rid} (kept {keep})")
    for n in result.nodes:
        click.echo(f"{n.role} {n.node}: {' '.join(argv_strings(n.argv))}")
    if check_parsers:
        report = parser_check.check_nodes(result.nodes)
        if not report.results:
            click.echo(
                f"parser check: nothing to parse ({m['engine']} is not checked by the vLLM/SGLang parsers)"
            )
        for r in report.results:
            version = report.versions.get(parser_check.VERSION_KEYS.get(r.engine, r.engine))
            notes = "".join(f" ({note})" for note in r.notes)
            click.echo(f"parser check ({r.engine} {version}): {r.summary()}{notes}")
        if not report.ok:
            raise ParserCheckFailed("a rendered command failed its engine's argument parser (see above)")
        router = (m.get("fleet") or {}).get("router")
        if router:
            # argv: the router venv's python, the launcher, then what the router's own parser reads
            check_router_argv(routers.get(router["program"]), router["argv"][2:])
            click.echo(f"parser check ({router['program']} {router['version']}): the router command passes")


COMMANDS = [render_command]
