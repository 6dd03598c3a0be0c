"""bertkit.scripted_encoder: the flat encoder for small unpadded CPU inputs (TorchScript, or the compiled
kernels of native_encoder where they build) equals the layer-by-layer path, steps aside wherever it
does not apply, and follows every kind of weight change."""

from __future__ import annotations

import copy

import pytest
import torch

import bertkit
from bertkit.native_encoder import load_kernels
from bertkit.packed_linear import mkl_packing_available, pack_linear_weights
from bertkit.scripted_encoder import use_scripted_encoder
from bertkit.weight_versions import ParametersWatch
from conftest import randomize_

pytestmark = pytest.mark.skipif(not mkl_packing_available(), reason="PyTorch built without MKL")


def tiny(cls=bertkit.BertModel, seed=0, pooler=True, **overrides):
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=200, **overrides)
    return randomize_(cls(cfg) if pooler else cls(cfg, add_pooler=False), seed=seed).eval()


def inputs(batch=1, seqlen=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (batch, seqlen), generator=g)
    segs = (torch.arange(seqlen) >= seqlen // 2).long().expand(batch, seqlen).contiguous()
    return ids, segs


def outputs_both_ways(model, *args, native=True, **kwargs):
    """(scripted outputs, layer-by-layer outputs) of the same model, and whether the script ran."""
    scripted = use_scripted_encoder(copy.deepcopy(model), native=native)
    with torch.inference_mode():
        fast = scripted(*args, **kwargs)
        plain = model(*args, **kwargs)
    bert = scripted if isinstance(scripted, bertkit.BertModel) else scripted.bert
    return fast, plain, bert.scripted_encoder._script is not None


@pytest.mark.parametrize("batch,seqlen", [(1, 1), (1, 9), (3, 17), (2, 128)])
@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
@pytest.mark.parametrize("native", [False, True])
def test_equals_the_layer_by_layer_path(batch, seqlen, act, native):
    model = tiny(hidden_act=act)
    ids, segs = inputs(batch, seqlen)
    (seq, pooled), (ref_seq, ref_pooled), ran = outputs_both_ways(model, ids, segs, torch.full((batch,), seqlen), native=native)
    assert ran
    assert seq.shape == ref_seq.shape and pooled.shape == ref_pooled.shape
    assert (seq - ref_seq).abs().max() < 1e-5 and (pooled - ref_pooled).abs().max() < 1e-5


def test_task_heads_and_a_model_without_pooler():
    ids, segs = inputs(2, 11)
    fast, plain, ran = outputs_both_ways(tiny(bertkit.BertForSequenceClassification), ids, segs)
    assert ran and (fast - plain).abs().max() < 1e-5
    (start, end), (ref_start, ref_end), ran = outputs_both_ways(tiny(bertkit.BertForQuestionAnswering), ids, segs)
    assert ran and (start - ref_start).abs().max() < 1e-5 and (end - ref_end).abs().max() < 1e-5
    (seq, pooled), (ref_seq, _), ran = outputs_both_ways(tiny(pooler=False), ids, segs)
    assert ran and pooled is None and (seq - ref_seq).abs().max() < 1e-5


@pytest.mark.parametrize("native", [False, True])
def test_real_checkpoint_on_real_sentences(minilm, sst2_dev, native):
    scripted = use_scripted_encoder(pack_linear_weights(copy.deepcopy(minilm)), native=native)
    with torch.inference_mode():
        for text in sst2_dev[:5]:
            batch = minilm.tokenizer([text])
            seq, pooled = scripted(batch)
            ref_seq, ref_pooled = minilm(batch)
            assert (seq - ref_seq).abs().max() < 1e-5 and (pooled - ref_pooled).abs().max() < 1e-5
    assert scripted.scripted_encoder._script is not None
    assert not native or scripted.scripted_encoder.runs_native or load_kernels() is None


def test_steps_aside_where_it_does_not_apply():
    model = use_scripted_encoder(tiny(), max_tokens=64)
    enc = model.scripted_encoder
    ids, segs = inputs(2, 9)
    with torch.inference_mode():
        assert enc(ids, segs, valid_lengths=torch.tensor([9, 5])) is None  # padding
        assert enc(ids, segs, attention_mask=torch.tensor([[1] * 9, [1] * 8 + [0]])) is None
        assert enc(*inputs(8, 9)) is None  # 72 tokens > max_tokens
        assert enc(ids[None], segs[None]) is None  # not (B, T)
    assert enc(ids, segs) is None  # gradients on: training needs the differentiable path
    model.train()
    with torch.no_grad():
        assert enc(ids, segs) is None
    model.eval()
    with torch.no_grad():
        assert enc(ids, segs) is not None and enc(ids, segs, valid_lengths=torch.tensor([9, 9])) is not None
    # a padded batch through the model takes the layer-by-layer path and pads with zeros as always
    with torch.inference_mode():
        seq, _ = model(ids, segs, torch.tensor([9, 5]))
    assert seq[1, 5:].abs().max() == 0


def test_follows_weight_changes():
    model = use_scripted_encoder(tiny(seed=0))
    other = tiny(seed=1)
    ids, segs = inputs(1, 12)
    with torch.inference_mode():
        before, _ = model(ids, segs)
    model.load_state_dict(other.state_dict())  # in place: every version counter moves
    with torch.inference_mode():
        after, _ = model(ids, segs)
        expected, _ = other(ids, segs)
    assert (after - expected).abs().max() < 1e-5 and (before - after).abs().max() > 1e-3

    # a fused optimizer step changes weights without moving version counters
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    model.train()
    model(ids, segs)[0].sum().backward()
    optimizer.step()
    model.eval()
    with torch.inference_mode():
        stepped, _ = model(ids, segs)
        model.scripted_encoder = None
        reference, _ = model(ids, segs)
    assert (stepped - reference).abs().max() < 1e-5 and (stepped - after).abs().max() > 1e-4


def test_follows_swapped_parameters_and_modules():
    model = use_scripted_encoder(tiny(seed=0))
    other = tiny(seed=2)
    ids, segs = inputs(1, 7)
    with torch.inference_mode():
        model(ids, segs)
    model.load_state_dict(other.state_dict(), assign=True)  # new Parameter objects, not copies
    with torch.inference_mode():
        got, _ = model(ids, segs)
        want, _ = other(ids, segs)
    assert (got - want).abs().max() < 1e-5
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        got, _ = quantized(ids, segs)
    assert quantized.scripted_encoder._script is None  # int8 layers keep their own path
    assert (got - want).abs().max() > 0


def test_deep_copy_gets_its_own_script():
    model = use_scripted_encoder(tiny(seed=0))
    ids, segs = inputs(1, 6)
    with torch.inference_mode():
        model(ids, segs)
    twin = copy.deepcopy(model)
    assert twin.scripted_encoder.bert is twin
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    with torch.inference_mode():
        a, _ = model(ids, segs)
        b, _ = twin(ids, segs)
        twin.scripted_encoder = None
        b_ref, _ = twin(ids, segs)
    assert (a - b).abs().max() > 1e-3 and (b - b_ref).abs().max() < 1e-5


def test_parameters_watch_sees_every_kind_of_change():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    watch = ParametersWatch(model)
    key = watch.key()
    assert watch.key() == key  # nothing changed
    torch.nn.Linear(3, 3)  # another module being built anywhere is not a change of this one
    assert watch.key() == key
    with torch.no_grad():
        model[1].weight.add_(1)
    assert watch.key() != key
    key = watch.key()
    model[0].weight.data = torch.randn(4, 4)  # new storage, same Parameter
    assert watch.key() != key
    key = watch.key()
    model[1].bias = torch.nn.Parameter(torch.zeros(4))  # a swapped Parameter
    assert watch.key() != key
    key = watch.key()
    model[0] = torch.nn.Linear(4, 4)  # a swapped module
    assert watch.key() != key
    key = watch.key()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    assert watch.key() != key


@pytest.mark.parametrize("scripted", [False, True])
def test_pooled_output_alone_equals_the_full_forward(scripted):
    """BertModel.pooled_output runs the last layer's per-token work for [CLS] only: same pooled vectors."""
    model = tiny(seed=3)
    if scripted:
        use_scripted_encoder(model)
    # one sentence, an unpadded batch (strided [CLS] rows in the script), a padded batch
    for ids, segs, lengths in [(*inputs(1, 10), None), (*inputs(3, 12), None), (*inputs(3, 12), torch.tensor([12, 7, 3]))]:
        with torch.inference_mode():
            alone = model.pooled_output(ids, segs, lengths)
            _, full = model(ids, segs, lengths)
        assert alone.shape == full.shape and (alone - full).abs().max() < 1e-5


def test_classifier_gradients_are_unchanged_by_the_cls_only_last_layer():
    """Training through pooled_output: the same loss and gradients as through the full forward."""
    torch.manual_seed(0)
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=200, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    clf = randomize_(bertkit.BertForSequenceClassification(cfg, num_labels=3)).train()
    ids, segs = inputs(4, 10)
    lengths, labels = torch.tensor([10, 8, 5, 2]), torch.tensor([0, 2, 1, 2])

    def loss_and_grads(forward):
        clf.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(), labels)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in clf.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(lambda: clf(ids, segs, lengths))
    ref_loss, ref_grads = loss_and_grads(lambda: clf.classifier(clf.bert(ids, segs, lengths)[1]))
    assert abs(loss - ref_loss) < 1e-6 and grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert (g - ref_grads[name]).abs().max() < 1e-5, name


def test_pooled_output_without_a_pooler_is_a_clear_error():
    model = use_scripted_encoder(tiny(pooler=False))
    with torch.inference_mode(), pytest.raises(ValueError, match="no pooler"):
        model.pooled_output(*inputs(1, 5))
