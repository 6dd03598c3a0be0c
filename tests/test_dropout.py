"""The cheaper CPU dropout (bertkit/cpu/dropout.py, through cpu/ops.py): the right drop rate, seeded, and exact gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from bertkit.config import BertConfig
from bertkit.cpu.dispatch import kernel
from bertkit.cpu.dropout import _AttentionWithDropout, drop_mask
from bertkit.cpu.ops import attention, dropout
from bertkit.model import BertForQuestionAnswering


@pytest.mark.parametrize("p", [0.1, 0.3, 10 / 256, 0.5])
def test_drop_rate_is_p_not_a_multiple_of_one_256th(p):
    torch.manual_seed(0)
    n = 4_000_000
    rate = drop_mask((n,), p).float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    # p = 0.1 without the tie draw would give 25/256 or 26/256, 15 and 11 sigmas away
    assert abs(rate - p) < 5 * sigma


def test_mask_follows_torch_seed_and_has_the_shape():
    torch.manual_seed(3)
    a = drop_mask((4, 5, 6), 0.2)
    torch.manual_seed(3)
    b = drop_mask((4, 5, 6), 0.2)
    assert a.shape == (4, 5, 6) and a.dtype == torch.bool
    assert torch.equal(a, b)
    assert not torch.equal(a, drop_mask((4, 5, 6), 0.2))


def test_dropout_scales_kept_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(1000, 64, requires_grad=True)
    y = dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.75)
    assert torch.equal(dropout(x, 0.25, training=False), x)


def test_attention_with_dropout_gradients_are_exact():
    torch.manual_seed(0)
    scores = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 7, 4, dtype=torch.float64, requires_grad=True)
    drop = torch.rand(3, 5, 7) < 0.3
    torch.autograd.gradcheck(lambda s, w: _AttentionWithDropout.apply(s, w, drop, 1 / 0.7), (scores, v))
    reference = (torch.softmax(scores, -1).masked_fill(drop, 0) / 0.7) @ v
    assert torch.allclose(_AttentionWithDropout.apply(scores, v, drop, 1 / 0.7), reference)


def test_attention_with_dropout_drops_at_rate_p():
    torch.manual_seed(0)
    q = k = torch.zeros(2, 3, 64, 8)  # uniform attention: each output is the mean of the kept values / (1 - p)
    v = torch.ones(2, 3, 64, 1)
    assert kernel("attention", q, p=0.1, training=True) == "eager"
    out = attention(q, k, v, None, 0.1, training=True)
    assert out.shape == (2, 3, 64, 1)
    assert abs(out.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation
    assert kernel("attention", q, p=0.1, training=False) == "sdpa"
    assert torch.equal(attention(q, k, v, None, 0.1, training=False), torch.ones(2, 3, 64, 1))


def test_training_attention_path_matches_inference_when_nothing_is_dropped():
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=40,
                     hidden_dropout_prob=1e-12, attention_probs_dropout_prob=1e-12)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(cfg)
    ids = torch.randint(5, 50, (3, 11))
    lengths = torch.tensor([11, 6, 9])  # padded rows: the eager path's additive key mask
    model.eval()
    with torch.no_grad():
        expected = model(ids, valid_lengths=lengths)
    model.train()  # the eager softmax-dropout path (p > 0), which drops nothing at p = 1e-12
    got = model(ids, valid_lengths=lengths)
    real = torch.arange(11)[None, :] < lengths[:, None]
    for g, e in zip(got, expected):
        assert torch.allclose(g[real], e[real], atol=1e-5)
    got[0].sum().backward()  # and it differentiates
    assert model.bert.layers[0].qkv.weight.grad.abs().sum() > 0


def test_falls_back_to_torch_off_the_fast_path():
    x = torch.randn(100, dtype=torch.float64)
    torch.manual_seed(1)
    ours = dropout(x, 0.5)
    torch.manual_seed(1)
    assert torch.equal(ours, F.dropout(x, 0.5))
