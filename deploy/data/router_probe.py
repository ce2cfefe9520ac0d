"""Check router command lines with the pinned vllm-router's own parser, in the router venv; nothing starts.

Reads ``{"commands": [{"argv": [...], "env": {...}}]}`` on stdin, writes
``{"version": "...", "results": [{"ok": bool, "error": "...", "parsed": {...}}]}`` on stdout (``parsed``:
the RouterArgs values, the key left out). Each argv goes through
``router_launch.router_args`` (vllm-router's ``parse_router_args`` plus the key from ``env``), then the
router's ``RouterArgs._validate_router_args`` and ``Router.from_args`` (the Rust core's constructor, which
rejects an argument it does not take), exactly as ``launch_router`` does before ``start()``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from router_launch import LaunchRefused, router_args  # noqa: E402
from vllm_router.router import Router  # noqa: E402


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "rejected without a message"
    # argparse prefixes its message with the program's name (this file's): keep the router's words only
    return lines[-1][lines[-1].find("error:") :] if "error:" in lines[-1] else lines[-1]


def check(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = router_args(argv, env)
            validate = getattr(args, "_validate_router_args", None)
            if validate is not None:
                validate()
            # what the parser made of the argv, before from_args turns the policy into the core's enum
            parsed = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list))}
            parsed.pop("api_key", None)
            Router.from_args(args)
    except SystemExit:
        return {"ok": False, "error": _last_line(stderr.getvalue())}
    except (LaunchRefused, ValueError, TypeError, KeyError) as exc:
        return {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"}
    return {"ok": True, "error": "", "parsed": parsed}


def main() -> None:
    request = json.load(sys.stdin)
    results = [check(c["argv"], c.get("env", {})) for c in request["commands"]]
    json.dump({"version": importlib.metadata.version("vllm-router"), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
