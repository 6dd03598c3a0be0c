"""bertkit/cpu/onednn.py through ops.linear: Linear + GELU / + residual in one oneDNN call, equal to the plain ops."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import bertkit
from bertkit.cpu import optimize_for_cpu
from bertkit.cpu.dispatch import kernel, onednn_available
from bertkit.cpu.ops import linear
from conftest import randomize_

pytestmark = pytest.mark.skipif(not onednn_available(), reason="PyTorch built without oneDNN")


@pytest.mark.parametrize("rows", [1, 7, 25, 300])
def test_fused_ops_equal_the_plain_ones(rows):
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 96)
    x, residual = torch.randn(rows, 48), torch.randn(rows, 96)
    with torch.no_grad():
        assert kernel("linear", x, lin) == "onednn"
        plain = F.linear(x, lin.weight, lin.bias)
        assert torch.allclose(linear(lin, x), plain, atol=1e-6)
        assert torch.allclose(linear(lin, x, "gelu"), F.gelu(plain), atol=1e-6)
        assert torch.allclose(linear(lin, x, "gelu_new"), F.gelu(plain, approximate="tanh"), atol=1e-6)
        assert torch.allclose(linear(lin, x, "relu"), F.relu(plain), atol=1e-6)
        assert torch.allclose(linear(lin, x, residual=residual), plain + residual, atol=1e-6)


def test_cached_weight_follows_in_place_updates():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16)
    with torch.no_grad():
        before = linear(lin, x)
        lin.weight.mul_(-1)  # an optimizer step changes the weight in place: the cache must be rebuilt
        after = linear(lin, x)
        assert torch.allclose(after, F.linear(x, lin.weight, lin.bias), atol=1e-6)
        assert not torch.allclose(before, after)


def test_cached_weight_follows_a_fused_optimizer_step():
    """Fused AdamW changes weights without bumping their version counters; the cache must still see it."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16)
    optimizer = torch.optim.AdamW(lin.parameters(), lr=0.1, fused=True)
    with torch.no_grad():
        linear(lin, x)  # cache the weight
    version = lin.weight._version
    lin(x).sum().backward()
    optimizer.step()
    assert lin.weight._version == version  # the reason: the version counter did not move
    with torch.no_grad():
        assert torch.allclose(linear(lin, x), F.linear(x, lin.weight, lin.bias), atol=1e-6)


def test_plain_ops_when_not_fusable():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16)
    assert kernel("linear", x, lin) == "module"  # gradients on: training must see differentiable plain ops
    y = linear(lin, x, "gelu")
    y.sum().backward()
    assert lin.weight.grad is not None
    with torch.no_grad():
        assert kernel("linear", x, lin) == "onednn"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert kernel("linear", x, lin) == "module"
        assert kernel("linear", x.double(), lin.double()) == "module"


def test_model_inference_with_fused_layers_matches_plain_layers(minilm, sst2_dev):
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=minilm.tokenizer.vocab_size)
    model = randomize_(bertkit.BertForQuestionAnswering(cfg)).eval()
    unfused = optimize_for_cpu(copy.deepcopy(model), packed_rows=0, fuse=False, native=False)  # plain addmm throughout
    batch = minilm.tokenizer(sst2_dev[:6])  # mixed lengths: the unpadded path
    with torch.inference_mode():
        fused = model(batch)
        plain = unfused(batch)
        assert kernel("linear", torch.zeros(9, 128), unfused.bert.layers[0].qkv) == "module"
    mask = batch.attention_mask
    for f, p in zip(fused, plain):
        assert (f - p)[mask].abs().max() < 1e-5


def test_model_still_deep_copies_and_pickles_after_fused_inference():
    """The oneDNN weight cache lives beside the model: an opaque oneDNN tensor has no storage to copy."""
    import pickle

    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=100)
    model = randomize_(bertkit.BertModel(cfg)).eval()
    ids = torch.randint(5, 100, (4, 80))  # 320 rows: the fused path
    with torch.inference_mode():
        assert kernel("linear", torch.zeros(320, 128), model.layers[0].qkv) == "onednn"
        out, _ = model(ids)
    twin = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    with torch.inference_mode():
        assert torch.equal(twin(ids)[0], out) and torch.equal(restored(ids)[0], out)
