"""`kimi-deploy render --target k8s`: the options only Kubernetes takes, and the render itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click

from deploy import __version__
from deploy.errors import InputError, ParserCheckFailed, RenderError
from deploy.planning.contract import load_plan
from deploy.routers import registry as routers
from deploy.routers.check import check_router_argv
from deploy.serving import parser_check
from deploy.serving.argv import Arg, EnvRef
from deploy.targets import k8s, k8s_validate, k8s_write
from deploy.targets.k8s_nodes import LEADER_ADDRESS, POD_IP_VAR, WORKER_INDEX
from deploy.targets.k8s_pod import probe_budget

_OPTIONS = [
    click.option(
        "--name",
        "k8s_name",
        metavar="NAME",
        default="kimi-deploy",
        show_default=True,
        help="k8s: the LWS name.",
    ),
    click.option("--namespace", "k8s_namespace", metavar="NS", help="k8s: namespace of every document."),
    click.option(
        "--image", "k8s_image", metavar="REF", help="k8s: engine image (default: the engine's at its pin)."
    ),
    click.option(
        "--router-image",
        "k8s_router_image",
        metavar="REF",
        help="k8s: a fleet's router image (required for a fleet).",
    ),
    click.option(
        "--interface",
        "k8s_interface",
        metavar="NAME",
        help="k8s: NCCL/Gloo interface in the pods (default: none).",
    ),
    click.option(
        "--weights-volume",
        "k8s_weights_volume",
        type=click.Choice(["pvc", "hostpath"]),
        default="pvc",
        show_default=True,
        help="k8s: the weights on a shared claim (--weights-claim) or in the plan's folder on each node.",
    ),
    click.option(
        "--weights-claim",
        "k8s_weights_claim",
        metavar="NAME",
        default="kimi-weights",
        show_default=True,
        help="k8s: PVC name.",
    ),
    click.option(
        "--api-key-secret",
        "k8s_api_key_secret",
        metavar="NAME",
        default="kimi-deploy-api-key",
        show_default=True,
        help="k8s: the Secret (key `api-key`) the API key comes from; never written by render.",
    ),
]


def k8s_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the k8s options to `render`."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def kubelet_argv(argv: list[str], name: str) -> list[Arg]:
    """A pod's argv as the kubelet hands it to worker 1 of group 0 (LWS's variables substituted with what
    LWS sets there); another ``$(NAME)`` word stays a reference (the parser probe puts a key there)."""
    lws = {LEADER_ADDRESS: f"{name}-0.{name}", WORKER_INDEX: "1", f"$({POD_IP_VAR})": "10.0.0.2"}
    out: list[Arg] = []
    for word in argv:
        for var, value in lws.items():
            word = word.replace(var, value)
        ref = re.fullmatch(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", word)
        out.append(EnvRef(ref.group(1)) if ref else word)
    return out


def check_pod_parsers(result: k8s.K8sRender, name: str) -> None:
    """The pods' vLLM/SGLang commands, as the kubelet hands them over, through the engines' own parsers."""
    cmds = [c for c in (result.commands.leader, result.commands.worker) if c is not None]
    report = parser_check.check_argvs(
        [(c.node.program, kubelet_argv(c.argv, name)) for c in cmds if c.node.program in parser_check.CHECKED]
    )
    if not report.results:
        click.echo(f"parser check: nothing to parse ({result.candidate.engine} is not parser-checked)")
    for r in report.results:
        version = report.versions.get(parser_check.VERSION_KEYS.get(r.engine, r.engine))
        click.echo(f"parser check ({r.engine} {version}): {r.summary()}")
    if not report.ok:
        raise ParserCheckFailed("a pod's command failed its engine's argument parser (see above)")
    for doc in result.documents:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            program = doc["metadata"]["annotations"]["kimi-deploy/router"]
            # the command: python3, the launcher, then what the router's own parser reads
            check_router_argv(routers.get(program), container["command"][2:])
            click.echo(f"parser check ({program} {routers.get(program).version}): the router command passes")


def render_k8s(plan_path: str, opts: k8s.K8sOptions, check_parsers: bool = False) -> None:
    """Compose, validate against the schemas (fail on any violation), write, and say what was written;
    ``check_parsers``: the pods' commands through the engines' own parsers too."""
    opts.plan_path = plan_path
    result = k8s.compose(load_plan(plan_path), opts)
    found = k8s_validate.validate_all(result.documents)
    if found:
        raise RenderError(f"a rendered document fails its schema: {found[0]} ({len(found)} problem(s))")
    header = [
        f"Rendered by kimi-deploy {__version__} from {plan_path}, candidate {result.candidate.id}.",
        f"Validated offline against Kubernetes {', '.join(k8s_validate.KUBERNETES_VERSIONS)} and the "
        "vendored CRDs (deploy/data/k8s-schemas); not applied to a cluster by render.",
    ]
    files = k8s_write.write_documents(opts.out_dir, result.documents, header)
    lws = next(d for d in result.documents if d["kind"] == "LeaderWorkerSet")
    template = lws["spec"]["leaderWorkerTemplate"]
    leader = (template.get("leaderTemplate") or template["workerTemplate"])["spec"]["containers"][0]
    budget = probe_budget(leader["startupProbe"])
    click.echo(
        f"rendered {result.candidate.engine} candidate {result.candidate.id} as a LeaderWorkerSet of "
        f"{lws['spec']['replicas']} group(s) of {result.commands.size} pod(s) into {opts.out_dir} "
        f"(startupProbe {budget} s >= start deadline {result.start_deadline_s} s)"
    )
    click.echo(
        f"validated: {len(result.documents)} documents against Kubernetes "
        f"{', '.join(k8s_validate.KUBERNETES_VERSIONS)} (kubernetes-validate, strict) and the vendored CRDs"
    )
    for path in files:
        click.echo(f"  {path.name}")
    for note in result.notes:
        click.echo(f"note: {note}")
    if check_parsers:
        check_pod_parsers(result, opts.name)
    click.echo(
        f"the API key comes from Secret {opts.api_key_secret} (key api-key): kubectl create secret generic "
        f"{opts.api_key_secret} --from-file=api-key=FILE"
    )


def refuse_systemd_only(**flags: object) -> None:
    """One line for an option that means nothing on Kubernetes (given: true or a value).

    >>> refuse_systemd_only(fast_alerts=False, service_user=None)
    """
    for name, given in flags.items():
        if given:
            raise InputError(f"--{name.replace('_', '-')} applies to the systemd target, not --target k8s")


__all__ = ["k8s_options", "refuse_systemd_only", "render_k8s"]
