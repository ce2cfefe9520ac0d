"""The verbs, in pipeline order, and the module that defines each.

Modules are imported only when their verb runs, so one verb's imports (openai, jsonschema, ansible-runner)
never slow down or break another. Each ``*_cmd`` module lists its click commands in ``COMMANDS``.
"""

from __future__ import annotations

import importlib

import click

VERB_MODULES: dict[str, str] = {
    "inventory": "inventory_cmd",
    "calibrate": "calibrate_cmd",
    "plan": "plan_cmd",
    "capacity": "capacity_cmd",
    "preflight": "preflight_cmd",
    "download": "download_cmd",
    "verify": "download_cmd",
    "mirror": "mirror_cmd",
    "engine": "engine_cmd",
    "render": "render_cmd",
    "up": "launch_cmd",
    "down": "launch_cmd",
    "status": "launch_cmd",
    "check": "check_cmd",
    "bench": "bench_cmd",
    "support-bundle": "support_cmd",
    "upgrade": "upgrade_cmd",
    "rollback": "upgrade_cmd",
    "gc": "gc_cmd",
    "demo": "demo_cmd",
    "ansible": "ansible_cmd",
}


def load_command(name: str) -> click.Command | None:
    module_name = VERB_MODULES.get(name)
    if module_name is None:
        return None
    module = importlib.import_module(f"deploy.cli.{module_name}")
    for command in module.COMMANDS:
        if command.name == name:
            return command
    raise LookupError(f"deploy.cli.{module_name} does not define the {name!r} command")


class LazyGroup(click.Group):
    """A click group that imports a verb's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERB_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name)
