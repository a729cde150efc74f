"""The bioS-style fact world: names, values, templates, split, augmentations, determinism."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from crosstrace.errors import ConfigError
from crosstrace.templates import QA_TEMPLATES, SENTENCE_TEMPLATES
from crosstrace.world import (
    ATTRIBUTES,
    POOLS,
    PRONOUNS,
    qa_prompt,
    qa_target,
    read_bio,
    read_people,
    read_qa,
    shipped_pool,
    synthesize_world,
)

BASE = {
    "seed": 0,
    "n_people": 300,
    "qa_train_fraction": 0.5,
    "templates_per_attribute": 5,
    "bios_per_person": 1,
    "permute": False,
    "fullname": False,
    "single_token_names": True,
}
MIN_SIZES = {
    "first_names": 400,
    "middle_names": 400,
    "last_names": 1000,
    "birth_cities": 200,
    "universities": 300,
    "majors": 100,
    "employers": 263,
}


def make(tmp: Path, **overrides) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    tmp.mkdir(parents=True, exist_ok=True)
    paths = [tmp / "bio.parquet", tmp / "qa.parquet", tmp / "people.parquet"]
    synthesize_world({**BASE, **overrides}, *paths)
    return read_bio(paths[0]), read_qa(paths[1]), read_people(paths[2])


def sentences(text: str) -> list[str]:
    return re.split(r"(?<=\.) ", text)


def test_pools_sizes_unique_and_clean():
    for name in POOLS:
        values = shipped_pool(name)
        assert len(values) >= MIN_SIZES[name], name
        assert len(set(values)) == len(values), name
        assert all("?" not in v and v == v.strip() for v in values), name
    heads = [line.split("\t")[0] for line in shipped_pool("employers")]
    assert len(set(heads)) == len(heads)
    assert all(len(line.split("\t")) == 2 for line in shipped_pool("employers"))
    for name in ("first_names", "middle_names", "last_names"):
        assert all(" " not in v for v in shipped_pool(name))


def test_templates_shipped():
    assert set(SENTENCE_TEMPLATES) == set(ATTRIBUTES) == set(QA_TEMPLATES)
    for a, ts in SENTENCE_TEMPLATES.items():
        assert len(ts) >= 8 and len(set(ts)) == len(ts), a
        for t in ts:
            assert t.count("{value}") == 1 and "?" not in t
            assert t.startswith(("{subject} ", "{possessive} ")), t
    assert QA_TEMPLATES["birth_date"] == "What is the birth date of {name}?"
    assert QA_TEMPLATES["employer_city"] == "Where did {name} work?"
    assert qa_prompt("Where did A B C work?") == "Where did A B C work? Answer:"
    assert qa_target("Paris") == " Paris"


def test_columns_and_types(tmp_path):
    bio, qa, people = make(tmp_path)
    assert pq.read_schema(tmp_path / "bio.parquet").names[:2] == ["person_id", "text"]
    assert pq.read_schema(tmp_path / "qa.parquet").names == [
        "person_id",
        "attribute",
        "question",
        "answer",
        "split",
    ]
    assert list(people.columns) == ["person_id", "name", "gender", *ATTRIBUTES]
    assert str(pq.read_schema(tmp_path / "bio.parquet").field("person_id").type) == "int32"
    assert str(pq.read_schema(tmp_path / "qa.parquet").field("person_id").type) == "int32"
    assert len(bio) == 300 and len(qa) == 300 * 6 and len(people) == 300
    assert people["person_id"].tolist() == list(range(300))


def test_names_unique_and_values_valid(tmp_path):
    _, qa, people = make(tmp_path, n_people=2000)
    assert people["name"].is_unique
    assert all(len(n.split(" ")) == 3 for n in people["name"])
    assert set(people["gender"]) == {"female", "male"}
    date = re.compile(
        r"^(January|February|March|April|May|June|July|August|September|"
        r"October|November|December) ([1-9]|1\d|2[0-8]), (\d{4})$"
    )
    years = []
    for d in people["birth_date"]:
        m = date.match(d)
        assert m, d
        years.append(int(m.group(3)))
    assert min(years) >= 1900 and max(years) <= 2099
    assert set(people["birth_city"]) <= set(shipped_pool("birth_cities"))
    assert set(people["university"]) <= set(shipped_pool("universities"))
    assert set(people["major"]) <= set(shipped_pool("majors"))
    hq = dict(line.split("\t") for line in shipped_pool("employers"))
    assert all(hq[e] == c for e, c in zip(people["employer"], people["employer_city"], strict=True))
    assert people.groupby("employer")["employer_city"].nunique().max() == 1
    q = qa[qa["attribute"] == "birth_city"].merge(people, on="person_id")
    assert (q["question"] == "What is the birth city of " + q["name"] + "?").all()
    assert (q["answer"] == q["birth_city"]).all()


def test_pool_truncation(tmp_path):
    pools = {"first_names": 3, "middle_names": 4, "last_names": 5, "majors": 2}
    _, _, people = make(tmp_path, n_people=60, pools=pools)
    assert people["name"].nunique() == 60
    assert {n.split()[0] for n in people["name"]} <= set(shipped_pool("first_names")[:3])
    assert {n.split()[2] for n in people["name"]} <= set(shipped_pool("last_names")[:5])
    assert set(people["major"]) == set(shipped_pool("majors")[:2])


def test_every_answer_in_bios(tmp_path):
    bio, qa, _ = make(tmp_path, bios_per_person=3, permute=True)
    texts = bio.groupby("person_id")["text"].apply(list).to_dict()
    for pid, answer in zip(qa["person_id"], qa["answer"], strict=True):
        assert all(answer in t for t in texts[pid]), (pid, answer)


@pytest.mark.parametrize("opts", [{}, {"permute": True, "fullname": True, "bios_per_person": 2}])
def test_bio_spans_hold_the_values(tmp_path, opts):
    bio, qa, _ = make(tmp_path, **opts)
    answers = qa.set_index(["person_id", "attribute"])["answer"]
    for row in bio.itertuples():
        for a in ATTRIBUTES:
            start, end = getattr(row, f"{a}_start"), getattr(row, f"{a}_end")
            assert row.text[start:end] == answers[(row.person_id, a)]


def test_bio_structure(tmp_path):
    bio, _, people = make(tmp_path)
    for text, name, gender in zip(bio["text"], people["name"], people["gender"], strict=True):
        sents = sentences(text)
        assert len(sents) == 6
        assert sents[0].startswith(name)
        subj, pos = PRONOUNS[gender]
        assert all(s.startswith((subj + " ", pos + " ")) for s in sents[1:])
        assert text.count(name) == 1


@pytest.mark.parametrize(("n", "fraction", "n_train"), [(300, 0.5, 150), (101, 0.3, 30)])
def test_split_sizes(tmp_path, n, fraction, n_train):
    _, qa, _ = make(tmp_path, n_people=n, qa_train_fraction=fraction)
    per_person = qa.groupby("person_id")["split"].agg(["nunique", "first", "size"])
    assert (per_person["nunique"] == 1).all() and (per_person["size"] == 6).all()
    assert (per_person["first"] == "train").sum() == n_train
    assert (per_person["first"] == "test").sum() == n - n_train
    assert (qa["split"] == "train").sum() == 6 * n_train
    assert list(qa["attribute"][:6]) == list(ATTRIBUTES)


def test_every_template_used(tmp_path):
    bio, _, people = make(tmp_path, templates_per_attribute=9)
    joined = dict(zip(bio["person_id"], bio["text"], strict=True))
    for a in ATTRIBUTES:
        for t in SENTENCE_TEMPLATES[a]:
            used = False
            for row in people.itertuples():
                subj, pos = PRONOUNS[row.gender]
                forms = [
                    t.format(value=getattr(row, a), subject=row.name, possessive=f"{row.name}'s"),
                    t.format(value=getattr(row, a), subject=subj, possessive=pos),
                ]
                if any(f in joined[row.person_id] for f in forms):
                    used = True
                    break
            assert used, (a, t)


def test_templates_per_attribute_limits_templates(tmp_path):
    bio, _, _ = make(tmp_path, templates_per_attribute=1)
    firsts = {a: SENTENCE_TEMPLATES[a][0].split("{value}")[0] for a in ATTRIBUTES}
    text = bio["text"].iloc[0]
    assert " was born on " in text and " was born in " in text and " worked in " in text
    assert firsts["major"] == "{subject} majored in "


def test_deterministic_bytes(tmp_path):
    make(tmp_path / "a", bios_per_person=2, permute=True)
    make(tmp_path / "b", bios_per_person=2, permute=True)
    make(tmp_path / "c", bios_per_person=2, permute=True, seed=1)
    for f in ("bio.parquet", "qa.parquet", "people.parquet"):
        a = (tmp_path / "a" / f).read_bytes()
        assert a == (tmp_path / "b" / f).read_bytes(), f
        assert a != (tmp_path / "c" / f).read_bytes(), f
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"


def test_multik(tmp_path):
    bio, qa, people = make(tmp_path, bios_per_person=4)
    assert len(bio) == 4 * 300
    assert (bio.groupby("person_id").size() == 4).all()
    assert bio["person_id"].is_monotonic_increasing
    distinct = bio.groupby("person_id")["text"].nunique()
    assert (distinct > 1).mean() > 0.9  # templates are resampled per bio
    assert len(qa) == 6 * 300 and len(people) == 300


def test_permute_changes_order_keeps_sentences(tmp_path):
    plain, _, people = make(tmp_path / "plain", fullname=True)
    perm, _, _ = make(tmp_path / "perm", fullname=True, permute=True)
    changed = 0
    for a, b in zip(plain["text"], perm["text"], strict=True):
        sa, sb = sentences(a), sentences(b)
        assert sorted(sa) == sorted(sb)
        changed += sa != sb
    assert changed > 250
    # without fullname, the first sentence of a permuted bio still carries the full name
    perm2, _, _ = make(tmp_path / "perm2", permute=True)
    for text, name in zip(perm2["text"], people["name"], strict=True):
        assert text.startswith(name) and text.count(name) == 1


def test_fullname_in_every_sentence(tmp_path):
    bio, _, people = make(tmp_path, fullname=True, bios_per_person=2)
    names = dict(zip(people["person_id"], people["name"], strict=True))
    for pid, text in zip(bio["person_id"], bio["text"], strict=True):
        sents = sentences(text)
        assert len(sents) == 6
        assert all(s.startswith(names[pid]) for s in sents)
        assert not re.search(r"\b(He|She|His|Her)\b", text)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"n_people": 0}, "n_people"),
        (
            {"n_people": 9, "pools": {"first_names": 2, "middle_names": 2, "last_names": 2}},
            "n_people",
        ),
        ({"n_people": 10, "qa_train_fraction": 0.01}, "qa_train_fraction"),
        ({"n_people": 10, "qa_train_fraction": 0.99}, "qa_train_fraction"),
        ({"qa_train_fraction": 1.0}, "qa_train_fraction"),
        ({"templates_per_attribute": 99}, "templates_per_attribute"),
        ({"templates_per_attribute": 0}, "templates_per_attribute"),
        ({"bios_per_person": 0}, "bios_per_person"),
        ({"pools": {"majors": 10**6}}, "pools.majors"),
        ({"pools": {"pets": 3}}, "pools"),
        ({"permute": "yes"}, "permute"),
    ],
)
def test_bad_configs(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=re.escape(f"world.{key}")):
        make(tmp_path, **overrides)
    assert not list(tmp_path.glob("*.parquet"))


def test_full_pool_names_possible(tmp_path):
    _, _, people = make(
        tmp_path,
        n_people=8,
        qa_train_fraction=0.5,
        pools={"first_names": 2, "middle_names": 2, "last_names": 2},
    )
    assert people["name"].nunique() == 8


def test_load_world_as_a_datasetdict(tmp_path):
    import crosstrace
    from crosstrace.world import save_world

    _, qa, _ = make(tmp_path, n_people=20)
    world = crosstrace.load_world(tmp_path)
    assert set(world) == {"train", "test", "bio", "people"}
    assert len(world["train"]) + len(world["test"]) == len(qa)
    assert set(world["train"]["split"]) == {"train"} and set(world["test"]["split"]) == {"test"}
    save_world(tmp_path, tmp_path / "world")
    again = crosstrace.load_world(tmp_path / "world")
    assert again["test"]["question"] == world["test"]["question"]
    assert len(again["people"]) == 20


def test_training_examples_tokenise_once_through_dataset_map(tmp_path):
    import numpy as np

    from crosstrace.batches import tokenize_bio, tokenize_qa, training_examples
    from crosstrace.models import bos_id, build_base, load_model

    make(tmp_path, n_people=20)
    tiny = {"arch": "llama", "layers": 1, "hidden": 8, "heads": 1, "intermediate": 8}
    build_base({"tiny": tiny}, tmp_path, tmp_path / "base", bos=True)
    model, tok = load_model(tmp_path / "base")
    bos = bos_id(model, tok)
    bio, qa = read_bio(tmp_path / "bio.parquet"), read_qa(tmp_path / "qa.parquet")
    first = training_examples(bio, qa, tok, bos, cache_dir=tmp_path / "tok")
    cached = sorted((tmp_path / "tok").glob("*.arrow"))
    assert [p.name.split("-")[0] for p in cached] == ["bio", "qa"]
    stamps = [p.stat().st_mtime_ns for p in cached]
    second = training_examples(bio, qa, tok, bos, cache_dir=tmp_path / "tok")
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # loaded, not written again
    train = qa[qa.split == "train"]
    want = {
        "bio": tokenize_bio(bio.text.tolist(), tok, bos),
        "qa": tokenize_qa(train.question.tolist(), train.answer.tolist(), tok, bos),
    }
    for task in ("bio", "qa"):
        for got in (first[task], second[task]):
            pairs = zip(got.input_ids + got.labels, want[task].input_ids + want[task].labels,
                        strict=True)  # fmt: skip
            assert all(np.array_equal(a, b) for a, b in pairs)


def test_world_keys_left_out_take_the_schema_defaults():
    from dataclasses import asdict

    from crosstrace.config import section_defaults
    from crosstrace.world import parse_world_config

    defaults = section_defaults("world")
    parsed = asdict(parse_world_config({}))
    for key, value in defaults.items():
        # pools: compared below; vary_with_seed: the workflow's choice of world per seed
        if key not in ("pools", "vary_with_seed"):
            assert parsed[key] == value, key
    assert parsed["single_token_names"] is True  # the schema's default, not a second copy
