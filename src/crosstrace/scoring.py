"""QA exact match by teacher forcing: one forward pass instead of a generation loop.

Greedy decoding reproduces the answer exactly iff, with the correct prefix fed in, the argmax
at every answer position is the answer's next token and the argmax after the last answer
token is EOS: each greedy step then sees the same prefix as the teacher-forced pass. So the
exact match of this module equals that of ``crosstrace.evaluate.predict`` (greedy, cut at
EOS), as long as ``max_new_tokens`` covers the answer and its EOS. The examples are the
training format of QA (``crosstrace.batches.tokenize_qa``), so prompts are tokenised exactly as
in training.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crosstrace.batches import IGNORE, Examples, collate, tokenize_qa


def qa_examples(qa: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, bos: int | None) -> Examples:
    """Every QA row (both splits) as a training-format example: [BOS,] prompt, answer, EOS."""
    return tokenize_qa(qa["question"].tolist(), qa["answer"].tolist(), tokenizer, bos)


@torch.inference_mode()
def qa_exact_match(
    model: PreTrainedModel, examples: Examples, *, batch_size: int = 128
) -> np.ndarray:
    """Per example: is every supervised token (answer and EOS) the model's argmax?

    ``batch_size`` sequences per forward pass (the ablation passes ``evaluation.batch_size``;
    the training curve, inside training, keeps this default so that the pass size is not a
    training parameter). It changes the padding only, not a decision. On a CPU small passes
    are faster per sequence: for the default tiny Llama, passes of 128 sequences of 10-16
    tokens scored 1.6x as fast as passes of 1,024 (benchmarks/bench_scoring.py).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    out = np.zeros(len(examples), dtype=bool)
    head = model.get_output_embeddings()
    try:
        for start in range(0, len(examples), batch_size):
            index = np.arange(start, min(start + batch_size, len(examples)))
            mb = collate(examples, index, pad)
            # right-padded: under the causal mask no real token sees a pad, so no mask is needed;
            # the output layer runs only where a target is supervised (as in training)
            hidden = model.base_model(input_ids=mb.input_ids.to(device))[0]
            target = mb.labels[:, 1:].to(device)
            keep = target != IGNORE
            pred = head(hidden[:, :-1][keep]).argmax(-1)
            wrong_rows = keep.nonzero()[:, 0][pred != target[keep]]
            ok = torch.ones(len(index), dtype=torch.bool, device=device)
            ok[wrong_rows] = False
            out[index] = ok.cpu().numpy()
    finally:
        model.train(was_training)
    return out
