"""The word-level tokenizer: vocabulary, single-token names, save/load round trip."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from crosstrace.tokenizer import train_word_tokenizer, word_tokenizer_for_world
from crosstrace.world import qa_prompt, read_bio, read_people, read_qa, synthesize_world

TEXTS = [
    "Anna Marie Smith was born on March 3, 1950. She studied at Oakmont University.",
    "Anna Marie Smith's birthday is March 3, 1950.",
    "What is the birth city of Anna Marie Smith? Answer: Paris",
    "Anna Marie Smithson worked in Paris.",
]
QUESTION = "What is the birth city of Anna Marie Smith? Answer:"


def test_specials_and_vocab():
    tok = train_word_tokenizer(TEXTS)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert [tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token] == [
        "[PAD]",
        "[UNK]",
        "[BOS]",
        "[EOS]",
    ]
    assert [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2, 3]
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
    assert tok.convert_ids_to_tokens(tok("March 3, 1950.")["input_ids"]) == [
        "March",
        "3",
        ",",
        "1950",
        ".",
    ]
    assert tok("Zebra")["input_ids"] == [tok.unk_token_id]
    assert train_word_tokenizer(TEXTS).get_vocab() == tok.get_vocab()  # deterministic ids


def test_names_split_without_single_tokens():
    tok = train_word_tokenizer(TEXTS)
    tokens = tok.convert_ids_to_tokens(tok(QUESTION)["input_ids"])
    assert tokens == [
        "What", "is", "the", "birth", "city", "of", "Anna", "Marie", "Smith", "?", "Answer", ":"
    ]  # fmt: skip


def test_single_token_names_and_round_trip(tmp_path):
    names = ["Anna Marie Smith", "Anna Marie Smithson"]
    tok = train_word_tokenizer(TEXTS, single_tokens=names)
    ids = tok(QUESTION)["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens == [
        "What", "is", "the", "birth", "city", "of", "Anna Marie Smith", "?", "Answer", ":"
    ]  # fmt: skip
    for name in names:
        assert len(tok(name)["input_ids"]) == 1
    assert tok.convert_ids_to_tokens(tok("Anna Marie Smith's birthday")["input_ids"])[:2] == [
        "Anna Marie Smith",
        "'",
    ]
    assert tok.convert_ids_to_tokens(tok("Anna Marie Smithson worked")["input_ids"])[0] == names[1]

    tok.save_pretrained(tmp_path)
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        loaded = cls.from_pretrained(tmp_path)
        assert loaded(QUESTION)["input_ids"] == ids
        assert loaded.get_vocab() == tok.get_vocab()
        assert loaded.pad_token_id == 0 and loaded.eos_token_id == 3
        assert len(loaded(names[1])["input_ids"]) == 1


def test_word_tokenizer_for_world(tmp_path):
    cfg = {"seed": 3, "n_people": 200, "qa_train_fraction": 0.5, "bios_per_person": 2}
    paths = [tmp_path / "bio.parquet", tmp_path / "qa.parquet", tmp_path / "people.parquet"]
    synthesize_world(cfg, *paths)
    bio, qa, people = read_bio(paths[0]), read_qa(paths[1]), read_people(paths[2])
    names = set(people["name"])

    tok = word_tokenizer_for_world(bio, qa, people, single_token_names=True)
    for q in qa["question"]:
        tokens = tok.convert_ids_to_tokens(tok(qa_prompt(q))["input_ids"])
        assert sum(t in names for t in tokens) == 1
        assert tokens[-2:] == ["Answer", ":"]
    for text in bio["text"]:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        assert sum(t in names for t in tok.convert_ids_to_tokens(ids)) >= 1
    for answer in qa["answer"]:
        assert tok.unk_token_id not in tok(" " + answer)["input_ids"]

    plain = word_tokenizer_for_world(bio, qa, people, single_token_names=False)
    assert not names & set(plain.get_vocab())
    name = people["name"].iloc[0]
    assert len(plain(name)["input_ids"]) == 3 and len(tok(name)["input_ids"]) == 1


def test_bos_asked_for_but_tokenizer_has_none_is_a_config_error():
    from transformers import LlamaConfig, LlamaForCausalLM

    from crosstrace.errors import ConfigError
    from crosstrace.models import BOS_KEY, bos_id, record_bos

    tok = train_word_tokenizer(["a b c"])
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1,
                    num_attention_heads=1, intermediate_size=8)
    )  # fmt: skip
    record_bos(model, tok, True)
    assert getattr(model.config, BOS_KEY) is True and bos_id(model, tok) == tok.bos_token_id
    tok.bos_token = None
    with pytest.raises(ConfigError, match=r"models\.\*\.bos is true but the tokenizer has no BOS"):
        record_bos(model, tok, True)
    record_bos(model, tok, False)  # no BOS asked for: fine, and nothing is prepended
    assert bos_id(model, tok) is None
