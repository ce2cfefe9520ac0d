"""Discovers the verbs: every ``deploy/cli/*_cmd.py`` module lists its click commands in ``COMMANDS``."""

from __future__ import annotations

import importlib
import pkgutil

import click

import deploy.cli


def all_commands() -> list[click.Command]:
    commands: list[click.Command] = []
    for info in sorted(pkgutil.iter_modules(deploy.cli.__path__), key=lambda i: i.name):
        if info.name.endswith("_cmd"):
            module = importlib.import_module(f"deploy.cli.{info.name}")
            commands.extend(module.COMMANDS)
    return commands
