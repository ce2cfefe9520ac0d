"""`kimi-deploy support-bundle`: one .tar.gz with what support needs about this node, secrets redacted."""

from __future__ import annotations

import click

from deploy.checking.target import DEFAULT_PLAN, DEFAULT_RENDERED, choose_target
from deploy.cli import params
from deploy.support import bundle


@click.command("support-bundle")
@click.option(
    "-o",
    "--output",
    default="support-bundle.tar.gz",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The archive to write (mode 0600).",
)
@click.option(
    "--plan", "plan_path", default=DEFAULT_PLAN, show_default=True, type=click.Path(), help="plan.json."
)
@click.option(
    "--rendered", default=DEFAULT_RENDERED, show_default=True, type=click.Path(), help="The rendered folder."
)
@click.option(
    "--report",
    "reports",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="A check or bench report to include (repeatable; default: the usual places).",
)
@click.option(
    "--log-bytes",
    type=params.Whole(0, 1 << 30),
    default=bundle.LOG_BYTES,
    show_default=True,
    metavar="N",
    help="Keep the last N bytes of each engine log.",
)
@click.option("--no-inventory", is_flag=True, help="Skip probing this node's hardware.")
@click.option("--no-engine-report", is_flag=True, help="Skip the engine's own environment report.")
def support_bundle_command(
    output: str,
    plan_path: str,
    rendered: str,
    reports: tuple[str, ...],
    log_bytes: int,
    no_inventory: bool,
    no_engine_report: bool,
) -> None:
    """Versions, inventory, plan, rendered files, weights.lock summary and verify status, engine log tails,
    check/bench reports, nvidia-smi -q / topo -m, the engine's environment report and a MANIFEST.json.
    Every secret (API keys, HF tokens, bearer headers, env-file secret lines) is redacted."""
    # the same target rules as check and bench; a bundle is about a deployment, so there is no --url
    choice = choose_target(None, plan_path, rendered, default_rendered=DEFAULT_RENDERED)
    result = bundle.write_bundle(
        bundle.BundleOptions(
            output=output,
            plan=str(choice.plan),
            rendered=str(choice.rendered),
            reports=list(reports),
            log_bytes=log_bytes,
            probe_inventory=not no_inventory,
            engine_report=not no_engine_report,
        )
    )
    m = result.manifest
    click.echo(
        f"wrote {result.path} ({len(m['files'])} files, {m['redactions']['replaced']} secrets redacted, "
        f"{len(m['missing'])} items missing)"
    )
    for item in m["missing"]:
        click.echo(f"  missing {item['item']}: {item['reason']}")


COMMANDS = [support_bundle_command]
