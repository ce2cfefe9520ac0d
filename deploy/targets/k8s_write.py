"""Write Kubernetes documents as YAML files, one per document, in apply order.

    >>> yaml_text({"kind": "Service", "a": [1, 1]}).splitlines()[0]
    'kind: Service'

File names are ``NN-<kind>-<name>.yaml`` so that ``kubectl apply -f DIR`` applies the ConfigMap before the
pods that mount it. Earlier files of that pattern in the folder are removed (a re-render never leaves a
document of an older plan behind). The YAML has no anchors or aliases: every value is spelt where it is used.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from deploy.fsutil import atomic_write_text

_OURS = re.compile(r"^\d\d-[a-z]+-[a-z0-9-]+\.yaml\Z")


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def yaml_text(doc: dict[str, Any], header: list[str] | None = None) -> str:
    """One document as YAML (keys in the composer's order), below ``header`` comment lines."""
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return "".join(f"# {line}\n" for line in header or []) + body


def file_name(index: int, doc: dict[str, Any]) -> str:
    return f"{index:02d}-{str(doc['kind']).lower()}-{doc['metadata']['name']}.yaml"


def write_documents(out_dir: str | Path, docs: list[dict[str, Any]], header: list[str]) -> list[Path]:
    """Write ``docs`` into ``out_dir`` (created), removing this module's files of an earlier render."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [file_name(i, d) for i, d in enumerate(docs, start=1)]
    for old in out.iterdir():
        if _OURS.match(old.name) and old.name not in names and old.is_file():
            old.unlink()
    return [atomic_write_text(out / n, yaml_text(d, header)) for n, d in zip(names, docs, strict=True)]


__all__ = ["file_name", "write_documents", "yaml_text"]
