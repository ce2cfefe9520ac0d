"""The served model's special tokens: what must never reach a client's ``content`` or reasoning text.

    >>> s = SpecialTokens(("<|im_end|>", "</think>"), "catalog entry 'kimi-k2.5' (special_tokens)")
    >>> s.found_in("Paris<|im_end|>")
    ['<|im_end|>']

An end-of-turn or role marker in an answer means the engine prints special tokens (llama.cpp
``--special``, ``skip_special_tokens: false``), the tokenizer is the wrong one, or the chat template's turn
markers are plain text to the model, so generation does not stop at them. The set comes from the model's
own tokenizer files when the plan's weights folder has them (``tokenizer_config.json``:
``added_tokens_decoder`` entries marked ``special``), else from the catalog entry's ``special_tokens`` fact;
``<think>`` / ``</think>`` are always in it, since reasoning belongs in its own field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import schema
from deploy.errors import InputError

THINK_TAGS = ("<think>", "</think>")

#: tokenizer_config.json as far as this module reads it
_TOKENIZER_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "added_tokens_decoder": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {"content": {"type": "string"}, "special": {"type": "boolean"}},
                "required": ["content"],
            },
        }
    },
}


@dataclass(frozen=True)
class SpecialTokens:
    """The tokens looked for, and where they came from (the report names both)."""

    tokens: tuple[str, ...]
    source: str

    def found_in(self, text: str) -> list[str]:
        """The tokens that occur in ``text``, in the set's order.

        >>> SpecialTokens(("<end_of_turn>",), "x").found_in("ok")
        []
        """
        return [t for t in self.tokens if t and t in text]

    def describe(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "source": self.source}


def _with_think(tokens: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for t in [*tokens, *THINK_TAGS]:
        if t.strip():
            seen.setdefault(t, None)
    return tuple(seen)


def from_tokenizer_config(path: Path) -> SpecialTokens:
    """The ``special: true`` entries of a tokenizer_config.json's ``added_tokens_decoder``, plus the think
    tags.

    >>> from_tokenizer_config(Path("/models/Kimi-K2.5/tokenizer_config.json")).tokens[:2]  # doctest: +SKIP
    ('[BOS]', '[EOS]')
    """
    data = schema.load_json(path, _TOKENIZER_CONFIG_SCHEMA, InputError)
    decoder = data.get("added_tokens_decoder") or {}
    tokens = [str(e["content"]) for _, e in sorted(decoder.items(), key=_id_order) if e.get("special")]
    return SpecialTokens(_with_think(tokens), f"{path} (added_tokens_decoder, special: true)")


def _id_order(item: tuple[str, Any]) -> tuple[int, str]:
    key = item[0]
    return (int(key), key) if key.isdigit() else (1 << 62, key)


def from_catalog(entry: Any, why: str) -> SpecialTokens:
    """The catalog entry's ``special_tokens`` fact (``tokens`` and the ``source`` they were read from).

    >>> from deploy.catalog import load_model
    >>> s = from_catalog(load_model("kimi-k2.5"), "catalog entry 'kimi-k2.5'")
    >>> "<|im_end|>" in s.tokens and "</think>" in s.tokens
    True
    """
    fact = entry.special_tokens or {}
    tokens = [str(t) for t in fact.get("tokens") or []]
    where = f" from {fact['source']}" if fact.get("source") else ""
    return SpecialTokens(_with_think(tokens), f"{why} special_tokens{where}")


def for_plan(model: dict[str, Any], weights_dir: str | None) -> SpecialTokens:
    """The set for a planned deployment: the weights folder's tokenizer_config.json when there is one (a
    safetensors checkpoint), else the catalog entry the plan names (a GGUF carries no such file).

    >>> for_plan({"name": "demo"}, None).source.startswith("catalog entry 'demo'")
    True
    """
    if weights_dir:
        config = Path(weights_dir) / "tokenizer_config.json"
        if config.is_file():
            return from_tokenizer_config(config)
    from deploy import constants
    from deploy.catalog import load_model
    from deploy.errors import CatalogError

    name = str(model.get("name") or constants.DEFAULT_MODEL)
    try:
        return from_catalog(load_model(name), f"catalog entry {name!r}")
    except CatalogError:
        return from_catalog(
            load_model(constants.DEFAULT_MODEL),
            f"catalog entry {constants.DEFAULT_MODEL!r} (default: {name!r} not in the catalog)",
        )
