"""Gradient consistency, representations and token dependence: checked against independent
computations, and invariant where they must be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from crosstrace.batches import IGNORE, StepPlan, tokenize_bio_values, training_examples
from crosstrace.consistency import Slicer, records_at, records_every
from crosstrace.errors import ConfigError, InputDataError
from crosstrace.loss import supervised_loss_sum, task_coefficients
from crosstrace.models import bos_id, build_base, load_model
from crosstrace.param_map import ParamMap
from crosstrace.probes import build_probes, probe_gradients, probe_people, value_spans
from crosstrace.representation import (
    answer_logprob,
    last_token_states,
    representation_tables,
    token_dependence,
)
from crosstrace.step import optimizer_step
from crosstrace.trace import GradientTrace
from crosstrace.train import train_run
from crosstrace.world import read_bio, read_people, read_qa, synthesize_world

TINY = {"arch": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
        "intermediate": 64}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("world")
    cfg = {"seed": 2, "n_people": 30, "qa_train_fraction": 0.5, "templates_per_attribute": 3}
    synthesize_world(cfg, data / "bio.parquet", data / "qa.parquet", data / "people.parquet")
    return data


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def base(request, world, tmp_path_factory) -> Path:
    tiny = dict(TINY, arch=request.param)
    if request.param == "gpt_neox":
        tiny.pop("kv_heads")
    out = tmp_path_factory.mktemp(f"base-{request.param}") / "base"
    build_base({"tiny": tiny}, world, out, seed=0, bos=True)
    return out


def test_in_step_dot_and_norms_match_one_backward_per_task(base, world):
    model, tokenizer = load_model(base)
    bos = bos_id(model, tokenizer)
    examples = training_examples(read_bio(world / "bio.parquet"), read_qa(world / "qa.parquet"),
                                 tokenizer, bos)  # fmt: skip
    plan = StepPlan("mix", {t: len(e) for t, e in examples.items()}, batch_size=12, epochs=1,
                    seed=0, qa_ratio=0.5, grad_accum=2)  # fmt: skip
    batches = plan.micro_batches(0, examples, tokenizer.pad_token_id)
    params = [p for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    # independent: one backward per task of its weighted share of the step's loss
    tokens = {}
    for mb in batches:
        tokens[mb.task] = tokens.get(mb.task, 0) + int((mb.labels[:, 1:] != -100).sum())
    coef = task_coefficients(tokens, 0.7)
    want = {}
    for task in ("bio", "qa"):
        loss = sum(
            supervised_loss_sum(model, mb.input_ids, None, mb.labels) * coef[task]
            for mb in batches
            if mb.task == task
        )
        want[task] = torch.autograd.grad(loss, params)
    shapes = [(n, tuple(p.shape)) for n, p in zip(names, params, strict=True)]
    slicer = Slicer.of(ParamMap(model.config), shapes)
    expected = pd.DataFrame(slicer.stats(want["bio"], want["qa"]))
    got = []
    tracer = GradientTrace(model.named_parameters())
    optim = torch.optim.SGD(params, lr=0.0)
    optimizer_step(model, batches, optim, tracer, lr=0.0, max_grad_norm=1.0, amp=None,
                   qa_loss_weight=0.7,
                   on_task_gradients=lambda b, q: got.extend(slicer.stats(b, q)))  # fmt: skip
    got = pd.DataFrame(got)
    assert got[[0, 1, 2, 3, 4]].equals(expected[[0, 1, 2, 3, 4]])
    for col in (5, 6, 7):  # dot, |g_bio|², |g_qa|²
        np.testing.assert_allclose(got[col], expected[col], rtol=1e-4, atol=1e-12)
    # the slices add up to whole tensors: Σ dot over slices = the tensor's dot product
    whole = sum(float((b * q).sum()) for b, q in zip(want["bio"], want["qa"], strict=True))
    assert got[5].sum() == pytest.approx(whole, rel=1e-4, abs=1e-12)


def test_probe_batches_depend_on_the_world_only(world, base):
    qa = read_qa(world / "qa.parquet")
    a, b = probe_people(qa, 5), probe_people(qa, 5)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    train = set(qa[qa.split == "train"].person_id)
    assert set(a["probe_id"]) <= train and not set(a["probe_ood"]) & train
    _, tokenizer = load_model(base)
    bio = read_bio(world / "bio.parquet")
    p1 = build_probes(bio, qa, tokenizer, 5, 2)
    p2 = build_probes(bio, qa, tokenizer, 5, 2)
    for s in p1.examples:
        for task in ("bio", "qa"):
            x, y = p1.examples[s][task], p2.examples[s][task]
            assert all(np.array_equal(i, j) for i, j in zip(x.input_ids, y.input_ids, strict=True))
    with pytest.raises(ConfigError, match="probe_people=99 but the world has only 15"):
        probe_people(qa, 99)


def test_consistency_rows_and_resume(base, world, tmp_path, monkeypatch):
    """Recorded every `every` steps; a run stopped by SIGTERM and resumed gives the same rows."""
    import os
    import signal

    import crosstrace.train as train_module

    training = {"lr": 1e-3, "batch_size": 10, "mix_epochs": 2, "qa_ratio": 0.5,
                "qa_loss_weight": 0.6, "checkpoint_every": 100}  # fmt: skip
    cons = {"every": 2, "probe_people": 4, "bio_values": True}

    def run(tag):
        out = tmp_path / tag
        train_run(base, out / "final", out / "trace.safetensors", out / "log.parquet",
                  phase="mix", data_dir=world, training=training, progress=False,
                  consistency=cons, consistency_out=out / "consistency.parquet",
                  checkpoint_dir=tmp_path / f"ckpt-{tag}")  # fmt: skip
        return pd.read_parquet(out / "consistency.parquet")

    a = run("full")
    total = int(a["step"].max())
    assert sorted(a["step"].unique()) == sorted({*range(0, total, 2), total})
    assert set(a["source"]) == {"step", "probe_id", "probe_ood", "probe_id_values",
                                "probe_ood_values"}  # fmt: skip
    assert not a[a.source == "step"]["step"].isin([total]).any()  # the final weights: probes

    real_step, calls = train_module.optimizer_step, []

    def stop_at_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # like SLURM before a time limit
        return real_step(*args, **kw)

    monkeypatch.setattr(train_module, "optimizer_step", stop_at_third)
    with pytest.raises(train_module.Preempted):
        run("resumed")
    monkeypatch.setattr(train_module, "optimizer_step", real_step)
    assert not (tmp_path / "resumed" / "consistency.parquet").exists()
    b = run("resumed")  # resumes from the checkpoint written at step 3
    pd.testing.assert_frame_equal(a, b)


def test_value_probes_target_the_attribute_values_only(base, world):
    """The targets are the value words, counted from the text before each span; the QA
    gradient is the plain probe's; the BIO gradient is the mean loss over those positions."""
    model, tokenizer = load_model(base)
    bos = bos_id(model, tokenizer)
    bio, qa = read_bio(world / "bio.parquet"), read_qa(world / "qa.parquet")
    probes = build_probes(bio, qa, tokenizer, 3, bos, values=True)
    ids = probes.people["probe_ood"]
    bios = bio[bio["person_id"].isin(ids)].sort_values("person_id", kind="stable")
    ex = probes.examples["probe_ood"]["bio_values"]

    def n_words(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    positions = []
    for (_, row), labels in zip(bios.iterrows(), ex.labels, strict=True):
        expected = set()
        for start, end in value_spans(row.to_frame().T)[0]:
            first = 1 + n_words(row["text"][:start])  # after BOS
            expected |= set(range(first, first + n_words(row["text"][start:end])))
        assert set(np.flatnonzero(labels != IGNORE)) == expected
        assert labels[-1] == IGNORE and labels[1] == IGNORE  # not the EOS, not the name
        positions.append(sorted(expected))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {s: (b, q) for s, b, q in probe_gradients(model, params, probes, 0)}
    assert list(grads) == ["probe_id", "probe_id_values", "probe_ood", "probe_ood_values"]
    for plain, values in zip(grads["probe_ood"][1], grads["probe_ood_values"][1], strict=True):
        assert torch.equal(plain, values)
    logp_sum, count = 0.0, 0  # independent: full logits, then the chosen positions
    for seq, pos in zip(ex.input_ids, positions, strict=True):
        x = torch.from_numpy(seq)[None]
        logp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1)
        for t in pos:
            logp_sum = logp_sum + logp[t - 1, int(seq[t])]
            count += 1
    expected = torch.autograd.grad(-logp_sum / count, params)
    for got, want in zip(grads["probe_ood_values"][0], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(InputDataError, match="spans"):
        tokenize_bio_values(bios["text"].tolist(), np.zeros((1, 6, 2)), tokenizer, bos)


def test_representation_of_identical_contexts_is_one(base, world):
    model, tokenizer = load_model(base)
    seqs = [[2, 10, 11, 12], [2, 10, 11, 12], [2, 13]]
    h = last_token_states(model, seqs)
    cos = torch.nn.functional.cosine_similarity(h[:, 0], h[:, 1], dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)
    rep = representation_tables(model, tokenizer, read_people(world / "people.parquet"),
                                read_bio(world / "bio.parquet"), read_qa(world / "qa.parquet"),
                                bos_id(model, tokenizer))  # fmt: skip
    assert set(rep["measure"]) == {"cosine", "transfer", "train_accuracy"}
    assert rep["layer"].nunique() == 3  # embeddings + 2 layers
    cos = rep[rep.measure == "cosine"]
    assert ((cos["value"] >= -1) & (cos["value"] <= 1)).all()


def test_token_dependence_changes_only_the_masked_token(base, world):
    model, tokenizer = load_model(base)
    qa = read_qa(world / "qa.parquet")
    bos = bos_id(model, tokenizer)
    people = probe_people(qa, 3)["probe_ood"]
    td = token_dependence(model, tokenizer, qa, bos, people=people)
    assert set(td["token_class"]) == {"name", "relation", "other"}
    assert (td[td.token_class == "name"].groupby(["person_id", "attribute"]).size() == 1).all()
    # with no intervention the log-probs are those of a plain forward pass
    q = qa[qa.person_id == people[0]].iloc[0]
    prompt = [bos, *tokenizer(q.question + " Answer:", add_special_tokens=False)["input_ids"]]
    target = tokenizer(" " + q.answer, add_special_tokens=False)["input_ids"]
    seq = prompt + target
    got = answer_logprob(model, [seq], [[-100] * len(prompt) + target])[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0], -1)
    want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(target))
    assert got == pytest.approx(want, abs=1e-5)


def test_consistency_every_must_be_positive():
    with pytest.raises(ConfigError, match="consistency_every must be >= 1"):
        records_every(0)
    with pytest.raises(ConfigError, match="consistency_every must be >= 1"):
        records_at(5, 0)
    assert [s for s in range(7) if records_at(s, 3)] == [0, 3, 6]
