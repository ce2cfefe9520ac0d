"""Check rendered engine commands with the engines' own argument parsers; prints one JSON document.

Runs with the python of the parser venv (``kimi-deploy engine install parsers``), never inside the
toolkit's venv: it imports vLLM and SGLang, which the toolkit does not depend on. Input on stdin:

    {"commands": [{"engine": "vllm", "argv": ["vllm", "serve", "/models/x", "--tensor-parallel-size", "8"]},
                  {"engine": "sglang", "argv": ["python3", "-m", "sglang.launch_server", "--tp-size", "8"]}]}

Output on stdout: ``{"versions": {...}, "results": [{"ok", "errors", "inexact_flags", "unknown_parsers"}]}``,
one result per command in the input order (a KTransformers result adds ``notes`` and ``parsed``).

- vLLM: the parser of the ``serve`` subcommand (cmd_init() -> subparser_init), then its ``validate``; the
  tool-call and reasoning parser names are looked up in vLLM's registries, since argparse does not check them.
- SGLang: ``prepare_server_args(argv)``, as ``launch_server`` does.
- KTransformers (kvcache-ai's SGLang fork, run with the python of the fork's venv): the fork's parser and
  ``--config`` merger, as its ``prepare_server_args`` uses them (check_ktransformers says what is not run).
- Both accept unambiguous abbreviations of long flags (``--tp`` for ``--tp-size``); every flag in the argv
  must be an exact option string of the parser.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")

#: how each engine's server is started: a program and subcommand, or ``python -m module``
VLLM_PROGRAMS = (("vllm", "serve"), ("-m", "vllm.entrypoints.openai.api_server"))
SGLANG_PROGRAMS = (("-m", "sglang.launch_server"),)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def _flags(args: list[str]) -> list[str]:
    """Every token that argparse would read as an option name (``--x=1`` counts as ``--x``)."""
    flags = []
    for tok in args:
        if tok.startswith("-") and tok != "-" and not _is_number(tok):
            flags.append(tok.split("=", 1)[0])
    return flags


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def _strip_prefix(argv: list[str], programs: tuple[tuple[str, str], ...]) -> list[str] | None:
    """The arguments after the program: ``vllm serve`` (any path to vllm) or ``<any python> -m module``."""
    if len(argv) < 3:
        return None
    name = os.path.basename(argv[0])
    for first, second in programs:
        if first == "-m" and name.startswith("python") and argv[1:3] == ["-m", second]:
            return argv[3:]
        if first != "-m" and name == first and argv[1] == second:
            return argv[2:]
    return None


def _parse_quietly(fn, *args):
    """Call ``fn``; argparse's usage errors (SystemExit + stderr text) become an error string."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return fn(*args), None
        except SystemExit as exc:
            text = err.getvalue().strip().splitlines()
            return None, (text[-1] if text else f"exit {exc.code}")
        except Exception as exc:  # the engine's own validation: report it, check the next command
            return None, f"{type(exc).__name__}: {exc}"


_vllm = {}


def _vllm_parser():
    if not _vllm:
        from vllm.entrypoints.cli.serve import cmd_init
        from vllm.reasoning import ReasoningParserManager
        from vllm.tool_parsers import ToolParserManager
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        top = FlexibleArgumentParser(prog="vllm")
        sub = top.add_subparsers(dest="subparser")
        (serve,) = [c for c in cmd_init() if c.name == "serve"]
        serve_parser = serve.subparser_init(sub)
        _vllm.update(
            top=top,
            serve=serve,
            options=_option_strings(serve_parser),
            tools=set(ToolParserManager.list_registered()),
            reasoning=set(ReasoningParserManager.list_registered()),
        )
    return _vllm


def check_vllm(argv: list[str]) -> dict:
    result = {"ok": False, "errors": [], "inexact_flags": [], "unknown_parsers": []}
    args = _strip_prefix(argv, VLLM_PROGRAMS)
    if args is None:
        result["errors"].append(f"not a vLLM server command: {argv[:3]}")
        return result
    v = _vllm_parser()
    result["inexact_flags"] = [f for f in _flags(args) if f not in v["options"]]
    ns, error = _parse_quietly(v["top"].parse_args, ["serve", *args])
    if error is None:
        _, error = _parse_quietly(v["serve"].validate, ns)
    if error is not None:
        result["errors"].append(error)
    if ns is not None:
        if ns.tool_call_parser and ns.tool_call_parser not in v["tools"]:
            result["unknown_parsers"].append(f"tool_call_parser {ns.tool_call_parser!r}")
        if ns.reasoning_parser and ns.reasoning_parser not in v["reasoning"]:
            result["unknown_parsers"].append(f"reasoning_parser {ns.reasoning_parser!r}")
    result["ok"] = not (result["errors"] or result["inexact_flags"] or result["unknown_parsers"])
    return result


def _sglang_start(
    argv: list[str], prog: str
) -> tuple[dict, list[str] | None, argparse.ArgumentParser | None]:
    """The result to fill, the arguments after ``python -m sglang.launch_server`` and the installed SGLang's
    parser (upstream's, or the fork's in its venv), with the argv's inexact flags already listed."""
    result = {"ok": False, "errors": [], "inexact_flags": [], "unknown_parsers": []}
    args = _strip_prefix(argv, SGLANG_PROGRAMS)
    if args is None:
        result["errors"].append(f"not an SGLang server command: {argv[:3]}")
        return result, None, None
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog=prog)
    ServerArgs.add_cli_args(parser)
    result["inexact_flags"] = [f for f in _flags(args) if f not in _option_strings(parser)]
    return result, args, parser


def check_sglang(argv: list[str]) -> dict:
    result, args, _parser = _sglang_start(argv, "sglang")
    if args is None:
        return result
    from sglang.srt.server_args import prepare_server_args

    _, error = _parse_quietly(prepare_server_args, args)
    if error is not None:
        result["errors"].append(error)
    result["ok"] = not (result["errors"] or result["inexact_flags"])
    return result


def check_ktransformers(argv: list[str]) -> dict:
    """kvcache-ai's fork: the first half of its ``prepare_server_args`` (its parser, its ``--config``
    merger, ``parse_args``). The second half, ``ServerArgs.from_cli_args``, needs an accelerator and the
    model's config.json (its ``__post_init__`` asks for the device and reads the model), so it is not run."""
    result, args, parser = _sglang_start(argv, "sglang-kt")
    if args is None or parser is None:
        return result
    if "--config" in args:
        from sglang.srt.server_args_config_parser import ConfigArgumentMerger

        args, error = _parse_quietly(ConfigArgumentMerger(parser).merge_config_with_args, args)
        if error is not None:
            result["errors"].append(error)
            return result
    ns, error = _parse_quietly(parser.parse_args, args)
    if error is not None:
        result["errors"].append(error)
    else:
        # what the fork made of the KTransformers flags: the values its server runs with
        result["parsed"] = {
            k: v
            for k, v in sorted(vars(ns).items())
            if (k.startswith("kt_") or k == "chunked_prefill_size") and isinstance(v, (int, float, str, bool))
        }
    result["ok"] = not (result["errors"] or result["inexact_flags"])
    result["notes"] = ["ServerArgs.__post_init__ not run: it needs an accelerator and the model's config"]
    return result


CHECKS = {"vllm": check_vllm, "sglang": check_sglang, "ktransformers": check_ktransformers}


def main() -> int:
    request = json.load(sys.stdin)
    results = []
    for cmd in request["commands"]:
        check = CHECKS.get(cmd["engine"])
        if check is None:
            results.append(
                {
                    "ok": False,
                    "errors": [f"no parser check for engine {cmd['engine']!r}"],
                    "inexact_flags": [],
                    "unknown_parsers": [],
                }
            )
        else:
            results.append(check([str(a) for a in cmd["argv"]]))
    versions = {}
    # the KTransformers venv holds kvcache-ai's SGLang fork (distribution sglang-kt) and no vLLM
    for name in ("vllm", "sglang", "sglang-kt", "xgrammar", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    json.dump({"versions": versions, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
