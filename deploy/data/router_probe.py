"""Check router command lines with the pinned router's own parser, in the router venv; nothing starts.

``<venv>/bin/python router_probe.py <launcher file>`` reads ``{"commands": [{"argv": [...], "env": {...}}]}``
on stdin and writes ``{"version": "...", "results": [{"ok": bool, "error": "...", "parsed": {...}}]}`` on
stdout (``parsed``: the router's own argument values, the key left out). The launcher is the one the router
is started with (``router_launch.py`` for vllm-router, ``smg_launch.py`` for sglang-router): each argv goes
through its ``router_args`` (the router's parser plus the key from ``env``) and its ``check`` (the router's
validation and the Rust core's constructor), exactly as its ``main`` does before the router starts.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import sys
from pathlib import Path
from types import ModuleType


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "rejected without a message"
    # argparse prefixes its message with the program's name (this file's): keep the router's words only
    return lines[-1][lines[-1].find("error:") :] if "error:" in lines[-1] else lines[-1]


def load(launcher: str) -> ModuleType:
    """The launcher module beside this file, by its file name."""
    path = Path(__file__).resolve().parent / Path(launcher).name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(launcher: ModuleType, argv: list[str], env: dict[str, str]) -> dict[str, object]:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = launcher.router_args(argv, env)
            # what the parser made of the argv, before the check turns the policy into the core's enum
            parsed = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list))}
            parsed.pop("api_key", None)
            launcher.check(args)
    except SystemExit:
        return {"ok": False, "error": _last_line(stderr.getvalue())}
    except (launcher.LaunchRefused, ValueError, TypeError, KeyError) as exc:
        return {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
    return {"ok": True, "error": "", "parsed": parsed}


def main() -> None:
    launcher = load(sys.argv[1])
    request = json.load(sys.stdin)
    results = [check(launcher, c["argv"], c.get("env", {})) for c in request["commands"]]
    json.dump({"version": importlib.metadata.version(launcher.DIST), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
