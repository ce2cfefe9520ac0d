"""The model catalog: one YAML file per model in this folder, loaded into plain values.

    >>> from deploy.catalog import load_model
    >>> model = load_model("kimi-k2.5")
    >>> model.variant("UD-Q2_K_XL").repo
    'unsloth/Kimi-K2.5-GGUF'

A file may say ``extends: <other model>``: mappings merge key by key, and ``variants`` merge by ``id``,
so a sibling with the same architecture (Kimi-K2.6) is a few lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import constants, pins, schema
from deploy.engines import registry
from deploy.errors import CatalogError

#: The engines registered when the catalog was imported (``deploy.engines.registry``); a catalog entry is
#: checked against the registry as it is when the entry loads, so an engine registered later is accepted.
ENGINES = tuple(registry.names())


@dataclass(frozen=True)
class Variant:
    """One weights variant of a model: where its files are and which engines load it."""

    id: str
    description: str
    repo: str
    revision: str
    format: str  # "safetensors" | "gguf"
    fidelity: int  # higher is closer to the released weights; the planner ranks on it first
    quant: dict[str, Any]
    allow_patterns: list[str]
    file_count: int
    file_bytes: int  # from the repo listing; a cross-check for the computed size, never the plan's source
    engines: list[str]
    serves_vision: bool
    #: GPU table features every GPU must have (``fp4``: FP4 tensor cores, Blackwell)
    requires_gpu: tuple[str, ...] = ()
    #: extra engine arguments this variant needs, per engine (``{"sglang": {"quantization": ...}}``)
    engine_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: where an engine's own guide limits this variant to some GPUs: {engine: {"gpus": [...], "source": ...}}
    engine_gpus: dict[str, dict[str, Any]] = field(default_factory=dict)


#: GPU features a variant may require (keys of hardware/gpus.yaml entries).
GPU_FEATURES = ("fp4", "fp8", "int4_w4a16")


@dataclass(frozen=True)
class Model:
    """A catalog entry. ``architecture`` is config.json's text_config (or ``kind: gguf`` + a source)."""

    name: str
    display_name: str
    family: str
    served_model_name: str
    architecture: dict[str, Any]
    capabilities: dict[str, bool]
    parsers: dict[str, str]
    modes: dict[str, Any]
    engines: dict[str, dict[str, Any]]  # ordered: the catalog's engine preference
    variants: list[Variant]
    expected: dict[str, Any] = field(default_factory=dict)
    source_file: str = ""
    #: optional speculative-decoding methods (``eagle3``: draft repo, engines, GPUs, sizes), off by default
    speculative: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the tokenizer's special tokens (``tokens``) and the file they were read from (``source``): what
    #: `check` looks for in answers when the deployment's own tokenizer files are not at hand
    special_tokens: dict[str, Any] = field(default_factory=dict)

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        known = ", ".join(v.id for v in self.variants)
        raise CatalogError(f"model {self.name!r} has no variant {variant_id!r} (known: {known})")

    @property
    def engine_preference(self) -> list[str]:
        return list(self.engines)


def available_models(catalog_dir: Path | None = None) -> list[str]:
    directory = catalog_dir or constants.CATALOG_DIR
    return sorted(p.stem for p in directory.glob("*.yaml"))


def catalog_schema(engines: list[str] | tuple[str, ...] = ENGINES) -> dict[str, Any]:
    """A catalog entry after ``extends`` is resolved: the values that reach plans, commands and paths, typed;
    ``engines``: the engine names it may name."""
    return {
        "type": "object",
        "properties": {
            "name": schema.WORD,
            "served_model_name": schema.MODEL_NAME,
            "architecture": {"type": "object"},
            "capabilities": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "parsers": {"type": "object"},
            "modes": {"type": "object"},
            "special_tokens": {
                "type": "object",
                "properties": {
                    "tokens": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "source": schema.TEXT,
                },
                "required": ["tokens", "source"],
            },
            "engines": {"type": "object", "propertyNames": {"enum": list(engines)}},
            "variants": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "id": schema.WORD,
                        "repo": schema.REPO,
                        "revision": schema.TEXT,
                        "format": {"enum": ["safetensors", "gguf"]},
                        "fidelity": {"type": "integer"},
                        "allow_patterns": {"type": "array", "items": schema.TEXT},
                        "file_count": schema.COUNT,
                        "file_bytes": schema.COUNT,
                        "engines": {"type": "array", "items": {"enum": list(engines)}},
                    },
                },
            },
        },
    }


#: The schema with the engines registered at import.
CATALOG_SCHEMA: dict[str, Any] = catalog_schema()


def _read_yaml(path: Path) -> dict[str, Any]:
    data = schema.load_yaml(path, None, CatalogError)
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping at the top level")
    return data


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key == "variants" and isinstance(base.get("variants"), list):
            by_id = {v["id"]: dict(v) for v in base["variants"]}
            for v in value:
                if v.get("id") in by_id:
                    by_id[v["id"]].update(v)
                else:
                    by_id[v["id"]] = dict(v)
            merged[key] = list(by_id.values())
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


def _resolve(name: str, directory: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_models(directory)) or "none"
        raise CatalogError(f"unknown model {name!r} (catalog has: {known})")
    if name in seen:
        raise CatalogError(f"{path}: 'extends' loops through {' -> '.join(seen + (name,))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent:
        data = _merge(_resolve(parent, directory, seen + (name,)), data)
    data["source_file"] = str(path)
    return data


_REQUIRED = (
    "name",
    "display_name",
    "served_model_name",
    "architecture",
    "capabilities",
    "parsers",
    "modes",
    "engines",
    "variants",
)
_VARIANT_REQUIRED = (
    "id",
    "repo",
    "revision",
    "format",
    "fidelity",
    "allow_patterns",
    "file_bytes",
    "engines",
)


def load_model(name: str, catalog_dir: Path | None = None) -> Model:
    """Load one model from the catalog by name (the file stem), resolving ``extends``."""
    directory = catalog_dir or constants.CATALOG_DIR
    data = _resolve(name, directory)
    src = data["source_file"]
    for key in _REQUIRED:
        if key not in data:
            raise CatalogError(f"{src}: missing key {key!r}")
    known = registry.names()
    schema.validate(data, catalog_schema(known), src, CatalogError)
    unknown = set(data["engines"]) - set(known)
    if unknown:
        raise CatalogError(f"{src}: engines: unknown engine(s) {sorted(unknown)}; known: {known}")
    variants = []
    for i, v in enumerate(data["variants"]):
        for key in _VARIANT_REQUIRED:
            if key not in v:
                raise CatalogError(f"{src}: variants[{i}] ({v.get('id', '?')}): missing key {key!r}")
        variants.append(
            Variant(
                id=v["id"],
                description=v.get("description", ""),
                repo=v["repo"],
                revision=str(v["revision"]),
                format=v["format"],
                fidelity=int(v["fidelity"]),
                quant=dict(v.get("quant") or {}),
                allow_patterns=list(v["allow_patterns"]),
                file_count=int(v.get("file_count", 0)),
                file_bytes=int(v["file_bytes"]),
                engines=list(v["engines"]),
                serves_vision=bool(v.get("serves_vision", False)),
                requires_gpu=_gpu_features(v.get("requires_gpu") or [], f"{src}: variants[{i}]"),
                engine_args={str(k): dict(a) for k, a in (v.get("engine_args") or {}).items()},
                engine_gpus={str(k): dict(a) for k, a in (v.get("engine_gpus") or {}).items()},
            )
        )
    return Model(
        name=data["name"],
        display_name=data["display_name"],
        family=data.get("family", data["name"]),
        served_model_name=data["served_model_name"],
        architecture=dict(data["architecture"]),
        capabilities=dict(data["capabilities"]),
        parsers=dict(data["parsers"]),
        modes=dict(data["modes"]),
        engines=_engines(data["engines"], src),
        variants=variants,
        expected=dict(data.get("expected") or {}),
        source_file=src,
        speculative={str(k): dict(x) for k, x in (data.get("speculative") or {}).items()},
        special_tokens=dict(data.get("special_tokens") or {}),
    )


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _engines(engines: dict[str, Any], src: str) -> dict[str, Any]:
    """The catalog's engines, refused where a ``min_version`` is older than the release the launch needs
    (``deploy.pins.ENGINE_MIN_VERSIONS``): the catalog must not promise an engine that cannot run it."""
    for name, meta in engines.items():
        floor = pins.ENGINE_MIN_VERSIONS.get(name)
        claimed = str((meta or {}).get("min_version") or "")
        if floor and (not claimed or _version(claimed) < _version(floor)):
            raise CatalogError(
                f"{src}: engines.{name}.min_version {claimed or '(none)'} is older than {floor}, the first "
                "release that runs the rendered launch (deploy/pins.py ENGINE_MIN_VERSIONS)"
            )
    return dict(engines)


def _gpu_features(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or any(f not in GPU_FEATURES for f in value):
        raise CatalogError(f"{where}: requires_gpu must be a list of {', '.join(GPU_FEATURES)}")
    return tuple(value)
