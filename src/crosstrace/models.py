"""Model factory: tiny random-init HF models for CPU, or real checkpoints by hub id / path.

Both forms end as ordinary Hugging Face model folders (``save_pretrained``, safetensors),
so θ0, stage checkpoints and final models all load through ``from_pretrained``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from crosstrace.atomic import atomic_dir
from crosstrace.config import model_defaults
from crosstrace.errors import ConfigError, CrosstraceError, InputDataError
from crosstrace.world import world_fingerprint

ARCHITECTURES = ("llama", "gpt_neox")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_model(
    tiny: dict[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int
) -> PreTrainedModel:
    """A randomly initialised LlamaForCausalLM or GPTNeoXForCausalLM sized by ``tiny``
    (keys left out take the config schema's defaults)."""
    tiny = {**model_defaults("tiny"), **tiny}
    arch = tiny.get("arch")
    if arch not in ARCHITECTURES:
        raise ConfigError(
            f"models.*.tiny.arch: unknown architecture {arch!r}; "
            f"choose one of {', '.join(ARCHITECTURES)}"
        )
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=int(tiny["hidden"]),
        num_hidden_layers=int(tiny["layers"]),
        num_attention_heads=int(tiny["heads"]),
        intermediate_size=int(tiny["intermediate"]),
        max_position_embeddings=int(tiny["max_position"]),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if common["hidden_size"] % common["num_attention_heads"]:
        raise ConfigError(
            f"models.*.tiny: hidden ({common['hidden_size']}) must be divisible by "
            f"heads ({common['num_attention_heads']})"
        )
    torch.manual_seed(seed)
    if arch == "llama":
        kv_heads = int(tiny.get("kv_heads", tiny["heads"]))
        if common["num_attention_heads"] % kv_heads:
            raise ConfigError(f"models.*.tiny: heads must be a multiple of kv_heads ({kv_heads})")
        config = LlamaConfig(num_key_value_heads=kv_heads, **common)
        return LlamaForCausalLM(config)
    config = GPTNeoXConfig(rotary_pct=float(tiny["rotary_pct"]), **common)
    return GPTNeoXForCausalLM(config)


def _not_a_model_folder(spec: str) -> str | None:
    """Why the local path ``spec`` is no model folder, or None (a model folder, or no path:
    a hub id)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return None
    if path.is_dir():
        what = "is a folder without config.json, not a Hugging Face model folder"
    elif path.exists():
        what = "is a file, not a Hugging Face model folder"
    elif path.is_absolute() or spec.startswith((".", "~")):
        what = "does not exist"
    else:
        return None
    return (
        f"models.*.pretrained: {spec!r} {what}; give a hub id "
        "or the folder that holds config.json, the weights and the tokenizer (as `hf download` "
        "or `save_pretrained` writes it)"
    )


def _offline_hint(spec: str) -> str:
    return (
        f"could not load {spec!r}: it is not a local folder and the Hugging Face hub cannot be "
        "reached (or the id is wrong). Compute nodes usually have no network: on a login node run "
        f"`hf download {spec}` (with HF_HOME pointing at shared storage, and `hf auth login` "
        "first for gated models such as Llama), or set `pretrained:` to a local folder."
    )


def load_pretrained(
    spec: str, dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a real checkpoint by hub id or local path (no download when HF_HUB_OFFLINE=1)."""
    if dtype not in DTYPES:
        raise ConfigError(f"models.*.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    problem = _not_a_model_folder(spec)
    if problem:
        raise ConfigError(problem)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=DTYPES[dtype])
    except OSError as exc:
        if Path(spec).expanduser().is_dir():
            raise CrosstraceError(f"could not load the model folder {spec!r}: {exc}") from exc
        raise CrosstraceError(_offline_hint(spec)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike[str]
) -> None:
    """Save model and tokenizer as one HF folder (safetensors), atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def load_model(
    path: str | os.PathLike[str], device: torch.device | str = "cpu", dtype: str = "float32"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model folder written by :func:`save_model` (or any HF causal-LM folder)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CrosstraceError(f"{folder} is not a model folder (no config.json); was its rule run?")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
    return model.to(device), tokenizer


def build_base(
    model_cfg: dict[str, Any],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    single_token_names: bool = True,
    bos: bool,
) -> None:
    """Write θ0: a tiny model with its word-level tokenizer, or a copy of a real checkpoint.

    ``bos`` (config ``models.*.bos``) is recorded in the folder; see :func:`bos_id`.
    """
    if "tiny" in model_cfg:
        from crosstrace.tokenizer import word_tokenizer_for_world
        from crosstrace.world import read_bio, read_people, read_qa

        data = Path(data_dir)
        tokenizer = word_tokenizer_for_world(
            read_bio(data / "bio.parquet"),
            read_qa(data / "qa.parquet"),
            read_people(data / "people.parquet"),
            single_token_names=single_token_names,
        )
        model = tiny_model(model_cfg["tiny"], tokenizer, seed)
    elif "pretrained" in model_cfg:
        model, tokenizer = load_pretrained(
            model_cfg["pretrained"], {**model_defaults("pretrained"), **model_cfg}["dtype"]
        )
    else:
        raise ConfigError("a models entry needs either `tiny:` or `pretrained:`")
    record_bos(model, tokenizer, bos)
    setattr(model.config, WORLD_KEY, world_fingerprint(Path(data_dir) / "qa.parquet"))
    save_model(model, tokenizer, out_dir)


BOS_KEY = "crosstrace_bos"  # in a model folder's config.json: sequences start with BOS


def record_bos(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, bos: bool) -> None:
    """Record in the model's config whether its sequences start with BOS (saved with it)."""
    if bos and tokenizer.bos_token_id is None:
        raise ConfigError(
            "models.*.bos is true but the tokenizer has no BOS token "
            f"({type(tokenizer).__name__}); set bos: false for this model"
        )
    setattr(model.config, BOS_KEY, bool(bos))


def bos_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id every training and evaluation sequence of this model starts with, or None.

    Read from the model folder (written by :func:`record_bos` into θ0 and carried by every
    checkpoint saved from it), so training, evaluation, post-hoc traces and ablation agree
    without the config. Folders from before the setting have no key: no BOS, as trained.
    """
    if not getattr(model.config, BOS_KEY, False):
        return None
    if tokenizer.bos_token_id is None:
        raise CrosstraceError(
            f"the model folder asks for BOS ({BOS_KEY}) but its tokenizer has none"
        )
    return int(tokenizer.bos_token_id)


WORLD_KEY = "crosstrace_world"  # in a model folder's config.json: the world θ0 was built for


def check_world(model: PreTrainedModel, data: str | os.PathLike[str], what: str) -> None:
    """Refuse a model and world data that do not belong together: the model's tokenizer and
    training were made for the world whose fingerprint θ0 recorded. ``data``: a world file
    (bio, qa or people Parquet) or the folder holding them. Older folders and files without a
    fingerprint are let through."""
    path = Path(data)
    path = path / "qa.parquet" if path.is_dir() else path
    try:
        theirs = world_fingerprint(path)
    except InputDataError:  # missing or unreadable: its reader says so, with its own words
        return
    ours = getattr(model.config, WORLD_KEY, None)
    if ours and theirs and ours != theirs:
        raise InputDataError(
            f"{what} belongs to world {ours}, but {path} is world {theirs}: a model is "
            "evaluated, traced or trained only on the world its θ0 was built for"
        )


PRECISION_KEY = "crosstrace_precision"  # in a trained model folder's config.json


def record_precision(model: PreTrainedModel, precision: str) -> None:
    """Record the training precision (fp32 | bf16) in the model's config (saved with it)."""
    setattr(model.config, PRECISION_KEY, precision)


def trained_precision(model: PreTrainedModel) -> str:
    """The precision the model was trained in, as recorded; ``unrecorded`` for folders written
    before it was recorded (θ0 and checkpoints of older versions)."""
    return str(getattr(model.config, PRECISION_KEY, None) or "unrecorded")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
