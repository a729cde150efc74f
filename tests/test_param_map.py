"""The head/module mapping the dump writes is the one transformers' forward pass uses.

For each head h and each of q, k, v, o we zero exactly the rows (or columns) that
``ParamMap`` assigns to that head and module, run the model, and check which heads'
attention outputs (the input of o_proj / dense, one slice of head_dim per query head) move.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from crosstrace.param_map import MODULE_CODE, MODULES, ParamMap, arch_info

HIDDEN, HEADS = 32, 4


def _llama():
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        intermediate_size=48,
        attention_bias=True,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


def _neox():
    cfg = GPTNeoXConfig(
        vocab_size=64,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=HEADS,
        intermediate_size=48,
        attn_implementation="eager",
    )
    return GPTNeoXForCausalLM(cfg).eval()


def _attn_params(model):
    """(out-projection module, {module: [param names in that module's head layout]})."""
    if isinstance(model, LlamaForCausalLM):
        a = model.model.layers[0].self_attn
        p = "model.layers.0.self_attn."
        names = {m: [p + f"{m[-1]}_proj.weight", p + f"{m[-1]}_proj.bias"] for m in "qkv"}
        return a.o_proj, {**names, "o": [p + "o_proj.weight"]}
    a = model.gpt_neox.layers[0].attention
    p = "gpt_neox.layers.0.attention."
    fused = [p + "query_key_value.weight", p + "query_key_value.bias"]
    return a.dense, {"q": fused, "k": fused, "v": fused, "o": [p + "dense.weight"]}


def _head_outputs(model, out_proj, ids):
    """Per-head attention outputs [heads, B, T, head_dim] (the input of o_proj/dense)."""
    seen = {}
    handle = out_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    with torch.no_grad():
        out = model(ids).logits
    handle.remove()
    x = seen["x"]
    return x.reshape(*x.shape[:-1], HEADS, -1).permute(2, 0, 1, 3).clone(), out


def _zero_head(model, pmap, names, module, head):
    """Zero the elements the map assigns to (module, head) in the given tensors."""
    params = dict(model.named_parameters())
    touched = 0
    for name in names:
        p = params[name]
        spec = pmap.spec(name, tuple(p.shape))
        cols = spec.columns()
        sel = (cols["module"] == MODULE_CODE[module]) & (cols["head"] == head)
        with torch.no_grad():
            p.view(-1)[torch.from_numpy(np.flatnonzero(sel))] = 0.0
        touched += int(sel.sum())
    return touched


@pytest.mark.parametrize("build", [_llama, _neox], ids=["llama_gqa", "gpt_neox"])
@pytest.mark.parametrize("which", ["q", "k", "v", "o"])
@pytest.mark.parametrize("head", range(HEADS))
def test_zeroing_one_head_moves_only_that_head(build, which, head):
    torch.manual_seed(0)
    model = build()
    for p in model.parameters():  # biases start at zero; give them values to matter
        torch.nn.init.normal_(p, std=0.5)
    pmap = ParamMap(model.config)
    out_proj, names = _attn_params(model)
    ids = torch.randint(0, 64, (2, 7))
    before, _ = _head_outputs(model, out_proj, ids)

    module = f"attn.{which}"
    w0 = out_proj.weight.detach().clone()
    n = _zero_head(model, pmap, names[which], module, head)
    info = pmap.info
    after, _ = _head_outputs(model, out_proj, ids)

    if which == "o":
        # o's input is unchanged; its output equals o(x with head h's slice zeroed)
        assert n == HIDDEN * info.head_dim
        assert torch.equal(before, after)
        x = before.permute(1, 2, 0, 3).reshape(2, 7, -1)
        x_zeroed = before.clone()
        x_zeroed[head] = 0
        x_zeroed = x_zeroed.permute(1, 2, 0, 3).reshape(2, 7, -1)
        # o with this head's columns zeroed == original o applied with this head's input zeroed
        with torch.no_grad():
            got = out_proj(x)
        want = torch.nn.functional.linear(x_zeroed, w0, out_proj.bias)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, torch.nn.functional.linear(x, w0, out_proj.bias))
        return

    if info.arch == "llama" and which in "kv":
        # the map's head for k/v is the KV head; it serves query heads j*g .. j*g+g-1
        if head >= info.num_kv_heads:
            assert n == 0
            return
        g = info.group_size
        moved = set(range(head * g, head * g + g))
    else:
        moved = {head}
    assert n == info.head_dim * (HIDDEN + 1)  # weight rows + bias entries
    for h in range(HEADS):
        diff = (after[h] - before[h]).abs().max().item()
        if h in moved:
            assert diff > 1e-3, f"head {h} should change when {module} of head {head} is zeroed"
        else:
            assert diff == pytest.approx(0.0, abs=1e-6), f"head {h} moved ({diff})"


def test_every_parameter_is_mapped_and_cells_sum_to_numel():
    for build in (_llama, _neox):
        model = build()
        pmap = ParamMap(model.config)
        seen = set()
        for name, p in model.named_parameters():
            spec = pmap.spec(name, tuple(p.shape))
            assert spec.numel == p.numel()
            seen |= spec.modules()
            cols = spec.columns()
            assert len(cols["row"]) == p.numel()
            if spec.layer is None:
                assert spec.modules() <= {"embed", "norm", "lm_head"}
        expected = set(MODULES) - ({"mlp.gate"} if pmap.info.arch == "gpt_neox" else set())
        assert seen == expected


def test_fused_qkv_layout_by_hand():
    info = arch_info(
        {
            "model_type": "gpt_neox",
            "hidden_size": 8,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
        }
    )
    spec = ParamMap(info).spec("gpt_neox.layers.0.attention.query_key_value.weight", (24, 8))
    mods = [MODULES[c] for c in spec.row_module]
    # head 0 rows 0-11: q q q q k k k k v v v v ; head 1 rows 12-23 the same
    assert mods == (["attn.q"] * 4 + ["attn.k"] * 4 + ["attn.v"] * 4) * 2
    assert spec.row_head.tolist() == [0] * 12 + [1] * 12
    bias = ParamMap(info).spec("gpt_neox.layers.0.attention.query_key_value.bias", (24,))
    cols = bias.columns()
    assert cols["row"].tolist() == list(range(24)) and set(cols["col"].tolist()) == {0}


def test_embed_out_name_is_lm_head():
    info = arch_info(
        {
            "model_type": "gpt_neox",
            "hidden_size": 8,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
        }
    )
    assert ParamMap(info).spec("embed_out.weight", (10, 8)).modules() == {"lm_head"}


@pytest.mark.parametrize(
    "tiny",
    [
        {"arch": "llama", "layers": 2, "hidden": 32, "heads": 4, "kv_heads": 2, "intermediate": 48},
        {"arch": "llama", "layers": 1, "hidden": 24, "heads": 3, "intermediate": 40},
        {"arch": "gpt_neox", "layers": 2, "hidden": 32, "heads": 2, "intermediate": 64},
    ],
)
def test_tiny_shapes_are_those_of_the_built_model(tiny):
    """The parse-time k check (crosstrace.config) sizes the ranked population from the config
    alone: the same parameters and logical tensors as the model the pipeline builds and ranks."""
    from crosstrace.config import model_defaults
    from crosstrace.models import tiny_model
    from crosstrace.param_map import logical_sizes, tiny_shapes
    from crosstrace.rank import ranked_tensors
    from crosstrace.tokenizer import train_word_tokenizer

    model = tiny_model(tiny, train_word_tokenizer(["a b c"]), seed=0)
    built = {n: tuple(p.shape) for n, p in model.named_parameters()}
    vocab = {n for n in built if "embed" in n or "lm_head" in n or "embed_out" in n}
    assert tiny_shapes({**model_defaults("tiny"), **tiny}) == {
        n: s for n, s in built.items() if n not in vocab
    }
    pmap = ParamMap(model.config)
    for rank_params in ("matrices", "all"):
        modules = [m for m in MODULES if m not in ("embed", "lm_head")]
        want = [(t.param, t.module, len(t.rows) * t.spec.n_cols)
                for t in ranked_tensors(pmap, built, modules, rank_params)]  # fmt: skip
        assert logical_sizes(pmap, tiny_shapes(tiny), modules, rank_params) == want


def test_topk_size_is_rank_s():
    from crosstrace.config import topk_size
    from crosstrace.rank import topk_size as rank_topk_size

    for k in (0.001, 0.1, 0.5, 1, 2.5, 5, 100):
        for n in (1, 7, 64, 199, 1000, 983040):
            assert topk_size(k, n) == rank_topk_size(k, n), (k, n)
