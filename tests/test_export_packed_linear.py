"""bertkit/cpu/packed_linear.py: MKL-packed Linear weights give the same outputs, and stay safe to train and save."""

from __future__ import annotations

import copy

import pytest
import torch

import bertkit
from bertkit.cpu import optimize_for_cpu
from bertkit.cpu.dispatch import mkl_packing_available
from bertkit.cpu.packed_linear import PACKED_ROWS, PackedLinear
from conftest import randomize_

pytestmark = pytest.mark.skipif(not mkl_packing_available(), reason="PyTorch built without MKL")


def test_packed_model_matches_and_keeps_its_state_dict(minilm, sst2_dev, tmp_path):
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=minilm.tokenizer.vocab_size)
    model = randomize_(bertkit.BertForSequenceClassification(cfg, num_labels=3)).eval()
    packed = optimize_for_cpu(copy.deepcopy(model), native=False, packed_rows=PACKED_ROWS)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == n_linear == 2 * 4 + 2
    assert list(packed.state_dict()) == list(model.state_dict())
    big = minilm.tokenizer(sst2_dev[:24])  # > PACKED_ROWS real tokens: oneDNN's fused GEMM
    batch = minilm.tokenizer(sst2_dev[:3])  # mixed lengths, few tokens: the packed GEMM
    assert int(batch.valid_lengths.sum()) <= PACKED_ROWS < int(big.valid_lengths.sum())
    with torch.inference_mode():
        assert (packed(big) - model(big)).abs().max() < 1e-5
        assert packed.bert.layers[0].ffn_in.packed_weight.numel() == 0  # per-token layers: oneDNN
        assert packed.classifier.packed_weight.numel() > 0  # 24 pooled rows: packed
        assert (packed(batch) - model(batch)).abs().max() < 1e-5
        assert all(m.packed_weight.numel() for m in packed.modules() if isinstance(m, PackedLinear))
    # an in-place change of a weight (an optimizer step) is picked up: the packed copy is rebuilt
    with torch.no_grad():
        for m in (model, packed):
            m.classifier.weight.mul_(-2.0)
            m.bert.layers[0].ffn_in.weight.add_(0.01)
        assert (packed(batch) - model(batch)).abs().max() < 1e-5
    # training still works: with gradients on, the plain path runs and gradients reach the weights
    packed.train()
    packed(batch).sum().backward()
    assert packed.bert.layers[1].qkv.weight.grad is not None
    # and the packed model saves the same checkpoint
    packed.eval()
    bertkit.save(packed, tmp_path / "ckpt", tokenizer=minilm.tokenizer, info={"labels": ["a", "b", "c"]})
    reloaded = bertkit.load(tmp_path / "ckpt")
    with torch.inference_mode():
        assert (reloaded(batch) - packed(batch)).abs().max() < 1e-5
