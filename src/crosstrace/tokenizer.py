"""A word-level tokenizer for the tiny from-scratch models, trained on the synthetic corpus."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import pandas as pd
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from crosstrace.world import qa_prompt, qa_target

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)


def train_word_tokenizer(
    texts: Iterable[str], single_tokens: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """Build a WordLevel tokenizer holding every word of ``texts``.

    Words and punctuation are split apart; ids are deterministic (specials first, then by
    descending count, ties alphabetical). Each string of ``single_tokens`` (e.g. a full name
    with spaces) encodes to exactly one id. No BOS/EOS is added when encoding.
    """
    pre = Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre.pre_tokenize_str(text))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])):
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    singles = list(dict.fromkeys(s for s in single_tokens if s not in vocab))
    if singles:
        tok.add_tokens([AddedToken(s, single_word=True, normalized=False) for s in singles])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )


def word_tokenizer_for_world(
    bio_df: pd.DataFrame,
    qa_df: pd.DataFrame,
    people_df: pd.DataFrame,
    single_token_names: bool,
) -> PreTrainedTokenizerFast:
    """The tokenizer of a fact world: all BIO texts, QA prompts and answers; names as one
    token each when ``single_token_names``."""
    texts = [
        *bio_df["text"].tolist(),
        *(qa_prompt(q) for q in qa_df["question"]),
        *(qa_target(a) for a in qa_df["answer"]),
    ]
    singles = people_df["name"].tolist() if single_token_names else []
    return train_word_tokenizer(texts, singles)
