"""JSON Schemas of what `render` and `up` write and later read back: ``manifest.json`` and the pidfile.

    >>> from deploy.serving.manifest_schema import MANIFEST_SCHEMA
    >>> MANIFEST_SCHEMA["properties"]["port"]["maximum"]
    65535

Both may have been edited (or replaced) since they were written: every value that reaches a script, a
unit, a signal or a path is typed here, and file names must be plain names inside the rendered folder.
"""

from __future__ import annotations

from typing import Any

from deploy import schema
from deploy.engines import registry
from deploy.routers import registry as routers

#: A fleet's replica: ``r0``, ``r1``, ...
REPLICA_ID: dict[str, Any] = {"type": "string", "pattern": r"^r[0-9]{1,4}\Z"}
#: A file of the rendered folder: a plain name, no folder (``launch-node0.sh``).
FILE_NAME: dict[str, Any] = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"}

MANIFEST_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "manifest.json",
    "type": "object",
    "properties": {
        "schema": {"const": 1},
        "candidate": schema.TEXT,
        "engine": {"enum": registry.names()},
        "served_model_name": schema.MODEL_NAME,
        "model_path": schema.PATH,
        "bind": schema.HOST,
        "port": schema.PORT,
        "api_key_env": {"anyOf": [schema.ENV_NAME, {"type": "null"}]},
        "env_file": FILE_NAME,
        "nodes": {
            "type": "array",
            "maxItems": schema.MAX_NODES,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": schema.NAME,
                    "rank": schema.COUNT,
                    "role": {"enum": ["head", "worker"]},
                    "address": schema.HOST,
                    "serves_http": {"type": "boolean"},
                    "program": schema.TEXT,
                    "argv": {"type": "array", "items": {"type": "string"}},
                    "pre": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
                    "launch": FILE_NAME,
                    "install": FILE_NAME,
                    "service": FILE_NAME,
                    "env_files": {"type": "array", "maxItems": 16, "items": FILE_NAME},
                    "replica": REPLICA_ID,
                    "host": schema.NAME,
                    "bind": schema.HOST,
                    "port": schema.PORT,
                },
            },
        },
        "fleet": {
            "type": "object",
            "required": ["router", "replicas"],
            "properties": {
                "router": {
                    "type": "object",
                    "required": ["program", "bind", "port", "url", "launch", "env_file"],
                    "properties": {
                        "name": schema.NAME,
                        "program": {"enum": routers.names()},
                        "version": schema.TEXT,
                        "node": schema.NAME,
                        "bind": schema.HOST,
                        "port": schema.PORT,
                        "url": schema.TEXT,
                        "metrics": schema.TEXT,
                        "argv": {"type": "array", "items": {"type": "string"}},
                        "launch": FILE_NAME,
                        "install": FILE_NAME,
                        "service": FILE_NAME,
                        "env_file": FILE_NAME,
                        "health_check_interval_s": {"type": "integer", "minimum": 1, "maximum": 3600},
                    },
                },
                "replicas": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": schema.MAX_NODES,
                    "items": {
                        "type": "object",
                        "required": ["id", "nodes", "head", "url"],
                        "properties": {
                            "id": REPLICA_ID,
                            "nodes": {"type": "array", "minItems": 1, "items": schema.NAME},
                            "head": schema.NAME,
                            "url": schema.TEXT,
                            "role": {"enum": ["prefill", "decode"]},
                        },
                    },
                },
            },
        },
        "files": {"type": "object", "propertyNames": {"format": "relpath"}},
    },
}

#: ``<state>/run/<node>.json``: what `down` signals. pid/pgid 0 or 1 would mean every process or init.
PIDFILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    # no pid yet: written just before the fork, identified by its run id alone
    "anyOf": [{"required": ["pid"]}, {"required": ["run_id", "spawning"]}],
    "properties": {
        "pid": {"type": "integer", "minimum": 2, "maximum": 1 << 22},
        "pgid": {"type": "integer", "minimum": 2, "maximum": 1 << 22},
        "run_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        # url, listen and port stay unconstrained on purpose: a pidfile the schema refused would be no
        # pidfile, and `down` could not stop what it names; their readers refuse a bad value instead
    },
}

__all__ = ["FILE_NAME", "MANIFEST_SCHEMA", "PIDFILE_SCHEMA"]
