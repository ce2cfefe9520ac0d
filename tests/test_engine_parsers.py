"""Every rendered vLLM / SGLang / KTransformers command goes through the real engines' argument parsers.

KTransformers commands are parsed by the pinned SGLang fork's own parser (sglang-kt's prepare_server_args), in
its own venv (deploy.engines.builds.kt_parser_venv_dir says why it is a second venv).

The commands come from the planner on every hardware profile in hardware/: the chosen candidate and every
runnable one, every rank of the multi-node ones, vLLM multi-node with both the mp and Ray backends, bound to
loopback and to 0.0.0.0 with an API key. The parsers live in the venv `kimi-deploy engine install parsers`
builds (`make setup`); without it these tests fail, never skip. One probe process parses the whole batch.

Negative controls prove the checks can fail: an abbreviated flag, an unknown flag, a parser name missing
from vLLM's registries, an SGLang parser name outside its choices, and a vLLM validation error.
"""

from __future__ import annotations

import pytest

from deploy import pins
from deploy.engines import builds as engines
from deploy.hardware.profiles import available_profiles, load_profile
from deploy.planning.planner import plan
from deploy.planning.request import PlanRequest
from deploy.serving import parser_check
from deploy.serving.argv import Endpoint, node_commands

KEY_ENV = "KIMI_API_KEY"


def _cases() -> list[tuple[str, str, list]]:
    cases = []
    plans = [(profile, plan(load_profile(profile))) for profile in available_profiles()]
    # the optional speculative decoding (EAGLE3) where a recipe runs it: H200 and Blackwell
    plans += [
        (f"{name}+eagle3", plan(load_profile(name), PlanRequest(speculative="eagle3")))
        for name in ("h200x8", "b200x8")
    ]
    for profile, p in plans:
        for cand in p.candidates:
            if not cand.runs or cand.engine not in parser_check.CHECKED:
                continue
            backends = ["mp", "ray"] if cand.engine == "vllm" and cand.nodes > 1 else [None]
            for backend in backends:
                for bind in ("127.0.0.1", "0.0.0.0"):
                    ep = Endpoint(bind=bind, api_key_env=KEY_ENV, multinode_backend=backend)
                    for n in node_commands(p, cand, cand.weights.local_dir, ep):
                        if n.program in parser_check.CHECKED:
                            label = f"{profile}/{cand.id}/{backend or 'single'}/{bind}/rank{n.rank}"
                            cases.append((label, n.program, n.argv))
    return cases + _split_cases()


def _split_cases() -> list[tuple[str, str, list]]:
    """Every role of the prefill/decode splits the 4-node H200 profile plans: both engines, a decode-heavy
    and a prefill-heavy workload (decode TP8 and decode DP8+EP), SGLang over both transfer backends, each
    replica through render's own path (deploy.serving.replicas: the role's candidate and engine_args)."""
    from deploy.serving.replicas import replicas

    profile = load_profile("h200x8-4nodes")
    requests = [
        PlanRequest(engine=engine, workload=workload, fleet_mode="disaggregated", transfer_backend=backend)
        for engine, backends in (("sglang", ("mooncake", "nixl")), ("vllm", ("nixl",)))
        for backend in backends
        for workload in ("chat", "long")
    ]
    cases = []
    for req in requests:
        p = plan(profile, req)
        assert p.fleet.mode == "disaggregated", req
        for bind in ("127.0.0.1", "10.0.1.11"):
            for r in replicas(
                p, p.chosen_candidate, "/models/kimi", Endpoint(bind=bind, api_key_env=KEY_ENV)
            ):
                for n in r.nodes:
                    label = f"split/{req.engine}/{req.transfer_backend}/{req.workload}/{bind}/{r.id}-{r.role}"
                    cases.append((label, n.program, n.argv))
    return cases


CASES = _cases()
SGLANG = ["python3", "-m", "sglang.launch_server", "--model-path", "/models/m"]
VLLM = ["vllm", "serve", "/models/m"]
#: (label, engine, argv, what the probe must report)
NEGATIVE = [
    ("sglang --tp abbreviation", "sglang", [*SGLANG, "--tp", "8"], "inexact:--tp"),
    (
        "vllm --tensor-parallel abbreviation",
        "vllm",
        [*VLLM, "--tensor-parallel", "8"],
        "inexact:--tensor-parallel",
    ),
    ("vllm unknown flag", "vllm", [*VLLM, "--no-such-flag"], "error"),
    (
        "vllm unknown tool parser",
        "vllm",
        [*VLLM, "--enable-auto-tool-choice", "--tool-call-parser", "no_such_parser"],
        "parser:tool_call_parser",
    ),
    (
        "vllm unknown reasoning parser",
        "vllm",
        [*VLLM, "--reasoning-parser", "no_such_parser"],
        "parser:reasoning_parser",
    ),
    ("sglang unknown tool parser", "sglang", [*SGLANG, "--tool-call-parser", "no_such_parser"], "error"),
    ("vllm auto tool choice without a parser", "vllm", [*VLLM, "--enable-auto-tool-choice"], "error"),
]


def _renamed_flag_case() -> tuple[str, str, list, str]:
    """The plan's cuda_graph_max_bs rendered the way older SGLang took it (--cuda-graph-max-bs): the pinned
    SGLang split it into -decode/-prefill, so the old spelling is only a (now ambiguous) abbreviation."""
    p = plan(load_profile("h200x8"))
    cand = next(c for c in p.candidates if c.engine == "sglang" and c.runs)
    (head,) = node_commands(p, cand, cand.weights.local_dir, Endpoint())
    assert "--cuda-graph-max-bs-decode" in head.argv
    argv = ["--cuda-graph-max-bs" if a == "--cuda-graph-max-bs-decode" else a for a in head.argv]
    return ("sglang flag renamed since", "sglang", argv, "inexact:--cuda-graph-max-bs")


NEGATIVE.append(_renamed_flag_case())


def _kt_cases() -> list[tuple[str, str, list, str]]:
    """The KTransformers launch for 4x RTX 4090 + 768 GB needs kvcache-ai's fork: upstream SGLang rejects
    its layer-wise prefill flag; and the fork's own parser catches a misspelt KT flag."""
    p = plan(load_profile("kt-4x4090-768g"))
    cand = next(c for c in p.candidates if c.engine == "ktransformers")
    (head,) = node_commands(p, cand, cand.weights.local_dir, Endpoint())
    typo = [
        a.replace("--kt-num-gpu-experts", "--kt-num-gpu-expert") if isinstance(a, str) else a
        for a in head.argv
    ]
    bad_int = [*head.argv, "--kt-num-gpu-experts", "many"]
    bad_choice = [*head.argv, "--kt-expert-placement-strategy", "bogus"]
    return [
        ("upstream sglang lacks the fork's KT prefill flag", "sglang", head.argv, "error"),
        ("ktransformers misspelt KT flag", "ktransformers", typo, "inexact:--kt-num-gpu-expert"),
        ("ktransformers non-integer expert count", "ktransformers", bad_int, "error"),
        ("ktransformers placement strategy outside the fork's choices", "ktransformers", bad_choice, "error"),
    ]


NEGATIVE.extend(_kt_cases())


@pytest.fixture(scope="module")
def report() -> parser_check.ParserReport:
    python = engines.parser_python()
    if not python.is_file():
        pytest.fail(f"parser venv missing at {python}: run `make setup` (kimi-deploy engine install parsers)")
    batch = [(engine, argv) for _, engine, argv in CASES] + [
        (engine, argv) for _, engine, argv, _ in NEGATIVE
    ]
    if not engines.kt_parser_python().is_file():
        pytest.fail(
            f"{engines.kt_parser_venv_dir()} missing: run `make setup` "
            "(kimi-deploy engine install parsers-kt)"
        )
    return parser_check.check_argvs(batch, python=python)


def test_cases_cover_every_profile_and_every_rank() -> None:
    profiles_with_gpu_engines = set()
    for profile in available_profiles():
        p = plan(load_profile(profile))
        for cand in p.candidates:
            if cand.runs and cand.engine in parser_check.CHECKED:
                profiles_with_gpu_engines.add(profile)
                labels = [c[0] for c in CASES if c[0].startswith(f"{profile}/{cand.id}/")]
                # vLLM Ray workers run `ray start`, not vLLM: only their head is parsed
                ranks = {int(label.rsplit("rank", 1)[1]) for label in labels}
                if "/ray/" in " ".join(labels):
                    assert 0 in ranks
                else:
                    assert ranks == set(range(cand.nodes)), (cand.id, ranks)
    assert profiles_with_gpu_engines, "no profile plans vLLM or SGLang: the parser checks would check nothing"
    assert any("/rank1" in c[0] for c in CASES), "no multi-node command is checked"


def test_split_cases_cover_both_roles_of_both_engines() -> None:
    seen = {(c[0].split("/")[1], c[0].rsplit("-", 1)[1]) for c in CASES if c[0].startswith("split/")}
    assert seen == {(e, r) for e in ("sglang", "vllm") for r in ("prefill", "decode")}
    roles = [argv for label, _, argv in CASES if label.startswith("split/sglang/nixl/long/")]
    assert all("nixl" in argv and "--disaggregation-mode" in argv for argv in roles)


def test_probe_uses_the_pinned_engines(report: parser_check.ParserReport) -> None:
    assert report.versions["vllm"] == pins.VLLM_VERSION
    assert report.versions["sglang"] == pins.SGLANG_VERSION
    assert report.versions["xgrammar"] == pins.XGRAMMAR_VERSION
    assert report.versions["torch"].split("+")[0] == pins.TORCH_CPU_VERSION
    assert report.versions["sglang-kt"] == pins.SGLANG_KT_VERSION


def test_ktransformers_launch_runs_the_guide(report: parser_check.ParserReport) -> None:
    """4x RTX 4090 + 768 GB: experts on the GPUs (sized by the memory model) and layer-wise prefill, in a
    command the pinned fork's parser accepts."""
    labels = [i for i, c in enumerate(CASES) if c[0].startswith("kt-4x4090-768g/ktransformers-")]
    assert labels
    for i in labels:
        argv = [str(a) for a in CASES[i][2]]
        assert int(argv[argv.index("--kt-num-gpu-experts") + 1]) > 0
        assert int(argv[argv.index("--kt-gpu-prefill-token-threshold") + 1]) > 0
        assert argv[argv.index("--chunked-prefill-size") + 1] == "32658"
        assert report.results[i].ok, report.results[i].summary()
        # parsed by the fork (sglang-kt), which says what of its validation needs a GPU
        assert report.results[i].notes and "__post_init__" in report.results[i].notes[0]
        # and in effect: the values the fork's own parser read from the launch
        parsed = report.results[i].parsed
        for flag in ("--kt-num-gpu-experts", "--kt-gpu-prefill-token-threshold", "--chunked-prefill-size"):
            assert parsed[flag[2:].replace("-", "_")] == int(argv[argv.index(flag) + 1]) > 0, flag
        assert parsed["kt_method"] == argv[argv.index("--kt-method") + 1]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_rendered_command_passes_the_engine_parser(report: parser_check.ParserReport, index: int) -> None:
    result = report.results[index]
    assert result.ok, f"{CASES[index][0]}: {result.summary()}\n  {' '.join(result.argv)}"


@pytest.mark.parametrize("index", range(len(NEGATIVE)), ids=[n[0] for n in NEGATIVE])
def test_the_probe_catches_bad_commands(report: parser_check.ParserReport, index: int) -> None:
    label, _engine, _argv, expect = NEGATIVE[index]
    result = report.results[len(CASES) + index]
    assert not result.ok, f"{label}: the probe accepted it"
    kind, _, detail = expect.partition(":")
    if kind == "inexact":
        assert detail in result.inexact_flags
    elif kind == "parser":
        assert any(u.startswith(detail) for u in result.unknown_parsers), result.unknown_parsers
    else:
        assert result.errors, result


def test_missing_parser_venv_is_an_error_not_a_pass(tmp_path) -> None:
    with pytest.raises(parser_check.ParserVenvMissing):
        parser_check.check_argvs([("vllm", VLLM)], python=tmp_path / "bin" / "python")
    kt = next(argv for _, engine, argv in CASES if engine == "ktransformers")
    with pytest.raises(parser_check.ParserVenvMissing, match="parsers-kt"):
        parser_check.check_argvs([("ktransformers", kt)], kt_python=tmp_path / "bin" / "python")


def test_api_key_never_rides_on_argv(report: parser_check.ParserReport) -> None:
    """vLLM takes VLLM_API_KEY from the environment; SGLang gets a --config YAML file holding the key, and
    its real parser (prepare_server_args) accepts the file the probe writes in its place."""
    keyed = [i for i, c in enumerate(CASES) if "/0.0.0.0/rank0" in c[0]]
    assert keyed
    for i in keyed:
        result = report.results[i]
        assert "--api-key" not in result.argv and parser_check.PROBE_API_KEY not in result.argv
        if result.engine != "vllm":
            assert result.argv[result.argv.index("--config") + 1].endswith(".yaml") and result.ok, result
