"""Map parameter names of Llama and GPT-NeoX models to logical modules, layers and heads.

One vocabulary serves both architectures (``MODULES``). A fused tensor is split into its
logical modules: GPT-NeoX's ``attention.query_key_value`` [3·hidden, hidden] is viewed by the
forward pass as (heads, 3·head_size), so head h owns rows [3·h·hs, 3·(h+1)·hs) in the order
q, k, v. Heads are recorded per row (q, k, v and the fused tensor, biases included) or per
column (Llama ``o_proj``, GPT-NeoX ``attention.dense``). Llama ``k_proj``/``v_proj`` carry the
KV head index: KV head j serves query heads j·g … j·g+g−1 with g = heads / kv_heads.

The module of an element depends on its row only; the head on its row or its column. Every
per-element label is therefore a ``take`` from a short per-row or per-column array, so the
dump labels millions of elements without Python loops.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crosstrace.errors import CrosstraceError, InputDataError

MODULES: tuple[str, ...] = (
    "embed",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.o",
    "mlp.up",
    "mlp.gate",
    "mlp.down",
    "norm",
    "lm_head",
)
MODULE_CODE: dict[str, int] = {m: i for i, m in enumerate(MODULES)}
NO_HEAD = -1  # sentinel in the int16 head arrays; written as null
NO_NEURON = -1  # sentinel in the int32 neuron arrays; written as null
NO_LAYER = -1
MLP_MODULES: tuple[str, ...] = ("mlp.up", "mlp.gate", "mlp.down")

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")

# suffix inside a block -> (kind, module); kind tells how heads are laid out
_LLAMA_BLOCK = {
    "self_attn.q_proj": ("rows_q", "attn.q"),
    "self_attn.k_proj": ("rows_kv", "attn.k"),
    "self_attn.v_proj": ("rows_kv", "attn.v"),
    "self_attn.o_proj": ("cols_q", "attn.o"),
    "mlp.gate_proj": ("rows_neuron", "mlp.gate"),
    "mlp.up_proj": ("rows_neuron", "mlp.up"),
    "mlp.down_proj": ("cols_neuron", "mlp.down"),
    "input_layernorm": ("plain", "norm"),
    "post_attention_layernorm": ("plain", "norm"),
}
_NEOX_BLOCK = {
    "attention.query_key_value": ("fused_qkv", None),
    "attention.dense": ("cols_q", "attn.o"),
    "mlp.dense_h_to_4h": ("rows_neuron", "mlp.up"),
    "mlp.dense_4h_to_h": ("cols_neuron", "mlp.down"),
    "input_layernorm": ("plain", "norm"),
    "post_attention_layernorm": ("plain", "norm"),
}
_OUTSIDE = {
    "model.embed_tokens": "embed",
    "gpt_neox.embed_in": "embed",
    "model.norm": "norm",
    "gpt_neox.final_layer_norm": "norm",
    "lm_head": "lm_head",
    "embed_out": "lm_head",
}


@dataclass(frozen=True)
class ArchInfo:
    """The few config numbers the mapping needs."""

    arch: str  # "llama" | "gpt_neox"
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int | None = None

    @property
    def group_size(self) -> int:
        """Query heads served by one KV head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ParamSpec:
    """How one parameter tensor splits into modules and heads.

    ``row_module`` (int8 module codes, one per row) and ``row_head``/``col_head`` (int16,
    ``NO_HEAD`` where none) are short arrays; element (r, c) has module ``row_module[r]`` and
    head ``row_head[r]`` or ``col_head[c]``. A 1-D tensor has one column.

    MLP neuron j is row j of the up/gate projection (``gate_proj``, ``up_proj``,
    ``dense_h_to_4h``, their biases too) plus column j of the down projection (``down_proj``,
    ``dense_4h_to_h``): ``row_neuron`` / ``col_neuron`` (int32, ``NO_NEURON`` where none).
    """

    name: str
    shape: tuple[int, ...]
    layer: int | None
    row_module: np.ndarray
    row_head: np.ndarray | None
    col_head: np.ndarray | None
    row_neuron: np.ndarray | None = None
    col_neuron: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        return int(self.shape[0]) if self.shape else 1

    @property
    def n_cols(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def numel(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def is_matrix(self) -> bool:
        """A weight matrix (2-D or more); biases and norm weights are 1-D."""
        return len(self.shape) >= 2

    def modules(self) -> set[str]:
        return {MODULES[c] for c in np.unique(self.row_module)}

    def columns(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Labels for the flat (row-major) element range [start, stop).

        Returns ``row`` int32, ``col`` int32, ``module`` int8 code, ``head`` int16
        (``NO_HEAD`` where none), ``neuron`` int32 (``NO_NEURON`` where none). The layer is
        constant: ``self.layer``.
        """
        stop = self.numel if stop is None else stop
        flat = np.arange(start, stop, dtype=np.int64)
        row, col = np.divmod(flat, self.n_cols)
        row = row.astype(np.int32)
        col = col.astype(np.int32)
        module = self.row_module[row]
        if self.row_head is not None:
            head = self.row_head[row]
        elif self.col_head is not None:
            head = self.col_head[col]
        else:
            head = np.full(stop - start, NO_HEAD, dtype=np.int16)
        if self.row_neuron is not None:
            neuron = self.row_neuron[row]
        elif self.col_neuron is not None:
            neuron = self.col_neuron[col]
        else:
            neuron = np.full(stop - start, NO_NEURON, dtype=np.int32)
        return {"row": row, "col": col, "module": module, "head": head, "neuron": neuron}


def _opt(h: Any) -> int | None:
    return None if int(h) == NO_HEAD else int(h)


def arch_info(config: Any) -> ArchInfo:
    """Read the architecture numbers from a HF config object, a dict, or a model folder."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputDataError(f"cannot read the model config {path}: {e}") from e
    if not isinstance(config, dict):
        config = config.to_dict()
    archs = config.get("architectures") or []
    model_type = config.get("model_type", "")
    if model_type == "llama" or "LlamaForCausalLM" in archs:
        arch = "llama"
    elif model_type == "gpt_neox" or "GPTNeoXForCausalLM" in archs:
        arch = "gpt_neox"
    else:
        raise CrosstraceError(
            f"unsupported architecture (model_type={model_type!r}, architectures={archs}); "
            "supported: LlamaForCausalLM, GPTNeoXForCausalLM"
        )
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads) if arch == "llama" else heads
    head_dim = config.get("head_dim") if arch == "llama" else None
    head_dim = int(head_dim) if head_dim else hidden // heads
    if heads % kv:
        raise CrosstraceError(f"num_attention_heads={heads} is not a multiple of kv heads={kv}")
    return ArchInfo(arch, hidden, heads, kv, head_dim, config.get("num_hidden_layers"))


class ParamMap:
    """Parameter name + shape -> ``ParamSpec`` for one model config."""

    def __init__(self, config: Any):
        self.info = config if isinstance(config, ArchInfo) else arch_info(config)

    def spec(self, name: str, shape: tuple[int, ...] | list[int]) -> ParamSpec:
        shape = tuple(int(s) for s in shape)
        n_rows = shape[0] if shape else 1
        n_cols = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        base = name.rsplit(".", 1)[0]  # drop .weight / .bias
        m = _LAYER_RE.search(base)
        if m is None:
            for prefix, module in _OUTSIDE.items():
                if base == prefix or base.endswith("." + prefix):
                    return ParamSpec(name, shape, None, _const(n_rows, module), None, None)
            raise CrosstraceError(f"unknown parameter {name!r} for a {self.info.arch} model")
        layer, sub = int(m.group(1)), m.group(2)
        table = _LLAMA_BLOCK if self.info.arch == "llama" else _NEOX_BLOCK
        if sub not in table:
            raise CrosstraceError(
                f"unknown parameter {name!r} for a {self.info.arch} model "
                f"(known block modules: {sorted(table)})"
            )
        kind, module = table[sub]
        hd = self.info.head_dim
        is_bias = len(shape) == 1
        if kind == "plain":
            return ParamSpec(name, shape, layer, _const(n_rows, module), None, None)
        if kind == "rows_neuron":
            return ParamSpec(
                name, shape, layer, _const(n_rows, module), None, None, row_neuron=_arange(n_rows)
            )
        if kind == "cols_neuron":
            if is_bias:  # the down projection's bias lives in the residual stream, not a neuron
                return ParamSpec(name, shape, layer, _const(n_rows, module), None, None)
            return ParamSpec(
                name, shape, layer, _const(n_rows, module), None, None, col_neuron=_arange(n_cols)
            )
        if kind == "rows_q":
            self._check(name, n_rows, self.info.num_heads * hd)
            return ParamSpec(name, shape, layer, _const(n_rows, module), _heads(n_rows, hd), None)
        if kind == "rows_kv":
            self._check(name, n_rows, self.info.num_kv_heads * hd)
            return ParamSpec(name, shape, layer, _const(n_rows, module), _heads(n_rows, hd), None)
        if kind == "cols_q":
            if is_bias:  # the output bias belongs to no head
                return ParamSpec(name, shape, layer, _const(n_rows, module), None, None)
            self._check(name, n_cols, self.info.num_heads * hd)
            return ParamSpec(name, shape, layer, _const(n_rows, module), None, _heads(n_cols, hd))
        # fused GPT-NeoX q/k/v: per head, 3·hs rows in the order q, k, v
        self._check(name, n_rows, 3 * self.info.num_heads * hd)
        r = np.arange(n_rows, dtype=np.int64)
        head = (r // (3 * hd)).astype(np.int16)
        part = (r % (3 * hd)) // hd
        codes = np.array([MODULE_CODE["attn.q"], MODULE_CODE["attn.k"], MODULE_CODE["attn.v"]])
        return ParamSpec(name, shape, layer, codes[part].astype(np.int8), head, None)

    def _check(self, name: str, got: int, want: int) -> None:
        if got != want:
            raise CrosstraceError(f"{name}: size {got} does not match the config ({want})")


def _const(n: int, module: str) -> np.ndarray:
    return np.full(n, MODULE_CODE[module], dtype=np.int8)


def _arange(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int32)


def _heads(n: int, size: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) // size).astype(np.int16)


def layer_sort_key(name: str) -> tuple[int, int, str]:
    """Order parameters as the model does: embeddings, blocks by layer number, the rest."""
    m = _LAYER_RE.search(name)
    if m is not None:
        return (1, int(m.group(1)), name)
    base = name.rsplit(".", 1)[0]
    first = base.endswith(("embed_tokens", "embed_in"))
    return (0 if first else 2, 0, name)


def tiny_shapes(tiny: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of a tiny model (``models.*.tiny`` of the config, as
    ``crosstrace.models.tiny_model`` builds it) but the vocabulary-sized embedding and LM head,
    whose size depends on the world."""
    h, n_layers, inner = int(tiny["hidden"]), int(tiny["layers"]), int(tiny["intermediate"])
    heads = int(tiny["heads"])
    out: dict[str, tuple[int, ...]] = {}
    if tiny["arch"] == "llama":
        kv = int(tiny.get("kv_heads", heads)) * (h // heads)
        block = {
            "self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h),
            "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, h),
            "mlp.gate_proj.weight": (inner, h), "mlp.up_proj.weight": (inner, h),
            "mlp.down_proj.weight": (h, inner), "input_layernorm.weight": (h,),
            "post_attention_layernorm.weight": (h,),
        }  # fmt: skip
        prefix, final = "model.layers", {"model.norm.weight": (h,)}
    else:
        block = {
            "input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
            "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
            "attention.query_key_value.weight": (3 * h, h),
            "attention.query_key_value.bias": (3 * h,),
            "attention.dense.weight": (h, h), "attention.dense.bias": (h,),
            "mlp.dense_h_to_4h.weight": (inner, h), "mlp.dense_h_to_4h.bias": (inner,),
            "mlp.dense_4h_to_h.weight": (h, inner), "mlp.dense_4h_to_h.bias": (h,),
        }  # fmt: skip
        prefix = "gpt_neox.layers"
        final = {"gpt_neox.final_layer_norm.weight": (h,), "gpt_neox.final_layer_norm.bias": (h,)}
    for layer in range(n_layers):
        out.update({f"{prefix}.{layer}.{name}": shape for name, shape in block.items()})
    return {**out, **final}


def logical_sizes(
    pmap: ParamMap, shapes: dict[str, tuple[int, ...]], modules: list[str], rank_params: str
) -> list[tuple[str, str, int]]:
    """(param, module, elements) of every logical tensor of ``shapes`` in ``modules`` (weight
    matrices only unless ``rank_params`` is "all"): the ranked population's parts."""
    out = []
    for name, shape in shapes.items():
        spec = pmap.spec(name, shape)
        if rank_params == "all" or spec.is_matrix:
            for code, rows in zip(*np.unique(spec.row_module, return_counts=True), strict=True):
                if MODULES[int(code)] in modules:
                    out.append((name, MODULES[int(code)], int(rows) * spec.n_cols))
    return out
