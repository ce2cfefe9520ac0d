"""Offline validation of the Kubernetes documents, as strictly as the schemas allow (no API server here).

    >>> doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    >>> problems(doc)[0]
    "Service x (Kubernetes 1.33.0): spec: Additional properties are not allowed ('portz' was unexpected)"

Built-in kinds go through ``kubernetes-validate`` in strict mode (unknown fields fail) for every version in
``KUBERNETES_VERSIONS``. Custom kinds go through their CRD's ``openAPIV3Schema`` with jsonschema, vendored
from the projects' release tags (deploy/data/k8s-schemas/README.md); the schema is made strict the same way
(an object with ``properties`` refuses other fields unless the CRD says to keep unknown fields), since an
API server would silently prune a misspelt field.
"""

from __future__ import annotations

import copy
import gzip
from functools import cache
from typing import Any

import jsonschema
import yaml

from deploy import constants
from deploy.errors import InputError

#: the Kubernetes releases the manifests are checked against (LWS v0.10.0 needs 1.26 or later)
KUBERNETES_VERSIONS = ("1.33.0", "1.35.0", "1.37.0")
SCHEMA_DIR = constants.PACKAGE_DIR / "data" / "k8s-schemas"
#: (apiVersion, kind) -> the vendored CRD file
CRDS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.x-k8s.io_leaderworkersets.yaml.gz",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml.gz",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml.gz",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml.gz",
}
_META = {"name", "namespace", "labels", "annotations", "generateName"}


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema where every object with ``properties`` refuses other fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) if k not in ("enum", "default", "example") else v for k, v in schema.items()}
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The strict ``openAPIV3Schema`` of the vendored CRD for ``kind`` at ``api_version``."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(gzip.decompress((SCHEMA_DIR / CRDS[(api_version, kind)]).read_bytes()), Loader=loader)
    version = api_version.split("/")[1]
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
    raise KeyError(f"{kind} {api_version}: not in the vendored CRD")


def _name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"


def _crd_problems(doc: dict[str, Any]) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    validator = jsonschema.Draft7Validator(crd_schema(*key))
    found = [
        f"{_name(doc)}: {'.'.join(map(str, e.absolute_path)) or '/'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    extra = set(doc.get("metadata") or {}) - _META
    if extra:
        found.append(f"{_name(doc)}: metadata: unexpected {', '.join(sorted(extra))}")
    return found


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        raise InputError(
            "render --target k8s validates with kubernetes-validate: pip install 'kimi-deploy[k8s]'"
        ) from None
    return kubernetes_validate


def _builtin_problems(doc: dict[str, Any]) -> list[str]:
    kubernetes_validate = _kubernetes_validate()
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path)) or "/"
            found.append(f"{_name(doc)} (Kubernetes {version}): {where}: {exc.message}")
        except kubernetes_validate.utils.SchemaNotFoundError:
            found.append(f"{_name(doc)} (Kubernetes {version}): no schema for this kind")
    return found


def problems(doc: dict[str, Any]) -> list[str]:
    """Every schema violation of one document (empty: it validates)."""
    if (doc.get("apiVersion"), doc.get("kind")) in CRDS:
        return _crd_problems(doc)
    return _builtin_problems(doc)


def validate_all(docs: list[dict[str, Any]]) -> list[str]:
    """Every violation of every document."""
    return [p for doc in docs for p in problems(doc)]


__all__ = ["CRDS", "KUBERNETES_VERSIONS", "crd_schema", "problems", "strict", "validate_all"]
