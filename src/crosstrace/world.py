"""The bioS-style fact world: people, biographies (BIO) and questions (QA) as Parquet."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crosstrace.atomic import atomic_file
from crosstrace.config import section_defaults, trained_people
from crosstrace.errors import ConfigError, InputDataError
from crosstrace.templates import QA_TEMPLATES, sentence_templates

ATTRIBUTES: tuple[str, ...] = (
    "birth_date",
    "birth_city",
    "university",
    "major",
    "employer",
    "employer_city",
)
POOLS: tuple[str, ...] = (
    "first_names",
    "middle_names",
    "last_names",
    "birth_cities",
    "universities",
    "majors",
    "employers",
)
MONTHS: tuple[str, ...] = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
PRONOUNS: dict[str, tuple[str, str]] = {"female": ("She", "Her"), "male": ("He", "His")}

BIO_SCHEMA = pa.schema([("person_id", pa.int32()), ("text", pa.string())])
# where each attribute value sits in its bio: text[start:end] is the value (character offsets)
BIO_SPAN_SCHEMA = pa.schema(
    [(f"{a}_{edge}", pa.int32()) for a in ATTRIBUTES for edge in ("start", "end")]
)
QA_SCHEMA = pa.schema(
    [
        ("person_id", pa.int32()),
        ("attribute", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("split", pa.string()),
    ]
)
PEOPLE_SCHEMA = pa.schema(
    [("person_id", pa.int32()), ("name", pa.string()), ("gender", pa.string())]
    + [(a, pa.string()) for a in ATTRIBUTES]
)


@dataclass(frozen=True)
class WorldConfig:
    """The validated ``world:`` section of the config."""

    seed: int
    n_people: int
    qa_train_fraction: float
    templates_per_attribute: int
    bios_per_person: int
    permute: bool
    fullname: bool
    single_token_names: bool
    pools: dict[str, int]


@functools.cache
def shipped_pool(name: str) -> tuple[str, ...]:
    """All values of a shipped pool, in file order (employers as "Name<TAB>HQ City")."""
    text = resources.files("crosstrace").joinpath("pools", f"{name}.txt").read_text("utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def _int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg.get(key)
    if value is None:
        raise ConfigError(f"world.{key} is required")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"world.{key} must be an integer, got {value!r}")
    if value < minimum:
        what = "empty world" if key == "n_people" else f"must be >= {minimum}"
        raise ConfigError(f"world.{key}={value}: {what}")
    return int(value)


def _bool(cfg: Mapping[str, Any], key: str) -> bool:
    value = cfg.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"world.{key} must be true or false, got {value!r}")
    return value


def parse_world_config(world_cfg: Mapping[str, Any]) -> WorldConfig:
    """Validate the ``world:`` section; ConfigError names the bad key. Keys left out take
    the config schema's defaults (:func:`crosstrace.config.section_defaults`), the one owner."""
    world_cfg = {**section_defaults("world"), **world_cfg}
    frac = world_cfg.get("qa_train_fraction")
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ConfigError(f"world.qa_train_fraction={frac!r} must be a number in (0, 1)")
    pools_cfg = world_cfg.get("pools") or {}
    if not isinstance(pools_cfg, Mapping):
        raise ConfigError(f"world.pools must be a mapping of pool name to size, got {pools_cfg!r}")
    unknown = sorted(set(pools_cfg) - set(POOLS))
    if unknown:
        raise ConfigError(f"world.pools has unknown keys {unknown}; known: {list(POOLS)}")
    pools: dict[str, int] = {}
    for name in POOLS:
        shipped = len(shipped_pool(name))
        size = _int(pools_cfg, name, 1) if name in pools_cfg else shipped
        if size > shipped:
            raise ConfigError(f"world.pools.{name}={size} but only {shipped} values are shipped")
        pools[name] = size
    return WorldConfig(
        seed=_int(world_cfg, "seed", 0),
        n_people=_int(world_cfg, "n_people", 1),
        qa_train_fraction=float(frac),
        templates_per_attribute=_int(world_cfg, "templates_per_attribute", 1),
        bios_per_person=_int(world_cfg, "bios_per_person", 1),
        permute=_bool(world_cfg, "permute"),
        fullname=_bool(world_cfg, "fullname"),
        single_token_names=_bool(world_cfg, "single_token_names"),
        pools=pools,
    )


def _people(cfg: WorldConfig, rng: np.random.Generator) -> dict[str, list[str]]:
    """Draw names, genders and attribute values; columns as lists, one entry per person."""
    n = cfg.n_people
    firsts, middles, lasts = (
        shipped_pool(p)[: cfg.pools[p]] for p in ("first_names", "middle_names", "last_names")
    )
    total = len(firsts) * len(middles) * len(lasts)
    if n > total:
        raise ConfigError(
            f"world.n_people={n} exceeds the {total} unique full names of the pools "
            f"({len(firsts)} first x {len(middles)} middle x {len(lasts)} last)"
        )
    codes = rng.choice(total, size=n, replace=False)
    f_idx, rest = np.divmod(codes, len(middles) * len(lasts))
    m_idx, l_idx = np.divmod(rest, len(lasts))
    names = [
        f"{firsts[f]} {middles[m]} {lasts[la]}"
        for f, m, la in zip(f_idx, m_idx, l_idx, strict=True)
    ]
    genders = np.where(rng.integers(0, 2, n) == 0, "female", "male").tolist()
    years = rng.integers(1900, 2100, n)
    months = rng.integers(0, 12, n)
    days = rng.integers(1, 29, n)
    dates = [f"{MONTHS[mo]} {d}, {y}" for y, mo, d in zip(years, months, days, strict=True)]
    cities = shipped_pool("birth_cities")[: cfg.pools["birth_cities"]]
    unis = shipped_pool("universities")[: cfg.pools["universities"]]
    majors = shipped_pool("majors")[: cfg.pools["majors"]]
    employers = [line.split("\t") for line in shipped_pool("employers")[: cfg.pools["employers"]]]
    emp_idx = rng.integers(0, len(employers), n)
    return {
        "name": names,
        "gender": genders,
        "birth_date": dates,
        "birth_city": [cities[i] for i in rng.integers(0, len(cities), n)],
        "university": [unis[i] for i in rng.integers(0, len(unis), n)],
        "major": [majors[i] for i in rng.integers(0, len(majors), n)],
        "employer": [employers[i][0] for i in emp_idx],
        "employer_city": [employers[i][1] for i in emp_idx],
    }


def _bios(
    cfg: WorldConfig, people: dict[str, list[str]], rng: np.random.Generator
) -> tuple[list[str], dict[str, list[int]]]:
    """K biographies per person (person-major order), six sentences each; and per attribute
    the character span of its value in each bio (columns of BIO_SPAN_SCHEMA)."""
    n, k, n_attr = cfg.n_people, cfg.bios_per_person, len(ATTRIBUTES)
    templates = [sentence_templates(a, cfg.templates_per_attribute) for a in ATTRIBUTES]
    choice = rng.integers(0, cfg.templates_per_attribute, size=(n, k, n_attr))
    if cfg.permute:
        order = np.argsort(rng.random((n, k, n_attr)), axis=-1, kind="stable")
    else:
        order = np.broadcast_to(np.arange(n_attr), (n, k, n_attr))
    values = [people[a] for a in ATTRIBUTES]
    texts: list[str] = []
    spans: dict[str, list[int]] = {name: [] for name in BIO_SPAN_SCHEMA.names}
    for p in range(n):
        name = people["name"][p]
        pron_subj, pron_pos = PRONOUNS[people["gender"][p]]
        named = {"subject": name, "possessive": f"{name}'s"}
        pronoun = named if cfg.fullname else {"subject": pron_subj, "possessive": pron_pos}
        for b in range(k):
            sentences, offset = [], 0
            for pos, a in enumerate(order[p, b].tolist()):
                ref = named if pos == 0 else pronoun
                template = templates[a][choice[p, b, a]]
                start = offset + len(template.split("{value}")[0].format(**ref))
                spans[f"{ATTRIBUTES[a]}_start"].append(start)
                spans[f"{ATTRIBUTES[a]}_end"].append(start + len(values[a][p]))
                sentences.append(template.format(value=values[a][p], **ref))
                offset += len(sentences[-1]) + 1  # the joining space
            texts.append(" ".join(sentences))
    return texts, spans


def _split(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask: True for people whose QA is training data."""
    n = cfg.n_people
    n_train = trained_people(n, cfg.qa_train_fraction)
    if n_train == 0 or n_train == n:
        side = "training" if n_train == 0 else "OOD test"
        raise ConfigError(
            f"world.qa_train_fraction={cfg.qa_train_fraction} with world.n_people={n} leaves "
            f"no {side} people"
        )
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:n_train]] = True
    return mask


WORLD_KEY = b"crosstrace_world"  # Parquet schema metadata: the world's fingerprint


def world_fingerprint_of(cfg: WorldConfig) -> str:
    """A short hash of everything that decides a world (its parsed settings)."""
    text = json.dumps({"format": 1, **dataclasses.asdict(cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def world_fingerprint(path: str | os.PathLike[str]) -> str | None:
    """The fingerprint a world file (bio, qa or people Parquet) was written with; None for a
    file of an older version."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"cannot read the world file {os.fspath(path)!r}: {exc}") from exc
    value = meta.get(WORLD_KEY)
    return value.decode() if value else None


def _write(table: pa.Table, path: str | os.PathLike[str], fingerprint: str) -> None:
    meta = {**(table.schema.metadata or {}), WORLD_KEY: fingerprint.encode()}
    with atomic_file(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd")


def synthesize_world(
    world_cfg: Mapping[str, Any],
    bio_out: str | os.PathLike[str],
    qa_out: str | os.PathLike[str],
    people_out: str | os.PathLike[str],
) -> None:
    """Draw the world of ``world_cfg`` and write bio, qa and people Parquet files."""
    cfg = parse_world_config(world_cfg)
    fingerprint = world_fingerprint_of(cfg)
    rng = np.random.default_rng(cfg.seed)
    people = _people(cfg, rng)
    train = _split(cfg, rng)
    texts, spans = _bios(cfg, people, rng)
    n, n_attr = cfg.n_people, len(ATTRIBUTES)
    ids = np.arange(n, dtype=np.int32)

    _write(
        pa.table(
            {"person_id": np.repeat(ids, cfg.bios_per_person), "text": texts, **spans},
            schema=pa.unify_schemas([BIO_SCHEMA, BIO_SPAN_SCHEMA]),
        ),
        bio_out,
        fingerprint,
    )
    questions = [QA_TEMPLATES[a].format(name=name) for name in people["name"] for a in ATTRIBUTES]
    answers = [people[a][p] for p in range(n) for a in ATTRIBUTES]
    split = np.repeat(np.where(train, "train", "test"), n_attr).tolist()
    _write(
        pa.table(
            {
                "person_id": np.repeat(ids, n_attr),
                "attribute": list(ATTRIBUTES) * n,
                "question": questions,
                "answer": answers,
                "split": split,
            },
            schema=QA_SCHEMA,
        ),
        qa_out,
        fingerprint,
    )
    _write(pa.table({"person_id": ids, **people}, schema=PEOPLE_SCHEMA), people_out, fingerprint)


def _read(path: str | os.PathLike[str], schema: pa.Schema, what: str) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise InputDataError(f"cannot read the {what} file {os.fspath(path)!r}: {exc}") from exc
    missing = [c for c in schema.names if c not in df.columns]
    if missing:
        raise InputDataError(
            f"the {what} file {os.fspath(path)!r} lacks columns {missing} "
            f"(has {list(df.columns)}); rebuild it with the synthesize step"
        )
    return df


def read_bio(path: str | os.PathLike[str]) -> pd.DataFrame:
    """bio.parquet as a DataFrame (person_id, text, then ``<attribute>_start``/``_end``: the
    character span of each value); InputDataError if unreadable."""
    return _read(path, BIO_SCHEMA, "bio")


def read_qa(path: str | os.PathLike[str]) -> pd.DataFrame:
    """qa.parquet as a DataFrame (person_id, attribute, question, answer, split)."""
    return _read(path, QA_SCHEMA, "qa")


def read_people(path: str | os.PathLike[str]) -> pd.DataFrame:
    """people.parquet as a DataFrame (person_id, name, gender, one column per attribute)."""
    return _read(path, PEOPLE_SCHEMA, "people")


HALVES_SEED = 0x9E0B1E  # with the run's seed: which trained people fall in half A


def people_halves(qa: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, equally large random halves A and B of the people whose QA is training
    data (one person is left out when their number is odd); fixed by the run's ``seed``."""
    ids = np.sort(qa.loc[qa["split"] == "train", "person_id"].unique())
    if len(ids) < 2:
        raise InputDataError(f"the people control needs 2 trained people, the world has {len(ids)}")
    rng = np.random.default_rng([HALVES_SEED, int(seed)])
    shuffled = rng.permutation(ids)
    half = len(ids) // 2
    return np.sort(shuffled[:half]), np.sort(shuffled[half : 2 * half])


def qa_prompt(question: str) -> str:
    """The model input for a question: ``"<question> Answer:"``."""
    return f"{question} Answer:"


def qa_target(answer: str) -> str:
    """The text the model should produce after the prompt: ``" <answer>"``."""
    return f" {answer}"


def load_world(path: str | os.PathLike[str]):  # -> datasets.DatasetDict (imported lazily)
    """The fact world as a ``datasets.DatasetDict``: ``train`` and ``test`` (the QA pairs of
    each split), ``bio`` and ``people``.

    ``path`` is the data folder with the Parquet files (``results/data``) or a folder written by
    :func:`save_world` (``results/data/world``).
    """
    from pathlib import Path

    from datasets import Dataset, DatasetDict, load_from_disk

    folder = Path(path)
    if (folder / "dataset_dict.json").is_file():
        return load_from_disk(str(folder))
    qa = read_qa(folder / "qa.parquet")
    return DatasetDict(
        {
            "train": Dataset.from_pandas(qa[qa["split"] == "train"], preserve_index=False),
            "test": Dataset.from_pandas(qa[qa["split"] == "test"], preserve_index=False),
            "bio": Dataset.from_pandas(read_bio(folder / "bio.parquet"), preserve_index=False),
            "people": Dataset.from_pandas(
                read_people(folder / "people.parquet"), preserve_index=False
            ),
        }
    )


def save_world(data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Save the world of ``data_dir`` as a DatasetDict folder (``save_to_disk``), atomically."""
    from crosstrace.atomic import atomic_dir

    world = load_world(data_dir)
    with atomic_dir(out_dir) as tmp:
        world.save_to_disk(str(tmp))
