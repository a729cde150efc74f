"""The one loader of a study config: YAML files merged in order, validated against the JSON
schema (``crosstrace/schemas/config.schema.yaml``), with the schema's defaults filled in.

The schema is the one owner of every default. The workflow (``rules/common.smk``) and the
``crosstrace`` command line both call :func:`validated`, so they train with the same settings.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from crosstrace.errors import ConfigError
from crosstrace.param_map import ArchInfo, ParamMap, logical_sizes, tiny_shapes

SCHEMA = "schemas/config.schema.yaml"


def schema_path() -> str:
    """The packaged JSON schema (YAML) of the study config."""
    return str(resources.files("crosstrace").joinpath(SCHEMA))


@functools.cache
def _cached_schema() -> dict[str, Any]:
    return yaml.safe_load(Path(schema_path()).read_text())


def _schema() -> dict[str, Any]:
    return copy.deepcopy(_cached_schema())


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's default of every key of one config section (for library callers that
    pass a partial section; the workflow and the CLI pass a validated, complete one)."""
    props = _schema()["properties"][section]["properties"]
    return {key: spec["default"] for key, spec in props.items() if "default" in spec}


def model_defaults(kind: str) -> dict[str, Any]:
    """The schema's defaults inside one kind of ``models`` entry: ``tiny`` (the keys of its
    ``tiny:`` mapping; ``kv_heads`` has none, it follows ``heads``) or ``pretrained``."""
    defs = _schema()["$defs"]
    if kind == "tiny":
        props = defs["tiny_model"]["properties"]["tiny"]["properties"]
    elif kind == "pretrained":
        props = defs["pretrained_model"]["properties"]
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    out = {}
    for key, spec in props.items():
        ref = spec.get("$ref", "")
        if ref.startswith("#/$defs/"):
            spec = {**defs[ref.removeprefix("#/$defs/")], **spec}
        if "default" in spec and key != "bos":
            out[key] = spec["default"]
    return out


def _errors(cfg: dict[str, Any]) -> list[str]:
    """One line per schema violation, naming the config key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    lines = []
    for error in sorted(validator.iter_errors(cfg), key=lambda e: list(map(str, e.path))):
        while error.context:  # oneOf/anyOf: report the branch that got furthest
            error = max(error.context, key=lambda e: len(e.absolute_path))
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        lines.append(f"  config key {key!r}: {error.message}")
    return lines


def trained_people(n_people: int, qa_train_fraction: float) -> int:
    """People whose QA is training data: n · fraction rounded half up; the rest are held out."""
    return math.floor(n_people * qa_train_fraction + 0.5)


def topk_size(k_percent: float, n: int) -> int:
    """Elements in the top-k % of n: round(k/100 · n), half up (``crosstrace.rank``'s K)."""
    return math.floor(float(k_percent) / 100.0 * n + 0.5)


@functools.cache
def shipped_pool_size(name: str) -> int:
    """Values shipped in ``crosstrace/pools/<name>.txt``."""
    text = resources.files("crosstrace").joinpath("pools", f"{name}.txt").read_text("utf-8")
    return sum(1 for line in text.splitlines() if line.strip())


def _world_problems(cfg: dict[str, Any]) -> list[str]:
    """The world's sizes against each other: the split, the probe people, unique names."""
    world, analysis = cfg["world"], cfg["analysis"]
    n, fraction = world["n_people"], world["qa_train_fraction"]
    trained = trained_people(n, fraction)
    held_out = n - trained
    split = f"world.qa_train_fraction={fraction} with world.n_people={n}"
    lines = []
    if min(trained, held_out) == 0:
        side = "training" if trained == 0 else "OOD test"
        lines.append(f"  config key 'world.qa_train_fraction': {split} leaves no {side} people")
    else:
        for key, what in (("probe_people", "the probe batches"),):
            need = analysis[key]
            if need > min(trained, held_out):
                lines.append(
                    f"  config key 'analysis.{key}': {what} need {need} trained and {need} "
                    f"held-out people, but {split} gives {trained} trained and {held_out} "
                    f"held-out; set analysis.{key} to at most {min(trained, held_out)} or "
                    "raise world.n_people"
                )
    pools = world["pools"]
    for name, size in pools.items():
        if size > shipped_pool_size(name):
            lines.append(
                f"  config key 'world.pools.{name}': {size}, but only "
                f"{shipped_pool_size(name)} values are shipped"
            )
    sizes = [
        min(pools[p], shipped_pool_size(p)) for p in ("first_names", "middle_names", "last_names")
    ]
    if n > math.prod(sizes):
        lines.append(
            f"  config key 'world.n_people': {n} people need as many unique full names, but "
            f"world.pools give {' x '.join(map(str, sizes))} = {math.prod(sizes)} (first x middle "
            "x last names)"
        )
    return lines


def _model_problems(name: str, tiny: dict[str, Any]) -> list[str]:
    """A tiny model's heads against its width."""
    key = f"  config key 'models.{name}.tiny"
    hidden, heads = tiny["hidden"], tiny["heads"]
    if hidden % heads:
        return [f"{key}.hidden': {hidden} is not divisible by heads ({heads})"]
    kv = tiny.get("kv_heads", heads)
    if tiny["arch"] == "llama" and heads % kv:
        return [f"{key}.kv_heads': heads ({heads}) is not a multiple of kv_heads ({kv})"]
    return []


def _k_problems(name: str, tiny: dict[str, Any], analysis: dict[str, Any]) -> list[str]:
    """Each k against the ranked population of a tiny model, where its size is known (the
    embedding and the LM head grow with the world's vocabulary)."""
    heads = tiny["heads"]
    info = ArchInfo(tiny["arch"], tiny["hidden"], heads, tiny.get("kv_heads", heads),
                    tiny["hidden"] // heads, tiny["layers"])  # fmt: skip
    modules, ks = analysis["rank_modules"], analysis["k_percent"]
    parts = logical_sizes(ParamMap(info), tiny_shapes(tiny), modules, analysis["rank_params"])
    lines = []
    if "global" in analysis["rank_scope"] and not {"embed", "lm_head"} & set(modules):
        n = sum(size for _, _, size in parts)
        zero = [k for k in ks if topk_size(k, n) == 0]
        if zero:
            lines.append(
                f"  config key 'analysis.k_percent': {zero} % of the {n} ranked elements of model "
                f"{name!r} is less than one element; use a larger k"
            )
    if "per_tensor" in analysis["rank_scope"]:
        small = min(parts, key=lambda part: part[2], default=None)
        zero = [k for k in ks if small is not None and topk_size(k, small[2]) == 0]
        if zero:
            lines.append(
                f"  config key 'analysis.k_percent': with rank_scope per_tensor, {zero} % of "
                f"{small[0]} ({small[1]}, {small[2]} elements) of model {name!r} is less than "
                "one element; use a larger k or rank_scope: [global]"
            )
    return lines


def primary_k(analysis: dict[str, Any]) -> float:
    """``analysis.primary_k``, or the middle of ``k_percent`` when it is null."""
    if analysis.get("primary_k") is not None:
        return float(analysis["primary_k"])
    ks = sorted(float(k) for k in analysis["k_percent"])
    return ks[len(ks) // 2]


def _definition_problems(cfg: dict[str, Any]) -> list[str]:
    """The ranked definitions against the trace kinds kept, and the primary one."""
    analysis, lines = cfg["analysis"], []
    if "update" in analysis["definitions"] and "update" not in cfg["trace"]["kinds"]:
        lines.append(
            "  config key 'analysis.definitions': update needs trace.kinds to include update"
        )
    if primary_k(analysis) not in {float(k) for k in analysis["k_percent"]}:
        lines.append(
            f"  config key 'analysis.primary_k': {analysis['primary_k']} is not among "
            f"analysis.k_percent {analysis['k_percent']}"
        )
    if analysis["primary_definition"] not in analysis["definitions"]:
        lines.append(
            f"  config key 'analysis.primary_definition': {analysis['primary_definition']!r} is "
            f"not among analysis.definitions {analysis['definitions']}"
        )
    return lines


def cross_key_problems(cfg: dict[str, Any]) -> list[str]:
    """One line per pair of config keys that cannot go together (sizes that need no data)."""
    lines = _world_problems(cfg) + _definition_problems(cfg)
    for name, model in cfg["models"].items():
        if "tiny" in model:
            shape = _model_problems(name, model["tiny"])
            lines += shape or _k_problems(name, model["tiny"], cfg["analysis"])
    return lines


def validated(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate ``cfg`` in place, fill the schema's defaults, and return it.

    A null model entry removes a model that an earlier config file defined. Raises
    :class:`ConfigError` with one line per problem, each naming the config key: the schema's
    checks, then sizes that must fit each other (:func:`cross_key_problems`).
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    seeds = cfg.get("seeds")
    if isinstance(seeds, list) and all(isinstance(s, str) and s.isdigit() for s in seeds):
        cfg["seeds"] = [int(s) for s in seeds]  # `--config 'seeds=[0,1,2]'` gives strings
    original = copy.deepcopy(cfg)
    try:
        validate(cfg, schema_path())
    except WorkflowError as exc:
        details = _errors(original) or [str(exc)]
        raise ConfigError(
            "Invalid config (checked against crosstrace/schemas/config.schema.yaml):\n"
            + "\n".join(details)
        ) from None
    cfg["models"] = {name: m for name, m in cfg["models"].items() if m is not None}
    if not cfg["models"]:
        raise ConfigError("Invalid config: config key 'models' defines no model (all are null).")
    bos_default = _schema()["$defs"]["bos"]["default"]
    for model in cfg["models"].values():  # validate() fills no defaults inside the oneOf
        model.setdefault("bos", bos_default)
        if "tiny" in model:
            model["tiny"] = {**model_defaults("tiny"), **model["tiny"]}
        else:
            for key, value in model_defaults("pretrained").items():
                model.setdefault(key, value)
    problems = cross_key_problems(cfg)
    if problems:
        raise ConfigError("Invalid config (keys that do not fit together):\n" + "\n".join(problems))
    return cfg


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line, with the line and column it names (1-based)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    started = f" ({context} at line {context_mark.line + 1})" if context and context_mark else ""
    return f"{where}: {exc.problem}{started}"


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML: {_yaml_problem(exc)}"
        ) from exc
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping, got {type(cfg).__name__}"
        )
    return cfg


def load(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Merge the YAML files in order (as Snakemake's ``--configfile``: mappings merge key by
    key, other values replace), validate, fill defaults."""
    from snakemake.utils import update_config

    cfg: dict[str, Any] = {}
    for path in paths:
        update_config(cfg, read_yaml(path))
    return validated(cfg)
