"""GluonNLP .params and Google TensorFlow checkpoints -> bertkit, checked against the original frameworks.

tests/fixtures/zoo/ was written by scripts/make_conversion_fixtures.py with GluonNLP 0.10 / MXNet 1.9.1
and TensorFlow (random small models in their own formats, and their own outputs on real GLUE
sentences); nothing here imports MXNet or TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import bertkit
from bertkit.zoo.convert import convert, read_source
from bertkit.zoo.convert_tf import source_names as tf_names, tf_to_hf
from bertkit.zoo.mxnet_params import read_params
from bertkit.zoo.source import Options
from bertkit.zoo.tf_bundle import read_bundle
from conftest import assert_cli_error, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "zoo"
GLUON_PRE, GLUON_CLF, TF = FIXTURES / "gluonnlp_pretraining", FIXTURES / "gluonnlp_classifier", FIXTURES / "tf"
TOL = 1e-4


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTKIT_CACHE", str(tmp_path / "bertkit-cache"))
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet-home"))


def outputs(folder: Path) -> dict:
    with np.load(folder / "outputs.npz") as f:
        return {k: f[k] for k in f.files}


def real_tokens(o: dict) -> np.ndarray:
    lengths = o["valid_lengths"] if "valid_lengths" in o else o["input_mask"].sum(1)
    return np.arange(o["input_ids"].shape[1])[None, :] < lengths[:, None]


def run_encoder(model, o):
    encoder = model.bert if hasattr(model, "bert") else model
    lengths = o["valid_lengths"] if "valid_lengths" in o else o["input_mask"].sum(1)
    with torch.no_grad():
        seq, pooled = encoder(torch.from_numpy(o["input_ids"]), torch.from_numpy(o["segment_ids"]), torch.from_numpy(lengths))
    return seq.numpy(), pooled.numpy()


def assert_close(ours: np.ndarray, theirs: np.ndarray, what: str):
    diff = float(np.abs(ours - theirs).max())
    assert diff < TOL, f"{what}: max |bertkit - original| = {diff:.2e}"
    # The check means something only if the original's values are far above the tolerance and not all alike.
    assert float(np.abs(theirs).max()) > 1000 * TOL and float(theirs.std()) > 100 * TOL, what


def assert_tokenizer_matches_gluonnlp(tokenizer, input_ids: np.ndarray):
    """bertkit's tokenizer, on the converted vocabulary, gives GluonNLP's pieces and ids for the real sentences."""
    examples = json.loads((FIXTURES / "examples.json").read_text(encoding="utf-8"))
    for row, ex in enumerate(examples):
        enc = tokenizer.encode(ex["text"], ex["text_b"])
        expected = ["[CLS]"] + ex["tokens_a"] + ["[SEP]"] + ((ex["tokens_b"] + ["[SEP]"]) if ex["tokens_b"] else [])
        assert enc.tokens == expected
        ids = list(enc.ids)
        for p in ex["masked_positions"]:
            ids[p] = tokenizer.mask_id
        assert ids == input_ids[row, : len(ids)].tolist()
        assert enc.segment_ids == ex["segment_ids"]


# ---- parity with the original frameworks -------------------------------------------------------
def test_gluonnlp_pretraining_model_matches_gluonnlp(tmp_path):
    out = convert(GLUON_PRE / "model.params", tmp_path / "ckpt")
    model = bertkit.load(out)
    assert isinstance(model, bertkit.BertForPreTraining) and model.load_report["missing"] == []
    assert model.config.hidden_act == "gelu" and model.config.num_attention_heads == 4  # from hparams.json
    o = outputs(GLUON_PRE)
    seq, pooled = run_encoder(model, o)
    mask = real_tokens(o)
    assert_close(seq[mask], o["sequence_output"][mask], "sequence output")
    assert np.all(seq[~mask] == 0) and np.all(o["sequence_output"][~mask] == 0)  # both zero the padding
    assert_close(pooled, o["pooled_output"], "pooled output")
    lengths = torch.from_numpy(o["valid_lengths"])
    with torch.no_grad():
        mlm, nsp = model(torch.from_numpy(o["input_ids"]), torch.from_numpy(o["segment_ids"]), lengths,
                         masked_positions=torch.from_numpy(o["masked_positions"]))
    assert_close(mlm.numpy(), o["mlm_logits"], "MLM logits")
    assert_close(nsp.numpy(), o["nsp_logits"], "NSP logits")
    assert model.tokenizer.lowercase
    assert_tokenizer_matches_gluonnlp(model.tokenizer, o["input_ids"])


def test_gluonnlp_classifier_matches_gluonnlp(tmp_path):
    out = convert(GLUON_CLF / "model.params", tmp_path / "ckpt", Options(labels=["neg", "neutral", "pos"]))
    model = bertkit.load(out)
    assert isinstance(model, bertkit.BertForSequenceClassification) and model.labels == ["neg", "neutral", "pos"]
    # GluonNLP's own vocabulary order ([UNK] first, [PAD] fifth) is kept, and the padding id with it.
    vocab = json.loads((GLUON_CLF / "vocab.json").read_text())["idx_to_token"]
    assert model.tokenizer.convert_ids_to_tokens(range(len(vocab))) == vocab and vocab.index("[PAD]") == 4
    assert model.config.pad_token_id == 4 and model.tokenizer.pad_id == 4
    o = outputs(GLUON_CLF)
    seq, pooled = run_encoder(model, o)
    mask = real_tokens(o)
    assert_close(seq[mask], o["sequence_output"][mask], "sequence output")
    assert_close(pooled, o["pooled_output"], "pooled output")
    with torch.no_grad():
        logits = model(torch.from_numpy(o["input_ids"]), torch.from_numpy(o["segment_ids"]), torch.from_numpy(o["valid_lengths"]))
    assert_close(logits.numpy(), o["logits"], "classifier logits")
    assert_tokenizer_matches_gluonnlp(model.tokenizer, o["input_ids"])


def test_tensorflow_checkpoint_matches_tensorflow(tmp_path):
    out = convert(TF, tmp_path / "ckpt")
    model = bertkit.load(out)
    assert isinstance(model, bertkit.BertForPreTraining) and model.load_report["missing"] == []
    assert model.config.hidden_act == "gelu_new"  # modeling.py's GELU is the tanh approximation
    o = outputs(TF)
    seq, pooled = run_encoder(model, o)
    mask = real_tokens(o)
    assert_close(seq[mask], o["sequence_output"][mask], "sequence output")
    assert_close(pooled, o["pooled_output"], "pooled output")
    with torch.no_grad():
        mlm, nsp = model(torch.from_numpy(o["input_ids"]), torch.from_numpy(o["segment_ids"]),
                         torch.from_numpy(o["input_mask"].sum(1)), masked_positions=torch.from_numpy(o["masked_positions"]))
    assert_close(mlm.numpy(), o["mlm_logits"], "MLM logits")
    assert_close(nsp.numpy(), o["nsp_logits"], "NSP logits")
    assert_tokenizer_matches_gluonnlp(model.tokenizer, o["input_ids"])  # Google's vocab order: ids as GluonNLP's


def test_converted_gluonnlp_checkpoint_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    out = convert(GLUON_PRE / "model.params", tmp_path / "ckpt")
    hf, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    o = outputs(GLUON_PRE)
    with torch.no_grad():
        r = hf.eval()(input_ids=torch.from_numpy(o["input_ids"]), token_type_ids=torch.from_numpy(o["segment_ids"]),
                      attention_mask=torch.from_numpy(real_tokens(o).astype(np.int64)))
    picked = np.take_along_axis(r.prediction_logits.numpy(), o["masked_positions"][:, :, None], axis=1)
    assert_close(picked, o["mlm_logits"], "transformers MLM logits")
    assert_close(r.seq_relationship_logits.numpy(), o["nsp_logits"], "transformers NSP logits")


# ---- the readers ----------------------------------------------------------------------------
def write_params(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """MXNet's NDArray list format (V2 arrays on cpu(0)), as mx.nd.save writes it."""
    out = struct.pack("<QQQ", 0x112, 0, len(arrays))
    for a in arrays.values():
        a = np.ascontiguousarray(a, dtype=np.float32)
        out += struct.pack("<Iii", 0xF993FAC9, 0, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
        out += struct.pack("<iii", 1, 0, 0) + a.tobytes()
    out += struct.pack("<Q", len(arrays))
    for name in arrays:
        out += struct.pack("<Q", len(name.encode())) + name.encode()
    path.write_bytes(out)


def test_params_reader_reads_every_byte_mxnet_wrote(tmp_path):
    arrays = read_params(GLUON_PRE / "model.params")
    assert len(arrays) == 47 and arrays["encoder.position_weight"].shape == (512, 64)
    write_params(tmp_path / "again.params", arrays)
    assert (tmp_path / "again.params").read_bytes() == (GLUON_PRE / "model.params").read_bytes()


def test_tf_reader_and_name_map():
    tensors = read_bundle(TF / "bert_model.ckpt")
    assert tensors["global_step"].dtype == np.int64 and tensors["bert/embeddings/word_embeddings"].shape == (141, 64)
    # Every modeling.py / run_pretraining.py / run_classifier.py name has its own Hugging Face name.
    names = tf_names(2)
    hf = [tf_to_hf(n) for n in names]
    assert None not in hf and len(set(hf)) == len(names)
    assert {n for n in tensors if not n.endswith(("adam_m", "adam_v", "global_step"))} <= set(names)


# ---- loading sources directly, the CLI ----------------------------------------------------------
def test_load_converts_each_source_form_once(tmp_path):
    cache = tmp_path / "bertkit-cache" / "converted"
    a = bertkit.load(GLUON_PRE / "model.params")
    directory = Path(a.load_report["directory"])
    assert directory.parent == cache
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    assert Path(bertkit.load(str(GLUON_PRE / "model.params")).load_report["directory"]) == directory
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp  # the second load reused it
    tf_dirs = {bertkit.load(s).load_report["directory"] for s in (TF, TF / "bert_model.ckpt", TF / "bert_model.ckpt.index")}
    assert len(tf_dirs) == 1
    # A changed source (here: a vocabulary beside the file, newer) is converted anew.
    folder = tmp_path / "gluon"
    shutil.copytree(GLUON_PRE, folder)
    first = bertkit.load(folder / "model.params").load_report["directory"]
    os.utime(folder / "vocab.json", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert bertkit.load(folder / "model.params").load_report["directory"] != first
    assert json.loads((directory / "bertkit.json").read_text())["converted_from"]["format"] == "gluonnlp"


def test_zoo_file_name_gives_the_named_shape(tmp_path):
    # GluonNLP's model-zoo file names carry the shape and the dataset (casing): no hparams needed.
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(GLUON_PRE / "model.params", folder / "bert_2_64_4_book_corpus_wiki_en_uncased-0123abcd.params")
    shutil.copy(GLUON_PRE / "vocab.json", folder / "book_corpus_wiki_en_uncased-89abcdef.vocab")
    model = bertkit.load(folder / "bert_2_64_4_book_corpus_wiki_en_uncased-0123abcd.params")
    o = outputs(GLUON_PRE)
    assert_close(run_encoder(model, o)[1], o["pooled_output"], "pooled output")
    assert json.loads((Path(model.load_report["directory"]) / "bertkit.json").read_text())["converted_from"]["shape"] == "bert_2_64_4"


def test_zoo_name_takes_gluonnlps_own_download_and_checks_its_shape(tmp_path):
    # A zoo name without a Hub copy is read from $MXNET_HOME/models, under GluonNLP's file names, with
    # the name's shape: this tiny file is not a bert_12_768_12, and the error names the tensor.
    models = tmp_path / "mxnet-home" / "models"
    models.mkdir(parents=True)
    params = models / "bert_12_768_12_openwebtext_book_corpus_wiki_en_uncased-a56e2401.params"
    shutil.copy(GLUON_PRE / "model.params", params)
    shutil.copy(GLUON_PRE / "vocab.json", models / "openwebtext_book_corpus_wiki_en_uncased-a6607397.vocab")
    from bertkit.zoo.names import lookup
    from bertkit.zoo.resolve import entry_status

    assert entry_status(lookup("bert_12_768_12/openwebtext_book_corpus_wiki_en_uncased")) == "gluonnlp"
    with pytest.raises(bertkit.BertkitError) as e:
        bertkit.load("bert_12_768_12", dataset="openwebtext_book_corpus_wiki_en_uncased")
    assert str(e.value) == (f"{params}: tensor encoder.position_weight has shape (512, 64), bert_12_768_12 needs (512, 768)")


def test_cli_convert_and_use(tmp_path):
    out = tmp_path / "converted"
    r = run_cli("convert", GLUON_CLF / "model.params", "--out", out, "--labels", "a,b,c")
    assert r.returncode == 0, r.stderr
    assert "classification head" in r.stdout and "hparams.json" in r.stdout and "141 tokens, uncased" in r.stdout
    r = run_cli("predict", "--model", out, "it 's a charming and often affecting journey .")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\t")[0] in ("a", "b", "c")  # "LABEL<TAB>probability"
    assert_cli_error(run_cli("convert", TF, "--out", out), str(out), "--overwrite")


# ---- bad input: one line naming the file and the tensor ---------------------------------------------
def cut(src: Path, dst: Path, keep: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_truncated_params(tmp_path):
    bad = cut(GLUON_PRE / "model.params", tmp_path / "model.params", 0.5)
    with pytest.raises(bertkit.BertkitError, match=r"model\.params: truncated: array \d+ of 47") as e:
        read_params(bad)
    assert "\n" not in str(e.value)


def test_truncated_tf_index_and_data(tmp_path):
    for name in ("bert_config.json", "vocab.txt", "bert_model.ckpt.data-00000-of-00001"):
        shutil.copy(TF / name, tmp_path / name)
    cut(TF / "bert_model.ckpt.index", tmp_path / "bert_model.ckpt.index", 0.9)
    with pytest.raises(bertkit.BertkitError, match="bert_model.ckpt.index: not a TensorFlow checkpoint index, or a truncated one"):
        bertkit.load(tmp_path)
    shutil.copy(TF / "bert_model.ckpt.index", tmp_path / "bert_model.ckpt.index")
    cut(TF / "bert_model.ckpt.data-00000-of-00001", tmp_path / "bert_model.ckpt.data-00000-of-00001", 0.5)
    with pytest.raises(bertkit.BertkitError, match=r"data-00000-of-00001: truncated: tensor (bert|cls)/\S+ needs bytes"):
        bertkit.load(tmp_path)


def test_files_of_another_format(tmp_path):
    (tmp_path / "model.params").write_text('{"not": "mxnet"}')
    with pytest.raises(bertkit.BertkitError, match=r"model\.params: not an MXNet \.params file"):
        bertkit.load(tmp_path / "model.params")
    shutil.copy(TF / "bert_config.json", tmp_path / "bert_model.ckpt.index")  # a JSON file under a TF name
    with pytest.raises(bertkit.BertkitError, match="bert_model.ckpt.index: not a TensorFlow checkpoint index"):
        convert(tmp_path / "bert_model.ckpt.index", tmp_path / "out")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(bertkit.BertkitError, match="weights.bin: not a GluonNLP .params file .* nor a TensorFlow checkpoint"):
        convert(tmp_path / "weights.bin", tmp_path / "out")


def test_vocabulary_of_another_size(tmp_path):
    vocab = json.loads((GLUON_PRE / "vocab.json").read_text())
    vocab["idx_to_token"] = vocab["idx_to_token"][:-1]
    (tmp_path / "small.vocab").write_text(json.dumps(vocab))
    with pytest.raises(bertkit.BertkitError) as e:
        convert(GLUON_PRE / "model.params", tmp_path / "out", Options(vocab=tmp_path / "small.vocab"))
    assert str(e.value) == (f"{tmp_path / 'small.vocab'}: has 140 tokens but {GLUON_PRE / 'model.params'} tensor "
                            "word_embed.0.weight has 141 rows (a vocabulary of another model?)")
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in vocab["idx_to_token"]))
    with pytest.raises(bertkit.BertkitError, match="vocab.txt: has 140 tokens but .*bert/embeddings/word_embeddings has 141 rows"):
        convert(TF, tmp_path / "out", Options(vocab=tmp_path / "vocab.txt"))


def test_shape_that_does_not_match_the_named_model(tmp_path):
    with pytest.raises(bertkit.BertkitError) as e:
        convert(GLUON_PRE / "model.params", tmp_path / "out", Options(shape="bert_2_128_2"))
    assert str(e.value).startswith(f"{GLUON_PRE / 'model.params'}: tensor ") and "bert_2_128_2 needs" in str(e.value)
    with pytest.raises(bertkit.BertkitError, match=r"ckpt.index: tensor bert/embeddings/LayerNorm/beta has shape \(64,\), bert_4_256_4 needs \(256,\)$"):
        convert(TF, tmp_path / "out", Options(shape="bert_4_256_4"))
    r = run_cli("convert", GLUON_PRE / "model.params", "--out", tmp_path / "cli", "--shape", "bert_12_768_12")
    assert_cli_error(r, "model.params: tensor encoder.position_weight has shape (512, 64), bert_12_768_12 needs (512, 768)")


def test_unknown_and_missing_tensors_are_listed(tmp_path):
    arrays = read_params(GLUON_PRE / "model.params")
    for name in ("vocab.json", "hparams.json"):
        shutil.copy(GLUON_PRE / name, tmp_path / name)
    write_params(tmp_path / "extra.params", {**arrays, "encoder.extra_gate.weight": np.zeros(3), "adapter.bias": np.zeros(2)})
    with pytest.raises(bertkit.BertkitError) as e:
        convert(tmp_path / "extra.params", tmp_path / "out")
    assert str(e.value).endswith("2 tensor(s) that are not part of a GluonNLP BERT: encoder.extra_gate.weight, adapter.bias")
    partial = {k: v for k, v in arrays.items() if k not in ("pooler.weight", "encoder.transformer_cells.1.ffn.ffn_2.bias")}
    write_params(tmp_path / "partial.params", partial)
    with pytest.raises(bertkit.BertkitError) as e:
        convert(tmp_path / "partial.params", tmp_path / "out")
    assert str(e.value) == (f"{tmp_path / 'partial.params'}: 2 tensor(s) missing for a pretraining model: "
                            "encoder.transformer_cells.1.ffn.ffn_2.bias, pooler.weight")
    # Without its pretraining heads the same file is an encoder checkpoint.
    encoder_only = {k: v for k, v in arrays.items() if not k.startswith(("decoder.", "classifier."))}
    write_params(tmp_path / "encoder.params", encoder_only)
    assert read_source(tmp_path / "encoder.params").head == "encoder"
