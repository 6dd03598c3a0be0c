"""Model parity with `transformers` (the reference BERT), both directions of the checkpoint format,
and the task heads. Outputs are compared at real tokens, fp32, max abs difference 1e-4."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_abs_diff_real, randomize_

import bertkit
from bertkit.checkpoint import HEADS

transformers = pytest.importorskip("transformers")

TOL = 1e-4
BATCH = 32


def no_loading_problems(info: dict) -> None:
    """transformers' `output_loading_info`: nothing missing, unexpected or mismatched."""
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info[key]}"


def real_batches(tok, sst2_dev, mrpc_dev, n_single=256, n_pairs=64):
    """Padded batches of mixed lengths, in file order: SST-2 sentences, then MRPC pairs (segment 1)."""
    for i in range(0, n_single, BATCH):
        yield tok(sst2_dev[i : i + BATCH])
    for i in range(0, n_pairs, BATCH):
        rows = mrpc_dev[i : i + BATCH]
        yield tok([a for a, _ in rows], [b for _, b in rows])


def hf_inputs(batch) -> dict:
    return {
        "input_ids": batch.input_ids,
        "token_type_ids": batch.segment_ids,
        "attention_mask": batch.attention_mask.long(),
    }


@pytest.fixture(scope="module")
def parity_batches(minilm, sst2_dev, mrpc_dev):
    batches = list(real_batches(minilm.tokenizer, sst2_dev, mrpc_dev))
    n_sentences = sum(len(b) for b in batches)
    assert n_sentences >= 200
    # The batches really are padded with mixed lengths, and the pairs really use segment 1.
    assert all(int(b.valid_lengths.min()) < b.input_ids.shape[1] for b in batches)
    assert any(bool((b.segment_ids == 1).any()) for b in batches)
    return batches


@pytest.fixture(scope="module")
def few_rows(minilm, parity_batches):
    """The first 8 rows of the first (single texts) and last (pairs) batches, for the costly full MLM
    logits over every position (a vocabulary-sized vector per token)."""
    return [minilm.tokenizer.pad(parity_batches[i].encodings[:8]) for i in (0, -1)]


# ---- the real checkpoint -----------------------------------------------------------------------
def test_minilm_loads_with_no_missing_or_unexpected_tensors(minilm, minilm_dir):
    assert type(minilm) is bertkit.BertModel
    assert minilm.load_report["missing"] == [] and minilm.load_report["unexpected"] == []
    _, info = transformers.BertModel.from_pretrained(minilm_dir, output_loading_info=True)
    no_loading_problems(info)


def test_minilm_matches_transformers_on_real_sentences(minilm, hf_minilm, parity_batches):
    assert hf_minilm.config._attn_implementation == "sdpa"
    worst_seq = worst_pooled = 0.0
    with torch.inference_mode():
        for batch in parity_batches:
            seq, pooled = minilm(batch)
            ref = hf_minilm(**hf_inputs(batch))
            assert seq.shape == ref.last_hidden_state.shape
            worst_seq = max(worst_seq, max_abs_diff_real(seq, ref.last_hidden_state, batch.attention_mask))
            worst_pooled = max(worst_pooled, float((pooled - ref.pooler_output).abs().max()))
            # bertkit's documented contract: zeros at padded positions.
            assert float(seq[~batch.attention_mask].abs().max()) == 0.0
    assert worst_seq < TOL, worst_seq
    assert worst_pooled < TOL, worst_pooled


# ---- a random pretraining model, bertkit -> transformers ------------------------------------------
@pytest.fixture(scope="module")
def bertkit_pretraining_dir(tmp_path_factory, minilm):
    tok = minilm.tokenizer
    cfg = bertkit.BertConfig.from_preset("bert_4_256_4", vocab_size=tok.vocab_size)
    model = randomize_(bertkit.BertForPreTraining(cfg), seed=1).eval()
    out = tmp_path_factory.mktemp("pretraining") / "ckpt"
    bertkit.save(model, out, tokenizer=tok)
    return model, out


def random_positions(batch, per_row: int, seed: int = 0) -> torch.Tensor:
    """(B, per_row) random positions among each row's real tokens, as a pretraining batch masks them."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, int(n), (per_row,), generator=g) for n in batch.valid_lengths])


def gather_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return x.gather(1, positions[:, :, None].expand(-1, -1, x.shape[-1]))


def test_pretraining_heads_saved_by_bertkit_load_in_transformers(bertkit_pretraining_dir, parity_batches, few_rows):
    model, directory = bertkit_pretraining_dir
    hf, info = transformers.BertForPreTraining.from_pretrained(directory, output_loading_info=True)
    no_loading_problems(info)
    hf.eval()
    with torch.inference_mode():
        # Rows of single texts and of pairs through transformers' whole forward: MLM logits at every real token.
        for batch in few_rows:
            mlm, nsp = model(batch)
            ref = hf(**hf_inputs(batch))
            assert max_abs_diff_real(mlm, ref.prediction_logits, batch.attention_mask) < TOL
            assert float((nsp - ref.seq_relationship_logits).abs().max()) < TOL
        # The random weights are far from zero: the comparison is not between two near-zero tensors.
        assert float(ref.prediction_logits.abs().max()) > 0.1 and float(ref.seq_relationship_logits.abs().max()) > 0.01

        # All the batches: hidden states, pooled output, NSP logits, and MLM logits at 8 random real
        # positions per row (bertkit's masked-positions path; transformers' own MLM head there).
        worst = {"seq": 0.0, "pooled": 0.0, "mlm": 0.0, "nsp": 0.0}
        for i, batch in enumerate(parity_batches):
            mask = batch.attention_mask
            positions = random_positions(batch, 8, seed=i)
            seq, pooled = model.bert(batch)
            mlm, nsp = model(batch, masked_positions=positions)
            ref = hf.bert(**hf_inputs(batch))
            ref_mlm = hf.cls.predictions(gather_positions(ref.last_hidden_state, positions))
            worst["seq"] = max(worst["seq"], max_abs_diff_real(seq, ref.last_hidden_state, mask))
            worst["pooled"] = max(worst["pooled"], float((pooled - ref.pooler_output).abs().max()))
            worst["mlm"] = max(worst["mlm"], float((mlm - ref_mlm).abs().max()))
            worst["nsp"] = max(worst["nsp"], float((nsp - hf.cls.seq_relationship(ref.pooler_output)).abs().max()))
    assert all(v < TOL for v in worst.values()), worst


def test_mlm_head_at_masked_positions_only(bertkit_pretraining_dir, parity_batches):
    model, _ = bertkit_pretraining_dir
    batch = parity_batches[0]
    positions = random_positions(batch, 5)
    with torch.inference_mode():
        full, nsp_full = model(batch)
        at, nsp_at = model(batch, masked_positions=positions)
    assert at.shape == (len(batch), 5, model.config.vocab_size)
    torch.testing.assert_close(at, gather_positions(full, positions), rtol=0, atol=1e-5)
    torch.testing.assert_close(nsp_at, nsp_full, rtol=0, atol=0)


def test_last_layer_on_masked_rows_gives_the_same_loss_and_gradients(minilm, parity_batches):
    """Pretraining runs the last block's per-token work only at [CLS] and the masked positions: the
    loss and every parameter's gradient equal those of the full encoder read at those positions."""
    cfg = bertkit.BertConfig.from_preset(
        "bert_4_256_4", vocab_size=minilm.tokenizer.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    model = randomize_(bertkit.BertForPreTraining(cfg), seed=2).train()  # no dropout: train mode = autograd on
    batch = parity_batches[1]
    positions = random_positions(batch, 6, seed=3)
    weights = torch.ones(positions.shape)
    weights[1::2, 4:] = 0  # odd rows have 4 predictions, as a shard pads its prediction slots
    targets = torch.randint(0, model.config.vocab_size, positions.shape, generator=torch.Generator().manual_seed(1))
    nsp_labels = torch.arange(len(batch)) % 2

    def loss_and_grads(subset: bool):
        model.zero_grad(set_to_none=True)
        if subset:
            mlm, nsp = model(batch, masked_positions=positions, masked_weights=weights)
        else:
            full, nsp = model(batch)
            mlm = gather_positions(full, positions)[weights > 0]
        loss = F.cross_entropy(mlm, targets[weights > 0]) + F.cross_entropy(nsp, nsp_labels)
        loss.backward()
        return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_loss, fast = loss_and_grads(True)
    full_loss, full = loss_and_grads(False)
    assert abs(fast_loss - full_loss) < 1e-5
    worst = max(float((fast[n] - full[n]).abs().max()) for n in full)
    assert worst < 1e-5, worst
    assert max(float(g.abs().max()) for g in full.values()) > 1e-3  # the gradients are not all ~0


# ---- transformers -> bertkit ------------------------------------------------------------------
def hf_config(vocab_size: int, layers=4, hidden=256, heads=4):
    return transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
    )


@pytest.mark.parametrize("arch", ["BertForPreTraining", "BertModel"])
def test_directory_written_by_transformers_loads_in_bertkit(arch, tmp_path, minilm, minilm_vocab, parity_batches, few_rows):
    torch.manual_seed(0)
    hf = randomize_(getattr(transformers, arch)(hf_config(minilm.tokenizer.vocab_size)), seed=2).eval()
    hf.save_pretrained(tmp_path)
    transformers.BertTokenizerFast(str(minilm_vocab), do_lower_case=True).save_pretrained(tmp_path)

    model = bertkit.load(tmp_path)
    expected_class = bertkit.BertForPreTraining if arch == "BertForPreTraining" else bertkit.BertModel
    assert type(model) is expected_class
    assert model.load_report["missing"] == [] and model.load_report["unexpected"] == []
    assert model.tokenizer is not None and model.tokenizer.vocab == minilm.tokenizer.vocab
    with torch.inference_mode():
        for batch in parity_batches if arch == "BertModel" else few_rows:
            mask = batch.attention_mask
            if arch == "BertModel":
                seq, pooled = model(batch)
                ref = hf(**hf_inputs(batch))
                assert max_abs_diff_real(seq, ref.last_hidden_state, mask) < TOL
                assert float((pooled - ref.pooler_output).abs().max()) < TOL
            else:
                mlm, nsp = model(batch)
                ref = hf(**hf_inputs(batch))
                assert max_abs_diff_real(mlm, ref.prediction_logits, mask) < TOL
                assert float((nsp - ref.seq_relationship_logits).abs().max()) < TOL


def test_pretraining_checkpoint_loads_as_encoder_and_reports_the_unused_heads(bertkit_pretraining_dir, parity_batches):
    model, directory = bertkit_pretraining_dir
    encoder = bertkit.load(directory, head="encoder")
    assert type(encoder) is bertkit.BertModel
    assert encoder.load_report["missing"] == []
    assert encoder.load_report["unexpected"] and all(n.startswith("cls.") for n in encoder.load_report["unexpected"])
    batch = parity_batches[0]
    with torch.inference_mode():
        a, pa = encoder(batch)
        b, pb = model.bert(batch)
    assert torch.equal(a, b) and torch.equal(pa, pb)


# ---- task heads -----------------------------------------------------------------------------
TASKS = {
    # bertkit class, kwargs, transformers class
    "classification": (bertkit.BertForSequenceClassification, {"num_labels": 3}, "BertForSequenceClassification"),
    "regression": (bertkit.BertForSequenceClassification, {"num_labels": 1}, "BertForSequenceClassification"),
    "token_classification": (bertkit.BertForTokenClassification, {"num_labels": 5}, "BertForTokenClassification"),
    "question_answering": (bertkit.BertForQuestionAnswering, {}, "BertForQuestionAnswering"),
}


@pytest.mark.parametrize("task", list(TASKS))
def test_task_head_saved_by_bertkit_matches_transformers(task, tmp_path, minilm, parity_batches):
    cls, kwargs, hf_name = TASKS[task]
    tok = minilm.tokenizer
    cfg = bertkit.BertConfig.from_preset("bert_2_128_2", vocab_size=tok.vocab_size)
    model = randomize_(cls(cfg, **kwargs), seed=3).eval()
    labels = {"classification": ["neg", "neutral", "pos"], "token_classification": list("OBIES")}.get(task)
    bertkit.save(model, tmp_path, tokenizer=tok, info={"labels": labels} if labels else None)

    hf, info = getattr(transformers, hf_name).from_pretrained(tmp_path, output_loading_info=True)
    no_loading_problems(info)
    hf.eval()
    if labels:
        assert [hf.config.id2label[i] for i in range(len(labels))] == labels
    if task == "regression":
        assert hf.config.problem_type == "regression" and hf.config.num_labels == 1

    reloaded = bertkit.load(tmp_path)
    assert type(reloaded) is cls and bertkit.checkpoint.head_of(reloaded) == task
    assert reloaded.load_report["missing"] == [] and reloaded.load_report["unexpected"] == []
    assert reloaded.labels == (["LABEL_0"] if task == "regression" else labels)

    batches = parity_batches[:2] + parity_batches[-1:]
    with torch.inference_mode():
        for batch in batches:
            b, t = batch.input_ids.shape
            mask = batch.attention_mask
            ref = hf(**hf_inputs(batch))
            ours = model(batch.input_ids, batch.segment_ids, batch.valid_lengths)
            again = reloaded(batch.input_ids, batch.segment_ids, batch.valid_lengths)
            if task in ("classification", "regression"):
                assert ours.shape == (b, kwargs["num_labels"])
                assert float((ours - ref.logits).abs().max()) < TOL
                assert torch.equal(ours, again)
            elif task == "token_classification":
                assert ours.shape == (b, t, 5)
                assert max_abs_diff_real(ours, ref.logits, mask) < TOL
                assert torch.equal(ours[mask], again[mask])
            else:
                start, end = ours
                assert start.shape == end.shape == (b, t)
                assert max_abs_diff_real(start, ref.start_logits, mask) < TOL
                assert max_abs_diff_real(end, ref.end_logits, mask) < TOL
                assert torch.equal(start, again[0]) and torch.equal(end, again[1])


def test_every_head_has_a_transformers_architecture():
    for head, (cls, arch) in HEADS.items():
        assert hasattr(transformers, arch), arch


def test_head_built_from_an_encoder_checkpoint(minilm_dir):
    model = bertkit.load(minilm_dir, head="classification", num_labels=4)
    assert type(model) is bertkit.BertForSequenceClassification and model.num_labels == 4
    # The encoder came from the file; only the new classifier is reported as initialised.
    assert sorted(model.load_report["missing"]) == ["classifier.bias", "classifier.weight"]
    with torch.inference_mode():
        logits = model(model.tokenizer(["a crane is flying", "hello"]))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()


def test_unknown_head_is_a_clear_error(minilm_dir):
    with pytest.raises(bertkit.BertkitError, match="unknown head 'nope'; known heads: encoder, pretraining"):
        bertkit.load(minilm_dir, head="nope")


def test_sequence_longer_than_positions_is_refused(minilm):
    ids = torch.ones(1, minilm.config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        minilm(ids)
