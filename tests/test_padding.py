"""Unpad / repad, and padding never changing the outputs at real tokens."""

from __future__ import annotations

import pytest
import torch
from conftest import max_abs_diff_real, randomize_

import bertkit
from bertkit.padding import packed_rows, real_token_indices, repad, unpad


def lengths_mask(lengths, width):
    lengths = torch.tensor(lengths)
    return torch.arange(width)[None, :] < lengths[:, None]


# ---- padding.py -----------------------------------------------------------------------------
def test_real_token_indices_are_row_major_flat_positions():
    mask = lengths_mask([2, 0, 3], 4)
    assert real_token_indices(mask).tolist() == [0, 1, 8, 9, 10]
    assert real_token_indices(torch.ones(2, 3, dtype=torch.bool)).tolist() == list(range(6))


def test_packed_rows_maps_flat_positions_to_rows_of_the_packed_layout():
    mask = lengths_mask([2, 0, 3], 4)  # real flat positions 0, 1, 8, 9, 10 -> packed rows 0..4
    idx = real_token_indices(mask)
    assert packed_rows(torch.tensor([8, 0, 10, 1]), idx, 12).tolist() == [2, 0, 4, 1]
    assert packed_rows(torch.tensor([5, 2]), None, 12).tolist() == [5, 2]  # nothing unpadded
    with pytest.raises(ValueError, match="padding"):
        packed_rows(torch.tensor([0, 2]), idx, 12)  # position 2 of row 0 is padding


@pytest.mark.parametrize("trailing", [(), (5,), (2, 3)])
def test_unpad_repad_round_trip(trailing):
    g = torch.Generator().manual_seed(0)
    lengths, width = [7, 1, 4, 7, 3], 7
    x = torch.randn(len(lengths), width, *trailing, generator=g)
    mask = lengths_mask(lengths, width)
    idx = real_token_indices(mask)
    packed = unpad(x, idx)
    assert packed.shape == (sum(lengths), *trailing)
    assert torch.equal(packed, x[mask])  # the real tokens, in row-major order
    back = repad(packed, idx, len(lengths), width)
    assert back.shape == x.shape
    assert torch.equal(back[mask], x[mask])
    assert torch.count_nonzero(back[~mask]) == 0  # zeros at padding


def test_gradients_flow_through_unpad_and_repad():
    g = torch.Generator().manual_seed(1)
    lengths, width, hidden = [3, 5, 1], 5, 4
    mask = lengths_mask(lengths, width)
    idx = real_token_indices(mask)
    x = torch.randn(len(lengths), width, hidden, generator=g, requires_grad=True)
    weights = torch.randn(len(lengths), width, hidden, generator=g)

    packed = unpad(x, idx)
    packed.retain_grad()
    (repad(packed * 2.0, idx, len(lengths), width) * weights).sum().backward()
    # d/dx: 2 * weights at real tokens, exactly zero at padding (padding never reaches the loss).
    assert torch.equal(x.grad[mask], 2.0 * weights[mask])
    assert torch.count_nonzero(x.grad[~mask]) == 0
    # d/dpacked: the weights at the rows the packed vectors were scattered to.
    assert torch.equal(packed.grad, 2.0 * weights[mask])


# ---- the model: padding never changes real tokens' outputs ------------------------------------
SENTENCES = [
    "a crane is flying over the lake",
    "hi",
    "the crane spread its wings and flew away over the water, far from the building site downtown",
    "a crane driver came",
]


def test_sentence_alone_equals_sentence_in_a_padded_batch(minilm):
    tok = minilm.tokenizer
    with torch.inference_mode():
        batch = tok(SENTENCES)
        assert len(set(batch.valid_lengths.tolist())) == len(SENTENCES)  # really mixed lengths
        seq, pooled = minilm(batch)
        for i, text in enumerate(SENTENCES):
            alone = tok([text])
            assert alone.input_ids.shape[1] == int(batch.valid_lengths[i])  # no padding at all
            seq1, pooled1 = minilm(alone)
            n = int(batch.valid_lengths[i])
            torch.testing.assert_close(seq[i, :n], seq1[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(pooled[i], pooled1[0], rtol=0, atol=1e-5)
            assert torch.count_nonzero(seq[i, n:]) == 0


def test_extra_padding_columns_change_nothing(minilm):
    tok = minilm.tokenizer
    batch = tok(SENTENCES)
    b, t = batch.input_ids.shape
    wide_ids = torch.full((b, t + 9), tok.pad_id, dtype=torch.long)
    wide_ids[:, :t] = batch.input_ids
    # Junk beyond the valid length must not matter either: padded ids and segments are never read.
    wide_ids[:, t:] = 1037
    wide_segs = torch.ones((b, t + 9), dtype=torch.long)
    wide_segs[:, :t] = batch.segment_ids
    with torch.inference_mode():
        seq, pooled = minilm(batch)
        seq_w, pooled_w = minilm(wide_ids, wide_segs, batch.valid_lengths)
    assert max_abs_diff_real(seq, seq_w[:, :t], batch.attention_mask) < 1e-5
    assert float((pooled - pooled_w).abs().max()) < 1e-5
    assert torch.count_nonzero(seq_w[:, t:]) == 0


def test_valid_lengths_and_attention_mask_give_the_same_result(minilm):
    batch = minilm.tokenizer(SENTENCES, ["short", "x", "a second text in the pair", "y z"])
    with torch.inference_mode():
        by_lengths = minilm(batch.input_ids, batch.segment_ids, valid_lengths=batch.valid_lengths)
        by_mask = minilm(batch.input_ids, batch.segment_ids, attention_mask=batch.attention_mask.long())
        by_bool_mask = minilm(batch.input_ids, batch.segment_ids, attention_mask=batch.attention_mask)
    for a, b in zip(by_lengths, by_mask):
        assert torch.equal(a, b)
    for a, b in zip(by_lengths, by_bool_mask):
        assert torch.equal(a, b)


def test_batch_without_padding(minilm, hf_minilm):
    """Equal-length rows take the no-gather path; it must agree with the padded path and with HF."""
    tok = minilm.tokenizer
    texts = ["the cat sat on the mat", "a dog ran in the park", "one two three four five six"]
    batch = tok(texts)
    assert bool((batch.valid_lengths == batch.input_ids.shape[1]).all())
    with torch.inference_mode():
        seq, pooled = minilm(batch)
        seq_nolen, _ = minilm(batch.input_ids, batch.segment_ids)  # no lengths, no mask: all real
        padded = tok(texts + ["a much longer sentence that forces padding onto the three others"])
        seq_p, pooled_p = minilm(padded)
        ref = hf_minilm(input_ids=batch.input_ids, token_type_ids=batch.segment_ids)
    assert torch.equal(seq, seq_nolen)
    t = batch.input_ids.shape[1]
    torch.testing.assert_close(seq, seq_p[:3, :t], rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, pooled_p[:3], rtol=0, atol=1e-5)
    torch.testing.assert_close(seq, ref.last_hidden_state, rtol=0, atol=1e-4)


def test_training_gradients_ignore_padding():
    """In training mode (dropout off to compare), the loss over real tokens has the same gradient
    whether or not the batch carries extra padding."""
    cfg = bertkit.BertConfig.from_preset(
        "bert_2_128_2", vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model = randomize_(bertkit.BertModel(cfg), seed=4).train()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(5, 100, (3, 6), generator=g)
    lengths = torch.tensor([6, 2, 4])

    def grads(input_ids):
        model.zero_grad()
        seq, pooled = model(input_ids, valid_lengths=lengths)
        mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
        (seq[mask].pow(2).sum() + pooled.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    a = grads(ids)
    wide = torch.cat([ids, torch.randint(5, 100, (3, 4), generator=g)], dim=1)
    b = grads(wide)
    for name in a:
        assert torch.isfinite(a[name]).all(), name
        scale = float(a[name].abs().max())
        assert scale > 0, name  # every parameter gets a gradient
        assert float((a[name] - b[name]).abs().max()) <= 1e-5 * scale, name
    # Ids that appear only at padded positions are never embedded: their rows get no gradient.
    real_ids = set(ids[torch.arange(6)[None, :] < lengths[:, None]].tolist())
    pad_only = sorted(set(wide.flatten().tolist()) - real_ids)
    assert pad_only
    assert torch.count_nonzero(b["embeddings.word_embeddings.weight"][pad_only]) == 0
