"""The one loader of a study config: YAML files merged in order, validated against the JSON
schema (``crosstrace/schemas/config.schema.yaml``), with the schema's defaults filled in.

The schema is the one owner of every default. The workflow (``rules/common.smk``) and the
``crosstrace`` command line both call :func:`validated`, so they train with the same settings.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from crosstrace.errors import ConfigError

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


def validated(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate ``cfg`` in place, fill the schema's defaults, and return it.

    A null model entry removes a model that an earlier config file defined. Raises
    :class:`ConfigError` with one line per problem, each naming the config key.
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
    return cfg


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
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
