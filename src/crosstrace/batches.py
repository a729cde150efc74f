"""Tokenised examples and the deterministic step plan of each training phase.

A step is a list of task-homogeneous micro-batches, BIO first, so the gradient of a step
splits by task exactly. The plan depends only on the seed, the phase and the step index,
which is what makes resuming from a checkpoint exact.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from crosstrace.errors import ConfigError, InputDataError
from crosstrace.runs import PHASES
from crosstrace.world import qa_prompt, qa_target

IGNORE = -100
ALL, HALF_A, OTHERS = "all", "a", "others"  # MicroBatch.part


@dataclass(frozen=True)
class Examples:
    """Token ids and loss labels of one task's examples (ragged)."""

    task: str
    input_ids: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.input_ids)

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        """Per example: its tokens."""
        return np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    @functools.cached_property
    def supervised_tokens(self) -> np.ndarray:
        """Per example: how many positions carry a loss (labels shifted by one)."""
        return np.array([int((lab[1:] != IGNORE).sum()) for lab in self.labels], dtype=np.int64)


def _no_unknown(encoded: list[list[int]], texts: list[str], tokenizer) -> None:
    """Refuse text the tokenizer does not know: with a word-level vocabulary an unknown word
    means data of another world than the one the model's vocabulary was built from."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return
    for ids, text in zip(encoded, texts, strict=True):
        if unk in ids:
            word = tokenizer.convert_ids_to_tokens(unk)
            raise InputDataError(
                f"{text!r} has words the model's tokenizer does not know (read as {word}): "
                "the data is of another world than the one the model was built for"
            )


def tokenize_bio(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, bos_id: int | None = None
) -> Examples:
    """BIO examples: loss on every token (the model predicts each next word and the EOS).

    With ``bos_id`` each sequence starts with it; the BOS itself is never a target.
    """
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    _no_unknown(encoded, texts, tokenizer)
    eos = tokenizer.eos_token_id
    start = [] if bos_id is None else [bos_id]
    ids = [np.asarray([*start, *seq, eos], dtype=np.int64) for seq in encoded]
    labels = []
    for seq in ids:
        lab = seq.copy()
        lab[: len(start)] = IGNORE
        labels.append(lab)
    return Examples("bio", ids, labels)


def tokenize_bio_values(
    texts: list[str],
    spans: np.ndarray,
    tokenizer: PreTrainedTokenizerBase,
    bos_id: int | None = None,
) -> Examples:
    """BIO examples whose loss covers only the attribute values: the tokens inside the
    character spans ``spans`` ([n_texts, n_spans, 2] of start, end) are targets; the name,
    the template words and the EOS are not. The ids are :func:`tokenize_bio`'s."""
    if spans.ndim != 3 or spans.shape[0] != len(texts) or spans.shape[2] != 2:
        raise InputDataError(
            f"value spans of shape {tuple(spans.shape)} do not match {len(texts)} bios"
        )
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    _no_unknown(encoded["input_ids"], texts, tokenizer)
    eos = tokenizer.eos_token_id
    start = [] if bos_id is None else [bos_id]
    ids, labels = [], []
    for seq, offsets, text_spans in zip(
        encoded["input_ids"], encoded["offset_mapping"], spans, strict=True
    ):
        full = np.asarray([*start, *seq, eos], dtype=np.int64)
        begin = np.asarray([o[0] for o in offsets], dtype=np.int64)
        end = np.asarray([o[1] for o in offsets], dtype=np.int64)
        inside = np.zeros(len(seq), dtype=bool)
        for lo, hi in text_spans:
            inside |= (begin >= lo) & (end <= hi) & (end > begin)
        lab = np.full_like(full, IGNORE)
        where = np.flatnonzero(inside) + len(start)
        lab[where] = full[where]
        ids.append(full)
        labels.append(lab)
    return Examples("bio", ids, labels)


def tokenize_qa(
    questions: list[str],
    answers: list[str],
    tokenizer: PreTrainedTokenizerBase,
    bos_id: int | None = None,
) -> Examples:
    """QA examples: loss on the answer tokens (and the closing EOS) only."""
    prompts = tokenizer([qa_prompt(q) for q in questions], add_special_tokens=False)["input_ids"]
    targets = tokenizer([qa_target(a) for a in answers], add_special_tokens=False)["input_ids"]
    _no_unknown(prompts, questions, tokenizer)
    _no_unknown(targets, answers, tokenizer)
    eos = tokenizer.eos_token_id
    start = [] if bos_id is None else [bos_id]
    ids, labels = [], []
    for prompt, target in zip(prompts, targets, strict=True):
        seq = np.asarray([*start, *prompt, *target, eos], dtype=np.int64)
        lab = seq.copy()
        lab[: len(start) + len(prompt)] = IGNORE
        ids.append(seq)
        labels.append(lab)
    return Examples("qa", ids, labels)


def _tokenized(
    frame: pd.DataFrame,
    task: str,
    tokenizer: PreTrainedTokenizerBase,
    bos_id: int | None,
    cache_dir: str | os.PathLike[str] | None,
) -> Examples:
    """One task's examples through ``datasets.Dataset.map`` (batched); with ``cache_dir`` the
    result is an Arrow file there, keyed by the data, the tokenizer and the BOS setting, and a
    later call (another job, another seed) loads it instead of tokenising again."""
    from datasets import Dataset

    columns = ["text"] if task == "bio" else ["question", "answer"]
    ds = Dataset.from_pandas(frame[columns].reset_index(drop=True), preserve_index=False)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        if task == "bio":
            ex = tokenize_bio(batch["text"], tokenizer, bos_id)
        else:
            ex = tokenize_qa(batch["question"], batch["answer"], tokenizer, bos_id)
        return {"input_ids": [a.tolist() for a in ex.input_ids],
                "labels": [a.tolist() for a in ex.labels]}  # fmt: skip

    key = hashlib.sha256(
        json.dumps([ds._fingerprint, task, bos_id, tokenizer.backend_tokenizer.to_str()]).encode()
    ).hexdigest()[:20]
    kwargs: dict = {"keep_in_memory": True}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs = {"cache_file_name": str(Path(cache_dir) / f"{task}-{key}.arrow")}
    out = ds.map(encode, batched=True, batch_size=4096, remove_columns=columns,
                 new_fingerprint=key, desc=f"tokenize {task}", **kwargs)  # fmt: skip
    ids = [np.asarray(x, dtype=np.int64) for x in out["input_ids"]]
    labels = [np.asarray(x, dtype=np.int64) for x in out["labels"]]
    return Examples(task, ids, labels)


def training_examples(
    bio: pd.DataFrame,
    qa: pd.DataFrame,
    tokenizer: PreTrainedTokenizerBase,
    bos_id: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Examples]:
    """All BIO texts and the QA pairs of the training split (``bos_id``: see
    :func:`crosstrace.models.bos_id`, the one reader of a model folder's BOS setting),
    tokenised through ``Dataset.map``, cached in ``cache_dir`` when given."""
    train_qa = qa[qa["split"] == "train"]
    return {
        "bio": _tokenized(bio, "bio", tokenizer, bos_id, cache_dir),
        "qa": _tokenized(train_qa, "qa", tokenizer, bos_id, cache_dir),
    }


def in_half_a(bio: pd.DataFrame, qa: pd.DataFrame, half_a: np.ndarray) -> dict[str, np.ndarray]:
    """Per task, one bool per example of :func:`training_examples` (same frames, same order):
    whether the example is about a person of ``half_a``."""
    train_qa = qa[qa["split"] == "train"]
    return {
        "bio": bio["person_id"].isin(half_a).to_numpy(),
        "qa": train_qa["person_id"].isin(half_a).to_numpy(),
    }


def pack(examples: Examples, length: int, seed: int) -> Examples:
    """Concatenate a task's examples into rows of at most ``length`` tokens (bioS packing).

    Each example keeps its tokens and labels (it ends with EOS, so rows are EOS-separated);
    no example is split across rows, and the first token of each example is never a target,
    as without packing. The grouping is fixed by ``seed``; epochs permute the rows.
    """
    longest = max((len(ids) for ids in examples.input_ids), default=0)
    if longest > length:
        raise ConfigError(
            f"training.pack_length ({length}) is shorter than the longest {examples.task} "
            f"example ({longest} tokens); raise it (examples are never split or truncated)"
        )
    order = np.random.default_rng([seed, 3, {"bio": 1, "qa": 2}[examples.task]]).permutation(
        len(examples)
    )
    rows_ids: list[np.ndarray] = []
    rows_labels: list[np.ndarray] = []
    ids_part: list[np.ndarray] = []
    label_part: list[np.ndarray] = []
    used = 0
    for i in order:
        ids = examples.input_ids[i]
        if used + len(ids) > length:
            rows_ids.append(np.concatenate(ids_part))
            rows_labels.append(np.concatenate(label_part))
            ids_part, label_part, used = [], [], 0
        labels = examples.labels[i].copy()
        labels[0] = IGNORE  # predicted from the previous example's EOS otherwise
        ids_part.append(ids)
        label_part.append(labels)
        used += len(ids)
    if ids_part:
        rows_ids.append(np.concatenate(ids_part))
        rows_labels.append(np.concatenate(label_part))
    return Examples(examples.task, rows_ids, rows_labels)


@dataclass(frozen=True)
class MicroBatch:
    task: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    # 0.0 marks a stand-in: a rank with no example left for a pass that every rank must make
    # (FSDP gathers parameters in every forward) runs one example whose loss counts zero.
    weight: float = 1.0
    # which people the examples are of, where the step is split by people halves
    # (HALF_A or OTHERS; trace.kinds with people), else ALL
    part: str = ALL

    @property
    def n_sequences(self) -> int:
        return int(self.input_ids.shape[0])


def collate(examples: Examples, index: np.ndarray, pad_id: int) -> MicroBatch:
    """Right-pad the chosen examples into one micro-batch."""
    length = max(len(examples.input_ids[i]) for i in index)
    ids = np.full((len(index), length), pad_id, dtype=np.int64)
    labels = np.full((len(index), length), IGNORE, dtype=np.int64)
    mask = np.zeros((len(index), length), dtype=np.int64)
    for row, i in enumerate(index):
        n = len(examples.input_ids[i])
        ids[row, :n] = examples.input_ids[i]
        labels[row, :n] = examples.labels[i]
        mask[row, :n] = 1
    return MicroBatch(
        examples.task, torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)
    )


class StepPlan:
    """Which examples each optimizer step uses, for phase ``bio``, ``qa`` or ``mix``.

    ``bio``/``qa``: each epoch is a fresh permutation of that task's examples, cut into steps of
    ``batch_size``. ``mix``: an epoch is one pass over the BIO examples; each step holds
    ``round(batch_size * qa_ratio)`` QA examples drawn from a cycling permutation of the
    training QA and the rest BIO.

    ``in_half_a`` (per task, one bool per example: is it about a person of half A of the
    trained people) splits each task's micro-batches of a step into those of half A, then the
    others (:meth:`parts`); which examples a step holds does not change.
    """

    def __init__(
        self,
        phase: str,
        sizes: dict[str, int],
        *,
        batch_size: int,
        epochs: int,
        seed: int,
        qa_ratio: float = 0.5,
        grad_accum: int = 1,
        in_half_a: dict[str, np.ndarray] | None = None,
    ) -> None:
        if phase not in PHASES:
            raise ConfigError(f"training phase {phase!r} is not one of {', '.join(PHASES)}")
        if batch_size < 1 or epochs < 0 or grad_accum < 1:
            raise ConfigError("training.batch_size and grad_accum must be ≥ 1 and epochs ≥ 0")
        self.phase, self.sizes, self.epochs, self.seed = phase, sizes, epochs, seed
        self.grad_accum = grad_accum
        self.in_half_a = in_half_a
        for task, mask in (in_half_a or {}).items():
            if len(mask) != sizes.get(task, 0):
                raise InputDataError(
                    f"{len(mask)} people-half labels for {sizes.get(task, 0)} {task} examples"
                )
        if phase == "mix":
            if not 0.0 <= qa_ratio < 1.0:
                raise ConfigError(f"training.qa_ratio must be in [0, 1), got {qa_ratio}")
            self.per_step = {"qa": round(batch_size * qa_ratio)}
            self.per_step["bio"] = batch_size - self.per_step["qa"]
            self.driver = "bio"
        else:
            self.per_step = {phase: batch_size}
            self.driver = phase
        for task, n in self.per_step.items():
            if n > 0 and sizes.get(task, 0) == 0:
                raise ConfigError(f"phase {phase!r} needs {task} examples but there are none")
        self.steps_per_epoch = math.ceil(sizes[self.driver] / self.per_step[self.driver])
        self.total_steps = self.steps_per_epoch * epochs

    def _permutation(self, task: str, cycle: int) -> np.ndarray:
        salt = {"bio": 1, "qa": 2}[task]
        rng = np.random.default_rng([self.seed, salt, cycle])
        return rng.permutation(self.sizes[task])

    def step_indices(self, step: int) -> dict[str, np.ndarray]:
        """Example indices per task for optimizer step ``step`` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        out: dict[str, np.ndarray] = {}
        for task, n in self.per_step.items():
            if n == 0:
                continue
            if task == self.driver:
                perm = self._permutation(task, epoch)
                out[task] = perm[within * n : (within + 1) * n]
            else:  # a stream that cycles through the task's examples across epochs
                start = step * n
                size = self.sizes[task]
                chunks, pos = [], start
                while pos < start + n:
                    cycle, offset = divmod(pos, size)
                    take = min(size - offset, start + n - pos)
                    chunks.append(self._permutation(task, cycle)[offset : offset + take])
                    pos += take
                out[task] = np.concatenate(chunks)
        return out

    def tasks(self) -> list[str]:
        """The tasks of every step, in backward order (BIO before QA)."""
        return sorted(task for task, n in self.per_step.items() if n > 0)

    def parts(self) -> tuple[str, ...]:
        """The parts of each task's micro-batches in a step, in backward order."""
        return (HALF_A, OTHERS) if self.in_half_a is not None else (ALL,)

    def _split_by_part(self, task: str, index: np.ndarray) -> list[tuple[str, np.ndarray]]:
        if self.in_half_a is None:
            return [(ALL, index)]
        in_a = self.in_half_a[task][index]
        return [(HALF_A, index[in_a]), (OTHERS, index[~in_a])]

    def supervised_tokens(self, step: int, examples: dict[str, Examples]) -> dict[str, int]:
        """Supervised positions per task in the whole step (all ranks together): what each
        task's summed token loss is normalised by, on every rank alike."""
        return {
            task: int(examples[task].supervised_tokens[index].sum())
            for task, index in sorted(self.step_indices(step).items())
        }

    def micro_batches(
        self,
        step: int,
        examples: dict[str, Examples],
        pad_id: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        equal_counts: bool = False,
    ) -> list[MicroBatch]:
        """The step's micro-batches, task-homogeneous, BIO before QA (and with ``in_half_a``
        homogeneous in the part too, half A before the others, each part cut as a task is).

        With ``world_size`` > 1, rank ``rank`` takes its contiguous slice of each task's
        examples (``np.array_split``: sizes differ by at most one), cut into up to
        ``grad_accum`` micro-batches; the ranks' slices together are the whole step. A rank
        may get no example of a task when the step has fewer examples than ranks.
        ``equal_counts`` (FSDP, where every forward is a collective): every rank makes the same
        number of micro-batches per task, a rank short of examples stand-ins of weight 0.
        With more than one micro-batch, a task's examples are cut in order of length, so each
        micro-batch pads to a length close to its examples' own (the step's gradient is the
        same sum over its examples).
        """
        batches = []
        for task, whole in sorted(self.step_indices(step).items()):
            for part, index in self._split_by_part(task, whole):
                local = np.array_split(index, world_size)[rank]
                count = min(self.grad_accum, len(local))
                if equal_counts:
                    count = min(self.grad_accum, math.ceil(len(index) / world_size))
                if count > 1:  # similar lengths together: less padding, the same summed gradient
                    local = local[np.argsort(examples[task].lengths[local], kind="stable")]
                for chunk in np.array_split(local, count) if count else []:
                    if len(chunk):
                        mb = collate(examples[task], chunk, pad_id)
                    else:
                        mb = dataclasses.replace(collate(examples[task], index[:1], pad_id),
                                                 weight=0.0)  # fmt: skip
                    batches.append(dataclasses.replace(mb, part=part))
        return batches
