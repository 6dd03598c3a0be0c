"""The embedding API: token vectors and sentence vectors from the last encoder layer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import bertkit
from bertkit.inference.embedding import BertEmbedding


@pytest.fixture(scope="module")
def emb(minilm):
    return BertEmbedding(minilm, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def texts(sst2_dev):
    return sst2_dev[:40] + ["", "a crane is flying"]


def test_token_vectors_are_the_last_layer_in_the_callers_order(emb, minilm, texts):
    results = emb(texts)
    assert len(results) == len(texts)
    hidden = minilm.config.hidden_size
    for text, (tokens, vectors) in zip(texts, results):
        enc = minilm.tokenizer.encode(text)
        assert tokens == enc.tokens and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert vectors.shape == (len(tokens), hidden) and vectors.dtype == np.float32
    # Sorting by length inside must not change results: each equals the sentence run on its own.
    with torch.inference_mode():
        for i in (0, 7, 23, len(texts) - 2, len(texts) - 1):
            seq, _ = minilm(minilm.tokenizer([texts[i]]))
            np.testing.assert_allclose(results[i][1], seq[0].numpy(), rtol=0, atol=1e-5)


def test_results_do_not_depend_on_batch_size(minilm, texts):
    a = BertEmbedding(minilm, batch_size=3, device="cpu")(texts)
    b = BertEmbedding(minilm, batch_size=64, device="cpu")(texts)
    for (ta, va), (tb, vb) in zip(a, b):
        assert ta == tb
        np.testing.assert_allclose(va, vb, rtol=0, atol=1e-5)


def test_sentence_vectors_pool_the_token_vectors(emb, texts, minilm):
    tokens_vectors = emb(texts)
    mean = emb.sentence_vectors(texts, pooling="mean")
    cls = emb.sentence_vectors(texts, pooling="cls")
    assert mean.shape == cls.shape == (len(texts), minilm.config.hidden_size)
    assert mean.dtype == np.float32
    for i, (_, vectors) in enumerate(tokens_vectors):
        np.testing.assert_allclose(mean[i], vectors.mean(0), rtol=0, atol=1e-5)
        np.testing.assert_allclose(cls[i], vectors[0], rtol=0, atol=1e-5)
    assert not np.allclose(mean, cls)


def test_mean_pooling_matches_transformers(emb, hf_minilm, minilm, texts):
    """The sentence-transformers recipe for all-MiniLM-L6-v2, on transformers' BertModel."""
    batch = minilm.tokenizer(texts)
    with torch.inference_mode():
        out = hf_minilm(input_ids=batch.input_ids, token_type_ids=batch.segment_ids,
                        attention_mask=batch.attention_mask.long()).last_hidden_state
    mask = batch.attention_mask[:, :, None].float()
    ref = ((out * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(emb.sentence_vectors(texts, pooling="mean"), ref, rtol=0, atol=1e-4)


def test_paraphrases_are_closer_than_unrelated_text(emb):
    a, b, c = emb.sentence_vectors(
        ["The cat sat on the mat.", "A cat was sitting on the rug.", "Share prices dropped steeply on Monday."]
    )

    def cos(x, y):
        return float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos(a, b) > cos(a, c) + 0.3


def test_truncation_is_counted(minilm):
    e = BertEmbedding(minilm, max_len=8, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = e(["one two three four five six seven eight nine", "short one", "a b c d e f g h i j"])
    assert e.n_truncated == 2
    assert [len(t) for t, _ in out] == [8, 4, 8]
    assert e.max_len == 8
    assert BertEmbedding(minilm, max_len=4096, device="cpu").max_len == minilm.config.max_position_embeddings


def test_bad_pooling_and_model_without_tokenizer(emb, tmp_path):
    with pytest.raises(bertkit.BertkitError, match="sentence vectors need 'cls' or 'mean'"):
        emb.sentence_vectors(["x"], pooling="none")
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=50)
    with pytest.raises(bertkit.BertkitError, match="model has no tokenizer"):
        BertEmbedding(bertkit.BertModel(cfg))


def test_empty_input_gives_empty_output(emb, minilm):
    assert emb([]) == []
    assert emb.sentence_vectors([], pooling="mean").shape == (0, minilm.config.hidden_size)


def test_a_model_by_name_runs_as_embed_and_serve_run_it(minilm, minilm_dir, texts):
    """By name, BertEmbedding owns its model and makes it ready as `bertkit embed` does
    (for_inference: the compiled encoder on this CPU where it builds); a model object passed in is
    left as it is unless int8 is asked for, which runs an int8 copy."""
    from bertkit.cpu.int8 import Int8Linear
    from bertkit.cpu.native.encoder import load_kernels

    reference = BertEmbedding(minilm, device="cpu")
    assert minilm.cpu_encoder is None  # untouched
    by_name = BertEmbedding(str(minilm_dir), device="cpu")
    assert (by_name.model.cpu_encoder is not None) == (load_kernels() is not None)
    np.testing.assert_allclose(by_name.sentence_vectors(texts), reference.sentence_vectors(texts), rtol=0, atol=1e-4)
    int8 = BertEmbedding(minilm, device="cpu", quantize="int8")
    assert any(isinstance(m, Int8Linear) for m in int8.model.modules())
    assert not any(isinstance(m, Int8Linear) for m in minilm.modules())
    a, b = int8.sentence_vectors(texts), reference.sentence_vectors(texts)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98 and not np.allclose(a, b, atol=1e-4)
