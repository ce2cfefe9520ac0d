"""Check KTransformers launches against the argument definitions of the pinned SGLang fork (sglang-kt).

    >>> from deploy.serving.kt_parser import check_kt_argv
    >>> argv = ["python3", "-m", "sglang.launch_server", "--kt-num-gpu-experts", "x"]
    >>> check_kt_argv(argv)["errors"]  # doctest: +SKIP
    ["argument --kt-num-gpu-experts: invalid int value: 'x'"]

KTransformers runs kvcache-ai's SGLang fork, which cannot be imported on a machine without CUDA (see
``deploy.engines.builds.kt_parser_dir``). Its parser is rebuilt instead from the pinned wheel's
``sglang/srt/server_args.py``: every literal ``parser.add_argument(...)`` call becomes the same argparse
argument (its option strings, ``type`` int/float/str, ``action`` store_true/store_false, ``nargs``, literal
``choices``), abbreviations off, and the argv is parsed by it. What this does not run is the fork's own
``ServerArgs.__post_init__`` validation (it needs the model's config and a GPU). Custom ``type`` functions
(``json.loads``, ``json_list_type``, ``nullable_str``) take any string here.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
from pathlib import Path
from typing import Any

from deploy import pins
from deploy.engines import builds as engines
from deploy.fsutil import read_json

SGLANG_MODULE = "sglang.launch_server"
_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str}


class _ParserError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ParserError(message)


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError):
        return None


def build_parser(source: str) -> argparse.ArgumentParser:
    """An argparse parser with every literal ``add_argument`` of the fork's server_args.py."""
    parser = _Parser(prog="sglang-kt", allow_abbrev=False, add_help=False)
    seen: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "add_argument":
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        names = [n for n in names if n.startswith("-") and n not in seen]
        if not names:
            continue
        kw: dict[str, Any] = {}
        for k in node.keywords:
            value = ast.unparse(k.value)
            if k.arg == "type":
                kw["type"] = _TYPES.get(value, str)
            elif k.arg == "action":
                action = _literal(k.value)
                if action in ("store_true", "store_false"):
                    kw["action"] = action
                elif value.endswith("BooleanOptionalAction"):
                    kw["action"] = argparse.BooleanOptionalAction
            elif k.arg == "nargs":
                kw["nargs"] = _literal(k.value)
            elif k.arg == "choices":
                choices = _literal(k.value)
                if isinstance(choices, list | tuple) and choices:
                    kw["choices"] = list(choices)
        if "action" in kw:
            kw.pop("type", None)
            kw.pop("choices", None)
            kw.pop("nargs", None)
        seen.update(names)
        parser.add_argument(*names, dest=names[0].lstrip("-").replace("-", "_"), **kw)
    return parser


_cache: dict[Path, tuple[argparse.ArgumentParser, set[str]]] = {}


def _parser(path: Path) -> tuple[argparse.ArgumentParser, set[str]]:
    if path not in _cache:
        parser = build_parser(path.read_text())
        options = {o for a in parser._actions for o in a.option_strings}
        _cache[path] = (parser, options)
    return _cache[path]


def check_kt_argv(argv: list[str], source: Path | None = None) -> dict[str, Any]:
    """Parse a ``python3 -m sglang.launch_server ...`` argv with the fork's argument definitions."""
    path = source or engines.kt_server_args_path()
    if not path.is_file():
        raise engines.EngineInstallError(
            f"{path}: the fork's server_args.py is missing; run `kimi-deploy engine install parsers-kt`"
        )
    result: dict[str, Any] = {"ok": False, "errors": [], "inexact_flags": [], "unknown_parsers": []}
    if len(argv) < 3 or argv[1:3] != ["-m", SGLANG_MODULE] or not Path(argv[0]).name.startswith("python"):
        result["errors"].append(f"not an SGLang server command: {argv[:3]}")
        return result
    parser, options = _parser(path)
    args = argv[3:]
    result["inexact_flags"] = [
        t.split("=", 1)[0] for t in args if t.startswith("--") and t.split("=", 1)[0] not in options
    ]
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args(args)
        except _ParserError as exc:
            result["errors"].append(str(exc))
    result["ok"] = not (result["errors"] or result["inexact_flags"])
    return result


def source_version(source: Path | None = None) -> str:
    """The fork's version the cached server_args.py came from (its SOURCE.json), else the pin."""
    meta = (source or engines.kt_server_args_path()).parent / "SOURCE.json"
    try:
        return str(read_json(meta)["version"])
    except (OSError, ValueError, KeyError):
        return pins.SGLANG_KT_VERSION


__all__ = ["build_parser", "check_kt_argv", "source_version"]
