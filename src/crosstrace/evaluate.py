"""QA evaluation: batched greedy decoding after "Answer:", exact match and first-token accuracy."""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crosstrace.atomic import atomic_file
from crosstrace.devices import resolve_device
from crosstrace.errors import CrosstraceError
from crosstrace.models import bos_id, count_parameters, load_model
from crosstrace.world import qa_prompt, qa_target, read_qa

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
    batch_size: int = 1024,
    max_new_tokens: int = 12,
    device: str = "auto",
) -> dict[str, Any]:
    """Predict every QA row with the model in ``model_dir``; write predictions to Parquet."""
    model, tokenizer = load_model(model_dir, resolve_device(device))
    qa = read_qa(qa_path)
    try:
        predictions = predict(
            model,
            tokenizer,
            qa,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=True,
        )
    except torch.cuda.OutOfMemoryError as exc:
        n = count_parameters(model)
        raise CrosstraceError(
            f"CUDA out of memory while evaluating {model_dir}: model has {n / 1e6:.1f}M "
            f"parameters, evaluation batch_size={batch_size}, max_new_tokens={max_new_tokens}. "
            "Lower evaluation.batch_size, or use a GPU with more memory."
        ) from exc
    with atomic_file(out_path) as tmp:
        predictions.to_parquet(tmp, index=False)
    table = summarize(predictions)
    overall = table[table["attribute"] == "all"].set_index("split")["accuracy"]
    return {split: float(acc) for split, acc in overall.items()}
