"""The gradient trace: identities that hold exactly for plain SGD, and invariance of training."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from crosstrace.batches import IGNORE, StepPlan, in_half_a, training_examples
from crosstrace.errors import ConfigError, CrosstraceError
from crosstrace.models import bos_id, build_base, load_model
from crosstrace.optim import warmup_cosine
from crosstrace.step import optimizer_step
from crosstrace.tracefile import kind_path, load_trace
from crosstrace.train import train_run
from crosstrace.training_config import TrainingConfig
from crosstrace.world import people_halves, read_bio, read_people, read_qa, synthesize_world

TINY = {
    "llama": {
        "arch": "llama",
        "layers": 2,
        "hidden": 32,
        "heads": 4,
        "kv_heads": 2,
        "intermediate": 64,
    },
    "gpt_neox": {"arch": "gpt_neox", "layers": 2, "hidden": 32, "heads": 4, "intermediate": 64},
}
SGD = {
    "optimizer": "sgd",
    "lr": 0.05,
    "weight_decay": 0.0,
    "max_grad_norm": None,
    "batch_size": 16,
    "bio_epochs": 1,
    "qa_epochs": 1,
    "mix_epochs": 1,
    "qa_ratio": 0.5,
    "warmup_ratio": 0.2,
    "qa_loss_weight": None,  # the token mean over both tasks (tests that weight set it)
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    cfg = {"seed": 3, "n_people": 24, "qa_train_fraction": 0.5, "templates_per_attribute": 5}
    synthesize_world(cfg, data / "bio.parquet", data / "qa.parquet", data / "people.parquet")
    return data


@pytest.fixture(scope="module", params=sorted(TINY))
def base(
    request: pytest.FixtureRequest, world: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp(f"base-{request.param}") / "base"
    build_base({"tiny": TINY[request.param]}, world, out, seed=0, bos=True)
    return out


def weights(folder: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(folder)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run(base: Path, world: Path, tmp: Path, phase: str, training: dict, **kw) -> tuple[Path, Path]:
    out, trace = tmp / f"{phase}-model", tmp / f"{phase}-trace.safetensors"
    train_run(
        base,
        out,
        trace,
        tmp / f"{phase}-log.parquet",
        phase=phase,
        data_dir=world,
        training=training,
        seed=kw.pop("seed", 0),
        progress=False,
        **kw,
    )
    return out, trace


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=2e-6, msg=name)


def test_trace_identity_mix(base: Path, world: Path, tmp_path: Path) -> None:
    theta0 = weights(base)
    final, trace_path = run(base, world, tmp_path, "mix", SGD)
    theta_t, delta = weights(final), load_trace(trace_path)
    assert set(delta) == {"bio", "qa"}
    assert set(delta["bio"]) == set(theta0)
    assert_close(
        {n: delta["bio"][n] + delta["qa"][n] for n in theta0},
        {n: theta0[n] - theta_t[n] for n in theta0},
    )
    # both tasks really contributed
    assert sum(float(t.abs().sum()) for t in delta["bio"].values()) > 0
    assert sum(float(t.abs().sum()) for t in delta["qa"].values()) > 0


def test_trace_identity_under_bf16_autocast(base: Path, world: Path, tmp_path: Path) -> None:
    """precision: bf16 (autocast in the forward and backward; fp32 weights, gradients and
    trace): Δ_bio + Δ_qa is still the whole SGD change, and the run records its precision."""
    from crosstrace.models import trained_precision

    theta0 = weights(base)
    final, trace_path = run(base, world, tmp_path, "mix", {**SGD, "precision": "bf16"})
    theta_t, delta = weights(final), load_trace(trace_path)
    assert all(t.dtype == torch.float32 for t in delta["bio"].values())
    assert_close(
        {n: delta["bio"][n] + delta["qa"][n] for n in theta0},
        {n: theta0[n] - theta_t[n] for n in theta0},
    )
    assert trained_precision(load_model(final)[0]) == "bf16"
    fp32, _ = run(base, world, tmp_path / "fp32", "mix", {**SGD, "precision": "fp32"})
    assert trained_precision(load_model(fp32)[0]) == "fp32"
    # bf16 really ran: its θT differs from the fp32 run's beyond float32 rounding
    assert any(not torch.allclose(theta_t[n], w, atol=1e-6) for n, w in weights(fp32).items())


def test_precision_auto_is_bf16_on_bf16_gpus_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from crosstrace import devices
    from crosstrace.errors import ConfigError

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    assert devices.resolve_precision(gpu, "auto") == "bf16"
    assert devices.resolve_precision(cpu, "auto") == "fp32"  # AMX CPUs too: bf16 was slower
    assert devices.autocast_dtype(cpu, "fp32") is None
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    assert devices.resolve_precision(gpu, "auto") == "fp32"
    assert devices.resolve_precision(cpu, "auto") == "fp32"
    assert devices.autocast_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        devices.resolve_precision(cpu, "fp16")


ADAMW = {**SGD, "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.5, "max_grad_norm": 0.05,
         "qa_loss_weight": 0.3}  # fmt: skip  # clipping active at every step here


@pytest.mark.parametrize("phases", [["mix"], ["bio", "qa"]], ids=["mix", "stage"])
def test_update_decomposition_is_the_optimizers_update(
    base: Path, world: Path, tmp_path: Path, phases: list[str]
) -> None:
    """AdamW with decoupled weight decay, clipping and the weighted loss:
    Δ^upd_bio + Δ^upd_qa + Δ_wd = θ0 − θT (two-stage: over both stages, continued)."""
    theta0, init, init_trace = weights(base), base, None
    for phase in phases:
        init, trace = run(base if init is None else init, world, tmp_path, phase, ADAMW,
                          init_trace=init_trace)  # fmt: skip
        init_trace = trace
    theta_t = weights(init)
    upd = load_trace(kind_path(init_trace, "update"))
    assert set(upd) == {"bio", "qa", "weight_decay"}
    total = {n: upd["bio"][n] + upd["qa"][n] + upd["weight_decay"][n] for n in theta0}
    change = {n: theta0[n] - theta_t[n] for n in theta0}
    for name in theta0:  # float rounding of Adam's division, relative to the tensor's change
        scale = float(change[name].abs().max()) or 1.0
        error = float((total[name] - change[name]).abs().max())
        assert error <= 5e-4 * scale, (name, error, scale)
        # leaving the weight decay out would miss by far more wherever it acts
        if float(upd["weight_decay"][name].abs().max()) > 0:
            assert float((total[name] - upd["weight_decay"][name] - change[name]).abs().max()) > (
                20 * error
            )
    # each part is real: decay on matrices only, and both tasks moved the weights
    assert all(float(upd["weight_decay"][n].abs().max()) == 0 for n in theta0 if theta0[n].ndim < 2)
    assert any(float(upd["weight_decay"][n].abs().max()) > 0 for n in theta0)
    if phases == ["mix"]:
        assert all(sum(float(t.abs().sum()) for t in upd[k].values()) > 0 for k in ("bio", "qa"))
    # the gradient trace is not the update: under AdamW they differ
    grad = load_trace(init_trace)
    assert not torch.allclose(grad["bio"][next(iter(theta0))], upd["bio"][next(iter(theta0))])


def test_update_trace_equals_the_gradient_trace_under_sgd(
    base: Path, world: Path, tmp_path: Path
) -> None:
    _, trace = run(base, world, tmp_path, "mix", {**SGD, "qa_loss_weight": 0.7})
    grad, upd = load_trace(trace), load_trace(kind_path(trace, "update"))
    for task in ("bio", "qa"):
        for name in grad[task]:
            torch.testing.assert_close(upd[task][name], grad[task][name], rtol=1e-5, atol=1e-8)
    assert all(float(t.abs().max()) == 0 for t in upd["weight_decay"].values())  # wd 0


def test_trace_identity_mix_weighted(base: Path, world: Path, tmp_path: Path) -> None:
    """With qa_loss_weight ≠ 0.5 the two Δ still add up to the whole SGD parameter change."""
    theta0 = weights(base)
    final, trace_path = run(base, world, tmp_path, "mix", {**SGD, "qa_loss_weight": 0.8})
    theta_t, delta = weights(final), load_trace(trace_path)
    assert_close(
        {n: delta["bio"][n] + delta["qa"][n] for n in theta0},
        {n: theta0[n] - theta_t[n] for n in theta0},
    )
    # and the weighting changed training (not silently ignored)
    plain, _ = run(base, world, tmp_path / "plain", "mix", SGD)
    assert any(not torch.allclose(theta_t[n], w) for n, w in weights(plain).items())


@pytest.mark.parametrize("phase", ["mix", "bio"])
def test_trace_identity_packed(base: Path, world: Path, tmp_path: Path, phase: str) -> None:
    """Packed rows (EOS-separated examples) with qa_loss_weight ≠ 0.5: Δ_bio + Δ_qa = θ0 − θT."""
    theta0 = weights(base)
    packed = {**SGD, "pack": True, "pack_length": 128, "batch_size": 4, "qa_loss_weight": 0.7}
    final, trace_path = run(base, world, tmp_path, phase, packed)
    theta_t, delta = weights(final), load_trace(trace_path)
    assert_close(
        {n: delta["bio"][n] + delta["qa"][n] for n in theta0},
        {n: theta0[n] - theta_t[n] for n in theta0},
    )
    assert sum(float(t.abs().sum()) for t in delta["bio"].values()) > 0


@pytest.mark.parametrize("w", [0.3, 0.8])
def test_weighted_step_gradient_is_the_weighted_task_means(
    base: Path, world: Path, w: float
) -> None:
    """One two-task step: grad = w·∇(mean QA loss) + (1−w)·∇(mean BIO loss), each computed
    independently with full logits, one example at a time."""
    model, tokenizer = load_model(base)
    examples = training_examples(
        read_bio(world / "bio.parquet"),
        read_qa(world / "qa.parquet"),
        tokenizer,
        bos_id(model, tokenizer),
    )
    plan = StepPlan("mix", {t: len(e) for t, e in examples.items()}, batch_size=8, epochs=1, seed=0)
    index = plan.step_indices(0)
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for task, weight in (("qa", w), ("bio", 1 - w)):
        n_task = sum(int((examples[task].labels[i][1:] != IGNORE).sum()) for i in index[task])
        for i in index[task]:
            model.zero_grad(set_to_none=True)
            ids = torch.as_tensor(examples[task].input_ids[i])[None]
            labels = torch.as_tensor(examples[task].labels[i])
            logits = model(input_ids=ids).logits
            loss = F.cross_entropy(logits[0, :-1], labels[1:], ignore_index=IGNORE, reduction="sum")
            loss.backward()
            for n, p in model.named_parameters():
                ref[n] += weight / n_task * p.grad
    model.zero_grad(set_to_none=True)
    grads = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):  # read the gradient the optimiser gets, do not move
            grads.update({n: p.grad.clone() for n, p in model.named_parameters()})

    optimizer = Capture(model.parameters(), lr=0.0)
    optimizer_step(
        model,
        plan.micro_batches(0, examples, tokenizer.pad_token_id),
        optimizer,
        None,
        lr=0.0,
        max_grad_norm=None,
        amp=None,
        qa_loss_weight=w,
    )
    assert_close(grads, ref)


def test_qa_loss_weight_outside_open_interval_is_refused() -> None:
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="qa_loss_weight"):
            TrainingConfig.from_dict({"qa_loss_weight": bad})


def test_every_sequence_starts_with_bos(base: Path, world: Path) -> None:
    model, tokenizer = load_model(base)
    bos = bos_id(model, tokenizer)
    assert bos is not None and bos == tokenizer.bos_token_id
    examples = training_examples(
        read_bio(world / "bio.parquet"), read_qa(world / "qa.parquet"), tokenizer, bos
    )
    for ex in examples.values():
        assert all(ids[0] == bos and (ids[1:] != bos).all() for ids in ex.input_ids)
        assert all(lab[0] == IGNORE for lab in ex.labels)  # BOS is never a target


def test_every_evaluation_prompt_starts_with_bos(base: Path, world: Path) -> None:
    from crosstrace.evaluate import predict

    model, tokenizer = load_model(base)
    seen: list[torch.Tensor] = []
    generate = model.generate

    def spy(**kw):
        seen.append(kw["input_ids"])
        return generate(**kw)

    model.generate = spy
    qa = read_qa(world / "qa.parquet")
    predict(model, tokenizer, qa, batch_size=7, max_new_tokens=2)
    assert sum(len(ids) for ids in seen) == len(qa)
    for ids in seen:  # left-padded: the first non-pad token of every row is BOS
        for row in ids.tolist():
            first = next(t for t in row if t != tokenizer.pad_token_id)
            assert first == tokenizer.bos_token_id


def test_bio_first_token_rows_match_a_reference(base: Path, world: Path, tmp_path: Path) -> None:
    """bio_id / bio_ood rows: argmax after the bio prefix, checked one bio at a time; the
    checkpoint's representation tables beside them are the module's own on that model."""
    from crosstrace.evaluate import evaluate_run, summarize
    from crosstrace.representation import representation_tables

    final, _ = run(base, world, tmp_path, "mix", {**SGD, "optimizer": "adamw", "lr": 3e-3})
    out, rep_out = tmp_path / "pred.parquet", tmp_path / "representation.parquet"
    with pytest.raises(CrosstraceError, match="needs the bios"):
        evaluate_run(final, world / "qa.parquet", out, representation_out=rep_out)
    assert not out.exists() and not rep_out.exists()
    acc = evaluate_run(
        final, world / "qa.parquet", out, bio_path=world / "bio.parquet", batch_size=8,
        representation_out=rep_out,
    )  # fmt: skip
    assert {"id", "ood", "bio_id", "bio_ood"} <= set(acc)
    pred = pd.read_parquet(out)
    rows = pred[pred["split"].str.startswith("bio")]
    bio, qa = read_bio(world / "bio.parquet"), read_qa(world / "qa.parquet")
    assert len(rows) == 6 * len(bio)
    trained = set(qa.loc[qa["split"] == "train", "person_id"])
    assert set(rows.loc[rows["split"] == "bio_id", "person_id"]) == trained
    model, tokenizer = load_model(final)
    bos = bos_id(model, tokenizer)
    for r in rows.itertuples():
        prefix = tokenizer(r.question, add_special_tokens=False)["input_ids"]
        value = tokenizer(" " + r.answer, add_special_tokens=False)["input_ids"]
        logits = model(input_ids=torch.as_tensor([[bos, *prefix]])).logits[0, -1]
        assert bool(logits.argmax() == value[0]) == r.exact_match == r.first_token_correct
    assert set(summarize(pred)["split"]) == {"id", "ood", "bio_id", "bio_ood"}
    reference = representation_tables(model, tokenizer, read_people(world / "people.parquet"),
                                      bio, qa, bos)  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_parquet(rep_out), reference)


def test_trace_identity_stage(base: Path, world: Path, tmp_path: Path) -> None:
    theta0 = weights(base)
    bio_dir, bio_trace = run(base, world, tmp_path, "bio", SGD)
    final, trace_path = run(bio_dir, world, tmp_path, "qa", SGD, init_trace=bio_trace)
    theta_bio, theta_t, delta = weights(bio_dir), weights(final), load_trace(trace_path)
    # each stage's Δ is exactly its own parameter change, and the sum the whole change
    assert_close(delta["bio"], {n: theta0[n] - theta_bio[n] for n in theta0})
    assert_close(delta["qa"], {n: theta_bio[n] - theta_t[n] for n in theta0})
    assert_close(
        {n: delta["bio"][n] + delta["qa"][n] for n in theta0},
        {n: theta0[n] - theta_t[n] for n in theta0},
    )


def per_example_reference(
    base: Path, world: Path, training: dict, steps: int
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``steps`` mixed SGD steps recomputed with one backward per example: the trace per task
    (and per task of half A of the trained people, keys ``bio_a`` and ``qa_a``, with the
    step's clip coefficient) and the weights after them."""
    cfg = TrainingConfig.from_dict(training)
    model, tokenizer = load_model(base)
    bio, qa = read_bio(world / "bio.parquet"), read_qa(world / "qa.parquet")
    examples = training_examples(bio, qa, tokenizer, bos_id(model, tokenizer))
    in_a = in_half_a(bio, qa, people_halves(qa, 0)[0])
    plan = StepPlan("mix", {t: len(e) for t, e in examples.items()},
                    batch_size=cfg.batch_size, epochs=1, seed=0, qa_ratio=0.5)  # fmt: skip
    # the lr schedule spans the whole one-epoch plan; only its first steps are taken
    lr_factor = warmup_cosine(plan.total_steps, cfg.warmup_ratio, cfg.min_lr_ratio)
    params = dict(model.named_parameters())
    ref = {key: {n: torch.zeros_like(p) for n, p in params.items()}
           for key in ("bio", "qa", "bio_a", "qa_a")}  # fmt: skip
    for step in range(steps):
        lr = cfg.lr * lr_factor(step)
        index = plan.step_indices(step)
        n_supervised = sum(
            int((examples[t].labels[i][1:] != IGNORE).sum())
            for t, idx in index.items()
            for i in idx
        )
        grads = {key: {n: torch.zeros_like(p) for n, p in params.items()} for key in ref}
        for task, idx in index.items():
            for i in idx:
                model.zero_grad(set_to_none=True)
                ids = torch.as_tensor(examples[task].input_ids[i])[None]
                labels = torch.as_tensor(examples[task].labels[i])[None]
                logits = model(input_ids=ids).logits
                loss = F.cross_entropy(
                    logits[0, :-1], labels[0, 1:], ignore_index=IGNORE, reduction="sum"
                )
                (loss / n_supervised).backward()
                for key in (task, f"{task}_a") if in_a[task][i] else (task,):
                    for n, p in params.items():
                        grads[key][n] += p.grad
        total = {n: grads["bio"][n] + grads["qa"][n] for n in params}
        clip = 1.0
        if cfg.max_grad_norm is not None:
            norm = float(torch.linalg.vector_norm(torch.stack([t.norm() for t in total.values()])))
            clip = min(1.0, cfg.max_grad_norm / (norm + 1e-6))
        for key in ref:
            for n in params:
                ref[key][n] += lr * clip * grads[key][n]
        with torch.no_grad():
            for n, p in params.items():
                p -= lr * clip * total[n]
    return ref, {n: p.detach() for n, p in params.items()}


def test_mix_bio_delta_matches_per_example_reference(
    base: Path, world: Path, tmp_path: Path
) -> None:
    """Three mixed SGD steps, recomputed with one backward per example."""
    training = {**SGD, "batch_size": 8}
    ref, theta = per_example_reference(base, world, training, steps=3)
    # the traced run: the same plan, stopped after the same 3 steps
    final, trace_path = run(base, world, tmp_path, "mix", training, max_steps=3)
    delta = load_trace(trace_path)
    for task in ("bio", "qa"):
        assert_close(delta[task], ref[task])
    assert_close(weights(final), theta)


def test_people_trace_matches_per_example_reference(
    base: Path, world: Path, tmp_path: Path
) -> None:
    """The people kind, with clipping active: BIO and QA of half A of the trained people are
    each the sum of lr · clip · gradient over those people's examples only, QA of the others
    is the rest of Δ_qa, and the gradient kind and the weights are those of the reference."""
    training = {**SGD, "batch_size": 8, "max_grad_norm": 0.05}
    ref, theta = per_example_reference(base, world, training, steps=4)
    final, trace_path = run(base, world, tmp_path, "mix", training, max_steps=4,
                            trace={"kinds": ["gradient", "people"]})  # fmt: skip
    delta, people = load_trace(trace_path), load_trace(kind_path(trace_path, "people"))
    assert sorted(people) == ["bio_a", "qa_a", "qa_b"]
    for task in ("bio", "qa"):
        assert_close(delta[task], ref[task])
        assert_close(people[f"{task}_a"], ref[f"{task}_a"])
    assert_close(people["qa_b"], {n: ref["qa"][n] - ref["qa_a"][n] for n in theta})
    assert_close(weights(final), theta)
    # clipping was active, and half A is a real part of each task, not all of it
    name = next(iter(theta))
    clipped, _ = per_example_reference(base, world, training, steps=1)
    unclipped, _ = per_example_reference(base, world, {**training, "max_grad_norm": None}, 1)
    assert not torch.allclose(clipped["bio_a"][name], unclipped["bio_a"][name], rtol=1e-2)
    for task in ("bio", "qa"):
        a, whole = people[f"{task}_a"][name], delta[task][name]
        assert float(a.norm()) > 0
        assert not torch.allclose(a, whole, rtol=1e-3, atol=1e-7)


def test_people_trace_continues_over_the_stages(base: Path, world: Path, tmp_path: Path) -> None:
    """Two-stage AdamW with clipping: the QA stage continues the BIO stage's half-A BIO trace
    unchanged, adds QA of half A and of the others up to Δ_qa, and splitting the step by
    people changes training only by float summation order (exact sums under SGD: the
    per-example reference test)."""
    people = {"kinds": ["gradient", "update", "people"]}
    init, trace, files = base, None, {}
    for phase in ("bio", "qa"):
        init, trace = run(base if trace is None else init, world, tmp_path, phase, ADAMW,
                          init_trace=trace, trace=people)  # fmt: skip
        files[phase] = load_trace(kind_path(trace, "people"))
    bio_stage, final = files["bio"], files["qa"]
    for name, t in bio_stage["bio_a"].items():
        assert torch.equal(final["bio_a"][name], t)
        assert float(bio_stage["qa_a"][name].abs().max()) == 0
    grad = load_trace(trace)
    assert_close({n: final["qa_a"][n] + final["qa_b"][n] for n in grad["qa"]}, grad["qa"])
    assert any(float(t.abs().max()) > 0 for t in final["qa_a"].values())
    plain, _ = run(base, world, tmp_path / "plain-bio", "bio", ADAMW)
    plain, _ = run(plain, world, tmp_path / "plain-qa", "qa", ADAMW,
                   init_trace=tmp_path / "plain-bio" / "bio-trace.safetensors")  # fmt: skip
    # Adam divides by √v̂ + ε: where a gradient entry is near zero a reordered sum can move that
    # weight by a visible fraction of lr, so the bound is on each tensor's whole change
    a, b, theta0 = weights(init), weights(plain), weights(base)
    for name in a:
        moved = float((b[name] - theta0[name]).norm())
        assert float((a[name] - b[name]).norm()) <= 1e-3 * moved, name


def test_people_trace_refuses_packed_rows(base: Path, world: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"people needs training\.pack false"):
        run(base, world, tmp_path, "mix", {**SGD, "pack": True},
            trace={"kinds": ["gradient", "people"]})  # fmt: skip


def test_trace_does_not_change_training(base: Path, world: Path, tmp_path: Path) -> None:
    adamw = {**SGD, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.1, "max_grad_norm": 0.5}
    traced, _ = run(base, world, tmp_path / "a", "mix", adamw, trace={"enabled": True})
    plain, _ = run(base, world, tmp_path / "b", "mix", adamw, trace={"enabled": False})
    a, b = load_file(str(traced / "model.safetensors")), load_file(str(plain / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_other_seed_differs(base: Path, world: Path, tmp_path: Path) -> None:
    adamw = {**SGD, "optimizer": "adamw", "lr": 3e-3, "max_grad_norm": 1.0}
    one, _ = run(base, world, tmp_path / "1", "mix", adamw, seed=5)
    two, _ = run(base, world, tmp_path / "2", "mix", adamw, seed=5)
    three, _ = run(base, world, tmp_path / "3", "mix", adamw, seed=6)
    a, b, c = (load_file(str(d / "model.safetensors")) for d in (one, two, three))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_posthoc_trace_is_the_task_gradient(base: Path, world: Path, tmp_path: Path) -> None:
    """Post-hoc Δ_task equals the gradient of the task's mean token loss, one example at a time."""
    from crosstrace.posthoc import posthoc_trace

    out = tmp_path / "posthoc.safetensors"
    posthoc_trace(base, world, out, batch_size=5, progress=False)
    delta = load_trace(out)
    model, tokenizer = load_model(base)
    examples = training_examples(
        read_bio(world / "bio.parquet"),
        read_qa(world / "qa.parquet"),
        tokenizer,
        bos_id(model, tokenizer),
    )
    for task in ("bio", "qa"):
        ex = examples[task]
        total = int(ex.supervised_tokens.sum())
        model.zero_grad(set_to_none=True)
        for ids, labels in zip(ex.input_ids, ex.labels, strict=True):
            logits = model(input_ids=torch.as_tensor(ids)[None]).logits
            loss = F.cross_entropy(
                logits[0, :-1], torch.as_tensor(labels)[1:], ignore_index=IGNORE, reduction="sum"
            )
            (loss / total).backward()
        assert_close(delta[task], {n: p.grad for n, p in model.named_parameters()})
