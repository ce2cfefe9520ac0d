"""`kimi-deploy plan`: size every engine x variant x layout on a hardware profile and choose one."""

from __future__ import annotations

import json

import click

from deploy import constants
from deploy.cli import plan_diff_cmd
from deploy.cli.capacity_cmd import seconds
from deploy.errors import InputError, NothingRunnableError
from deploy.planning.contract import save_plan
from deploy.planning.inputs import calibration_records, hardware_profile
from deploy.planning.planner import plan
from deploy.planning.report import print_report
from deploy.planning.request import PlanRequest


def _number(value: str | None, option: str, kind: type) -> int | float | None:
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise InputError(
            f"{option} {value!r}: expected {'an integer' if kind is int else 'a number'}"
        ) from None


@click.group("plan", invoke_without_command=True)
@click.option("--hardware", metavar="FILE", help="Hardware profile (YAML/JSON, or a name under hardware/).")
@click.option("--gpus", metavar="SPEC", help="Plan for hardware you do not have: 8xH200, 2x8xH100, ...")
@click.option("--model", default=constants.DEFAULT_MODEL, show_default=True, help="Catalog model.")
@click.option("--engine", help="Only this engine (vllm, sglang, ktransformers, llama.cpp).")
@click.option("--variant", help="Only this weights variant (e.g. int4, UD-Q2_K_XL).")
@click.option("--context", metavar="N", help="Context (max_model_len) wanted; default: the model's maximum.")
@click.option(
    "--ttft-slo",
    metavar="SECONDS",
    help="TTFT p95 the deployment must meet; recorded in plan.json for the monitoring's alert.",
)
@click.option(
    "--gpu-memory-utilization",
    metavar="F",
    help="vLLM --gpu-memory-utilization / SGLang --mem-fraction-static, in (0, 1].",
)
@click.option("--kv-cache-dtype", default="bf16", show_default=True, help="bf16 or fp8.")
@click.option(
    "--decode-context-parallel",
    default="1",
    show_default=True,
    metavar="N",
    help="vLLM --decode-context-parallel-size: splits the KV cache N ways across TP ranks.",
)
@click.option("--tensor-parallel", metavar="N", help="Force this TP size (must divide the attention heads).")
@click.option(
    "--nodes",
    metavar="N",
    help="Only layouts on exactly N nodes of the profile (N >= 2 on CPU-only nodes: llama.cpp over RPC).",
)
@click.option(
    "--replicas",
    metavar="N",
    help="Replicas of the chosen layout behind one router (default: as many as the profile's nodes hold; "
    "on a CPU node, N > 1 shares its cores).",
)
@click.option(
    "--users",
    metavar="U",
    help="Set --replicas from capacity: enough replicas for U concurrent users at --itl-p95 / "
    "--tokens-per-user / --ttft-slo (`kimi-deploy capacity`; --workload shape, default chat).",
)
@click.option(
    "--itl-p95",
    metavar="T",
    help="Inter-token latency p95 limit, e.g. 50ms: the fleet options are ranked at it (default 50ms), and "
    "with --users the replicas are sized for it.",
)
@click.option("--tokens-per-user", metavar="N", help="With --users: output tok/s each user must get.")
@click.option(
    "--workload",
    type=click.Choice(["chat", "agentic", "long"]),
    help="The request shape the fleet is planned for (as `capacity --workload`; default chat): the "
    "prefill/decode split and, with --users, the replicas.",
)
@click.option("--isl", metavar="N", help="Input tokens per request (with --osl; instead of --workload).")
@click.option("--osl", metavar="N", help="Output tokens per request (with --isl).")
@click.option(
    "--fleet-mode",
    type=click.Choice(["auto", "aggregated", "disaggregated"]),
    default="auto",
    show_default=True,
    help="Aggregated replicas, a prefill/decode split (4+ GPU nodes), or auto: the split where it predicts "
    "10%+ more output tok/s per GPU and every node names its RDMA devices.",
)
@click.option(
    "--transfer-backend",
    metavar="NAME",
    help="KV transfer of a prefill/decode split (SGLang: mooncake or nixl; vLLM: nixl); default: the "
    "engine's first.",
)
@click.option(
    "--router-port",
    metavar="PORT",
    help="The router's port (default: the engine's own, so users keep their URL; replica i serves on the "
    "engine's port + 1 + i).",
)
@click.option(
    "--weights-dir", help="Where weights live on every node (default: the head node's weights_dir)."
)
@click.option(
    "--speculative",
    metavar="METHOD",
    help="Speculative decoding from the catalog (eagle3), where a published recipe runs it; off by default.",
)
@click.option(
    "--tight",
    is_flag=True,
    help="Also offer candidates that set a knob beyond the engine's own choice (marked tight, ranked last).",
)
@click.option(
    "--no-calibration", is_flag=True, help="Ignore the calibration store (measured starts) for this plan."
)
@click.option(
    "--revision",
    metavar="REV",
    help="Weights revision (branch, tag or commit) instead of the catalog's, e.g. to upgrade to it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print plan.json on stdout instead of the table.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write plan.json here (atomically).")
def plan_command(
    hardware: str | None,
    gpus: str | None,
    model: str,
    engine: str | None,
    variant: str | None,
    context: str | None,
    ttft_slo: str | None,
    gpu_memory_utilization: str | None,
    kv_cache_dtype: str,
    decode_context_parallel: str,
    tensor_parallel: str | None,
    nodes: str | None,
    replicas: str | None,
    users: str | None,
    itl_p95: str | None,
    tokens_per_user: str | None,
    workload: str | None,
    isl: str | None,
    osl: str | None,
    fleet_mode: str,
    transfer_backend: str | None,
    router_port: str | None,
    weights_dir: str | None,
    speculative: str | None,
    tight: bool,
    no_calibration: bool,
    revision: str | None,
    as_json: bool,
    output: str | None,
) -> None:
    """Plan a deployment: a table of every candidate, the chosen one's memory, and why it was chosen.

    Exit 3 (after printing the table) when nothing can run; -o still writes plan.json then.
    `kimi-deploy plan diff OLD NEW` compares two plans or releases."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    profile = hardware_profile(hardware, gpus, weights_dir)
    records, warning = ([], None) if no_calibration else calibration_records()
    if warning:
        click.echo(warning, err=True)
    request = PlanRequest(
        model=model,
        engine=engine,
        variant=variant,
        context=_number(context, "--context", int),
        gpu_memory_utilization=_number(gpu_memory_utilization, "--gpu-memory-utilization", float),
        kv_cache_dtype=kv_cache_dtype,
        decode_context_parallel=int(_number(decode_context_parallel, "--decode-context-parallel", int) or 0),
        weights_dir=weights_dir,
        tensor_parallel=_number(tensor_parallel, "--tensor-parallel", int),
        nodes=_number(nodes, "--nodes", int),
        replicas=_number(replicas, "--replicas", int),
        router_port=_number(router_port, "--router-port", int),
        speculative=speculative,
        tight=tight,
        revision=revision,
        ttft_p95_slo_s=_number(ttft_slo, "--ttft-slo", float),
        workload=workload or "chat",
        isl=_number(isl, "--isl", int),
        osl=_number(osl, "--osl", int),
        itl_p95_s=seconds(itl_p95, "--itl-p95"),
        fleet_mode=fleet_mode,
        transfer_backend=transfer_backend,
    )
    result = plan(profile, request, calibration=records)
    if users is not None or tokens_per_user:
        from deploy.cli.capacity_cmd import replan_for_users

        result = replan_for_users(
            profile, request, records, result, users, itl_p95, tokens_per_user, workload
        )
    if output:
        save_plan(result, output)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        print_report(result)
    if output:
        click.echo(f"wrote {output}", err=True)
    if result.chosen is None:
        raise NothingRunnableError(
            f"nothing can run {model} on {profile.name} (see the table and the explanation above)"
        )


plan_command.add_command(plan_diff_cmd.diff_command)

COMMANDS = [plan_command]
