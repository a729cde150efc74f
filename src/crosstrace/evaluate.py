"""QA evaluation: batched greedy decoding after "Answer:", exact match and first-token accuracy."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crosstrace.atomic import atomic_file
from crosstrace.devices import resolve_device
from crosstrace.errors import CrosstraceError
from crosstrace.models import (
    bos_id,
    check_world,
    count_parameters,
    load_model,
    trained_precision,
)
from crosstrace.representation import representation_tables
from crosstrace.world import ATTRIBUTES, qa_prompt, qa_target, read_bio, read_people, read_qa

SPLIT_NAMES = {"train": "id", "test": "ood"}
_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Compare answers without whitespace: a word-level decode writes "March 3 , 1950"."""
    return _SPACE.sub("", text).casefold()


@torch.inference_mode()
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    qa: pd.DataFrame,
    *,
    batch_size: int = 1024,
    max_new_tokens: int = 12,
    progress: bool = False,
) -> pd.DataFrame:
    """Greedy answers for every row of ``qa`` (left-padded batches through ``generate``)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    start = [] if (bos := bos_id(model, tokenizer)) is None else [bos]
    prompts = [
        [*start, *ids]
        for ids in tokenizer([qa_prompt(q) for q in qa["question"]], add_special_tokens=False)[
            "input_ids"
        ]
    ]
    target_ids = tokenizer([qa_target(a) for a in qa["answer"]], add_special_tokens=False)[
        "input_ids"
    ]
    steps = min(max_new_tokens, max(len(t) for t in target_ids) + 1) if len(qa) else 1
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    generated: list[list[int]] = []
    try:
        for first in tqdm(
            range(0, len(prompts), batch_size), desc="evaluate", disable=not progress
        ):
            enc = tokenizer.pad(
                {"input_ids": prompts[first : first + batch_size]}, return_tensors="pt"
            ).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=steps,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                cut = row.index(eos) if eos in row else len(row)
                generated.append(row[:cut])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    first_ok = [
        bool(gen) and bool(tgt) and gen[0] == tgt[0]
        for gen, tgt in zip(generated, target_ids, strict=True)
    ]
    return pd.DataFrame(
        {
            "person_id": qa["person_id"].to_numpy(dtype=np.int32),
            "attribute": qa["attribute"].to_numpy(),
            "split": qa["split"].map(SPLIT_NAMES).to_numpy(),
            "question": qa["question"].to_numpy(),
            "answer": qa["answer"].to_numpy(),
            "prediction": [t.strip() for t in texts],
            "exact_match": [
                normalize_answer(t) == normalize_answer(a)
                for t, a in zip(texts, qa["answer"], strict=True)
            ],
            "first_token_correct": first_ok,
        }
    )


BIO_SPLIT_NAMES = {"train": "bio_id", "test": "bio_ood"}


@torch.inference_mode()
def bio_first_token(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    bio: pd.DataFrame,
    qa: pd.DataFrame,
    *,
    batch_size: int = 256,
) -> pd.DataFrame:
    """Memorisation diagnostic: teacher-forced, is each attribute's first token the argmax
    after its bio prefix? One row per bio and attribute, split ``bio_id`` (people whose QA is
    trained) or ``bio_ood`` (held-out people), in the columns of :func:`predict`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    start = [] if (bos := bos_id(model, tokenizer)) is None else [bos]
    split = qa.groupby("person_id")["split"].first().map(BIO_SPLIT_NAMES)
    enc = tokenizer(bio["text"].tolist(), add_special_tokens=False, return_offsets_mapping=True)
    rows: list[dict[str, Any]] = []
    targets: list[tuple[int, int, int]] = []  # (bio, position predicting, target id)
    for i, rec in enumerate(bio.itertuples(index=False)):
        ids, offsets = enc["input_ids"][i], enc["offset_mapping"][i]
        for a in ATTRIBUTES:
            begin, end = getattr(rec, f"{a}_start"), getattr(rec, f"{a}_end")
            j = next(k for k, (_, stop) in enumerate(offsets) if stop > begin)
            targets.append((i, len(start) + j - 1, ids[j]))
            rows.append(
                {
                    "person_id": rec.person_id,
                    "attribute": a,
                    "split": split[rec.person_id],
                    "question": rec.text[:begin],
                    "answer": rec.text[begin:end],
                }
            )
    predicted = np.zeros(len(targets), dtype=np.int64)
    sequences = [[*start, *ids] for ids in enc["input_ids"]]
    try:
        for first in range(0, len(sequences), batch_size):
            chunk = sequences[first : first + batch_size]
            ids = torch.full((len(chunk), max(map(len, chunk))), tokenizer.pad_token_id)
            for r, seq in enumerate(chunk):  # right padding: causal, pads come after
                ids[r, : len(seq)] = torch.as_tensor(seq)
            hidden = model.base_model(input_ids=ids.to(device))[0]
            sel = [(t, b - first, pos) for t, (b, pos, _) in enumerate(targets)
                   if first <= b < first + batch_size]  # fmt: skip
            index = torch.as_tensor([[r, pos] for _, r, pos in sel], device=device)
            logits = model.get_output_embeddings()(hidden[index[:, 0], index[:, 1]])
            predicted[[t for t, _, _ in sel]] = logits.argmax(-1).cpu().numpy()
    finally:
        model.train(was_training)
    correct = predicted == np.array([t for _, _, t in targets])
    frame = pd.DataFrame(rows)
    frame["person_id"] = frame["person_id"].astype(np.int32)
    frame["prediction"] = tokenizer.convert_ids_to_tokens(predicted.tolist())
    frame["exact_match"] = correct
    frame["first_token_correct"] = correct
    return frame


def summarize(predictions: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per split and attribute, with an ``all`` row per split."""
    per_attr = predictions.groupby(["split", "attribute"], as_index=False).agg(
        n=("exact_match", "size"),
        correct=("exact_match", "sum"),
        accuracy=("exact_match", "mean"),
        first_token_accuracy=("first_token_correct", "mean"),
    )
    overall = predictions.groupby("split", as_index=False).agg(
        n=("exact_match", "size"),
        correct=("exact_match", "sum"),
        accuracy=("exact_match", "mean"),
        first_token_accuracy=("first_token_correct", "mean"),
    )
    overall.insert(1, "attribute", "all")
    return pd.concat([per_attr, overall], ignore_index=True)


def evaluate_run(
    model_dir: str | os.PathLike[str],
    qa_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    bio_path: str | os.PathLike[str] | None = None,
    batch_size: int = 1024,
    max_new_tokens: int = 12,
    device: str = "auto",
    representation_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Predict every QA row with the model in ``model_dir``; write predictions to Parquet.

    With ``bio_path``, the memorisation diagnostic (:func:`bio_first_token`) adds rows of
    split ``bio_id`` / ``bio_ood``. With ``representation_out`` (and ``bio_path``, beside
    which people.parquet lies), also the name-token representation tables of
    ``crosstrace.representation`` at this checkpoint (θ_BIO: what the BIO stage stored
    before any QA training), written once both are computed.
    """
    if representation_out is not None and bio_path is None:
        raise CrosstraceError("the representation of a checkpoint needs the bios (bio_path)")
    model, tokenizer = load_model(model_dir, resolve_device(device))
    check_world(model, qa_path, f"the model folder {model_dir}")
    qa = read_qa(qa_path)
    bio = read_bio(bio_path) if bio_path is not None else None
    try:
        predictions = predict(
            model,
            tokenizer,
            qa,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=True,
        )
        if bio is not None:
            memorised = bio_first_token(
                model, tokenizer, bio, qa, batch_size=max(1, batch_size // 4)
            )
            predictions = pd.concat([predictions, memorised], ignore_index=True)
        if representation_out is not None:
            data = Path(bio_path).parent
            represented = representation_tables(
                model, tokenizer, read_people(data / "people.parquet"), bio, qa,
                bos_id(model, tokenizer),
            )  # fmt: skip
    except torch.cuda.OutOfMemoryError as exc:
        n = count_parameters(model)
        raise CrosstraceError(
            f"CUDA out of memory while evaluating {model_dir}: model has {n / 1e6:.1f}M "
            f"parameters, evaluation batch_size={batch_size}, max_new_tokens={max_new_tokens}. "
            "Lower evaluation.batch_size, or use a GPU with more memory."
        ) from exc
    predictions["precision"] = trained_precision(model)
    if representation_out is not None:
        with atomic_file(representation_out) as tmp:
            represented.to_parquet(tmp, index=False)
    with atomic_file(out_path) as tmp:
        predictions.to_parquet(tmp, index=False)
    table = summarize(predictions)
    overall = table[table["attribute"] == "all"].set_index("split")["accuracy"]
    return {split: float(acc) for split, acc in overall.items()}
