"""Representation consistency and token dependence at the final model θT.

**Name-token states.** For a person, the BIO-context state is the hidden state at the (last)
name token of their biography, which opens with the name; the QA-context state is the hidden
state at the name token of the question about one attribute ("What is the birth city of
NAME"). In a causal model the BIO-context state depends only on what precedes the name, so it
is the same for every attribute, while the QA-context state also sees the relation.

- ``cosine``: per layer (0 = embeddings), attribute and split (people whose QA was trained or
  held out), the mean cosine between a person's BIO-context and QA-context states, and the
  same for mismatched pairs (person i's BIO state with person j's QA state, j ≠ i) as the
  baseline.
- ``transfer``: per layer and attribute, a multinomial logistic regression (torch, L2) trained
  on the BIO-context states of the held-out people to predict the attribute's value, tested on
  the QA-context states of the same people. ``train_accuracy`` is its accuracy on the BIO
  states it was fitted to; ``chance`` is the share of the most frequent value. Birth dates are
  nearly unique, so their label is the year.

**Token dependence.** For QA of held-out people, the change in the teacher-forced
log-probability of the correct answer (summed over its tokens) when one prompt token is
replaced by the never-trained ``[UNK]`` token, per token class: ``name`` (the name's tokens),
``relation`` (the attribute-specific words of the question) and ``other`` (the rest of the
prompt, BOS excluded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from crosstrace.batches import IGNORE
from crosstrace.probes import PROBE_SEED
from crosstrace.templates import QA_TEMPLATES
from crosstrace.world import ATTRIBUTES, qa_prompt, qa_target

MAX_PEOPLE = 2000
GENERIC_WORDS = {"What", "Which", "Where", "is", "the", "of", "did", "?", "Answer", ":"}


def _encode(tokenizer, texts: Sequence[str], bos: int | None) -> list[list[int]]:
    start = [] if bos is None else [bos]
    return [start + ids for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


@torch.inference_mode()
def last_token_states(model, sequences: Sequence[Sequence[int]], *, batch_size: int = 256):
    """Hidden states at the last token of each sequence: [layers + 1, n, hidden] (float32)."""
    device = next(model.parameters()).device
    pad = model.config.pad_token_id or 0
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        length = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        hs = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
        ).hidden_states
        last = torch.tensor([len(s) - 1 for s in chunk], device=device)
        rows = torch.arange(len(chunk), device=device)
        out.append(torch.stack([h[rows, last].float().cpu() for h in hs]))
    return torch.cat(out, dim=1)


def name_prefixes(
    people: pd.DataFrame, bio: pd.DataFrame, tokenizer, bos: int | None
) -> tuple[list[list[int]], dict[str, list[list[int]]]]:
    """Token ids ending at the name: one BIO-context prefix per person, one QA prefix per
    person and attribute (people in the order of ``people``)."""
    first_bio = bio.drop_duplicates("person_id").set_index("person_id")["text"]
    bio_prefix = []
    for pid, name in zip(people["person_id"], people["name"], strict=True):
        text = first_bio[pid]
        if not text.startswith(name):
            raise ValueError(f"the bio of person {pid} does not open with the name {name!r}")
        bio_prefix.append(name)
    qa_prefix = {}
    for a in ATTRIBUTES:
        template = QA_TEMPLATES[a]
        head = template[: template.index("{name}")]
        qa_prefix[a] = _encode(tokenizer, [head + n for n in people["name"]], bos)
    return _encode(tokenizer, bio_prefix, bos), qa_prefix


def _label(attribute: str, values: pd.Series) -> np.ndarray:
    v = values.str.split().str[-1] if attribute == "birth_date" else values
    return pd.factorize(v)[0]


def fit_probe(x: torch.Tensor, y: np.ndarray, *, l2: float = 1e-3, steps: int = 100):
    """Multinomial logistic regression on standardised features (LBFGS); returns a predictor."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / std
    n_classes = int(y.max()) + 1
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    target = torch.from_numpy(y)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xs @ w + b, target) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    def predict(z: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return (((z - mean) / std) @ w + b).argmax(1).numpy()

    return predict


def representation_tables(
    model, tokenizer, people: pd.DataFrame, bio: pd.DataFrame, qa: pd.DataFrame,
    bos: int | None,
) -> pd.DataFrame:  # fmt: skip
    """Rows: (measure, layer, attribute, split, value, baseline, n) for cosine and transfer.

    Worlds of more than ``MAX_PEOPLE`` people use a fixed random subset of that size (the
    states of every layer are held in memory).
    """
    people = people.sort_values("person_id").reset_index(drop=True)
    if len(people) > MAX_PEOPLE:
        keep = np.random.default_rng(PROBE_SEED).choice(len(people), MAX_PEOPLE, replace=False)
        people = people.iloc[np.sort(keep)].reset_index(drop=True)
    split_of = qa.drop_duplicates("person_id").set_index("person_id")["split"]
    split = people["person_id"].map(split_of).map({"train": "id", "test": "ood"}).to_numpy()
    bio_prefix, qa_prefix = name_prefixes(people, bio, tokenizer, bos)
    h_bio = last_token_states(model, bio_prefix)
    rows = []
    for a in ATTRIBUTES:
        h_qa = last_token_states(model, qa_prefix[a])
        cos = torch.nn.functional.cosine_similarity(h_bio, h_qa, dim=-1)  # [layers, n]
        mis = torch.nn.functional.cosine_similarity(h_bio, h_qa.roll(1, dims=1), dim=-1)
        for s in ("id", "ood"):
            sel = torch.from_numpy(split == s)
            for layer in range(h_bio.shape[0]):
                rows.append(("cosine", layer, a, s, float(cos[layer, sel].mean()),
                             float(mis[layer, sel].mean()), int(sel.sum())))  # fmt: skip
        ood = np.flatnonzero(split == "ood")
        y = _label(a, people[a].iloc[ood].reset_index(drop=True))
        chance = float(np.bincount(y).max() / len(y))
        for layer in range(h_bio.shape[0]):
            predict = fit_probe(h_bio[layer, ood], y)
            train_acc = float((predict(h_bio[layer, ood]) == y).mean())
            transfer = float((predict(h_qa[layer, ood]) == y).mean())
            rows.append(("transfer", layer, a, "ood", transfer, chance, len(ood)))
            rows.append(("train_accuracy", layer, a, "ood", train_acc, chance, len(ood)))
    return pd.DataFrame(
        rows, columns=["measure", "layer", "attribute", "split", "value", "baseline", "n"]
    )


def relation_words(attribute: str) -> set[str]:
    words = QA_TEMPLATES[attribute].replace("?", " ?").split()
    return {w for w in words if w not in GENERIC_WORDS and w != "{name}"}


@torch.inference_mode()
def answer_logprob(model, sequences: list[list[int]], labels: list[list[int]], *, batch=512):
    """Teacher-forced log p(answer) per sequence: the sum over positions whose label is set."""
    device = next(model.parameters()).device
    pad = model.config.pad_token_id or 0
    out = []
    for start in range(0, len(sequences), batch):
        seqs, labs = sequences[start : start + batch], labels[start : start + batch]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        lab = torch.full((len(seqs), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, (s, t) in enumerate(zip(seqs, labs, strict=True)):
            ids[i, : len(s)], lab[i, : len(t)], mask[i, : len(s)] = (
                torch.tensor(s), torch.tensor(t), 1
            )  # fmt: skip
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).cpu()
        target = lab[:, 1:]
        ok = target != IGNORE
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out.append((picked * ok).sum(1))
    return torch.cat(out).numpy()


def token_dependence(
    model, tokenizer, qa: pd.DataFrame, bos: int | None, *, people: Sequence[int]
) -> pd.DataFrame:
    """Per question of ``people`` and prompt position: Δ log p(answer) when that token is
    replaced by [UNK]. Rows: (person_id, attribute, position, token_class, token, logp, delta)."""
    q = qa[qa["person_id"].isin(people)].sort_values(["person_id", "attribute"])
    unk = tokenizer.unk_token_id
    start = 0 if bos is None else 1
    seqs, labels, meta = [], [], []
    for pid, a, question, answer in q[["person_id", "attribute", "question", "answer"]].itertuples(
        index=False
    ):
        prompt = _encode(tokenizer, [qa_prompt(question)], bos)[0]
        target = tokenizer(qa_target(answer), add_special_tokens=False)["input_ids"]
        head, tail = QA_TEMPLATES[a].split("{name}")
        name = question[len(head) : len(question) - len(tail)]
        n_head = len(_encode(tokenizer, [head], bos)[0])  # the name's tokens: [n_head, n_name)
        n_name = len(_encode(tokenizer, [head + name], bos)[0])
        rel = relation_words(a)
        seq = prompt + target
        lab = [IGNORE] * len(prompt) + target
        seqs.append(seq)
        labels.append(lab)
        meta.append((pid, a, -1, "none", ""))
        for pos in range(start, len(prompt)):
            word = tokenizer.convert_ids_to_tokens(prompt[pos])
            kind = "name" if n_head <= pos < n_name else "relation" if word in rel else "other"
            changed = list(seq)
            changed[pos] = unk
            seqs.append(changed)
            labels.append(lab)
            meta.append((pid, a, pos, kind, word))
    logp = answer_logprob(model, seqs, labels)
    df = pd.DataFrame(meta, columns=["person_id", "attribute", "position", "token_class", "token"])
    df["logp"] = logp
    clean = df[df["token_class"] == "none"].set_index(["person_id", "attribute"])["logp"]
    df["delta"] = df["logp"] - df.set_index(["person_id", "attribute"]).index.map(clean)
    return df[df["token_class"] != "none"].reset_index(drop=True)
