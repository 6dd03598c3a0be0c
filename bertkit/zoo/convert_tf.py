"""Google's TensorFlow BERT checkpoints -> Hugging Face tensor names (no TensorFlow needed).

Google's modeling.py names its variables `bert/embeddings/{word,token_type,position}_embeddings`,
`bert/embeddings/LayerNorm/{gamma,beta}`, per layer `bert/encoder/layer_N/attention/self/{query,key,value}`,
`.../attention/output/dense`, `.../attention/output/LayerNorm`, `.../intermediate/dense`,
`.../output/dense`, `.../output/LayerNorm`, and `bert/pooler/dense`; run_pretraining.py adds
`cls/predictions/transform/{dense,LayerNorm}`, `cls/predictions/output_bias` (the decoder is the
word embedding, transposed) and `cls/seq_relationship/output_{weights,bias}`; run_classifier.py a
top-level `output_weights` / `output_bias` classifier. Dense kernels are (in, out): transposed here.
The optimizer's state (`global_step`, `*/adam_m`, `*/adam_v`, mixed-precision loss-scale counters)
is left out.

modeling.py's `gelu` is the tanh approximation, so a `bert_config.json` saying "gelu" becomes
"gelu_new" (transformers' and bertkit's name for it): the converted model then gives exactly the
TensorFlow model's outputs. (transformers' own converter keeps "gelu", the erf form, which differs
by up to ~1e-3 in the activations.)

The files are Google's release layout: `bert_model.ckpt.index` + `.data-00000-of-00001`, with
`bert_config.json` and `vocab.txt` beside them (or `--config`, `--vocab`, `--shape`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import BertConfig
from ..errors import BertkitError
from .source import (Converted, Options, check_vocab_size, choose_head, class_labels, expected_names, json_file,
                     lowercase_for, pad_id, read_vocab_file, shape_config)
from .tf_bundle import checkpoint_prefix, read_bundle

_LAYER = r"bert/encoder/layer_(\d+)/"
_RULES = [
    (r"bert/embeddings/(word|token_type|position)_embeddings", r"embeddings.\1_embeddings.weight"),
    (r"bert/embeddings/LayerNorm/(gamma|beta)", r"embeddings.LayerNorm.\1"),
    (_LAYER + r"attention/self/(query|key|value)/(kernel|bias)", r"encoder.layer.\1.attention.self.\2.\3"),
    (_LAYER + r"attention/output/dense/(kernel|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (_LAYER + r"attention/output/LayerNorm/(gamma|beta)", r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (_LAYER + r"intermediate/dense/(kernel|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (_LAYER + r"output/dense/(kernel|bias)", r"encoder.layer.\1.output.dense.\2"),
    (_LAYER + r"output/LayerNorm/(gamma|beta)", r"encoder.layer.\1.output.LayerNorm.\2"),
    (r"bert/pooler/dense/(kernel|bias)", r"pooler.dense.\1"),
    (r"cls/predictions/transform/dense/(kernel|bias)", r"cls.predictions.transform.dense.\1"),
    (r"cls/predictions/transform/LayerNorm/(gamma|beta)", r"cls.predictions.transform.LayerNorm.\1"),
    (r"cls/predictions/output_bias", "cls.predictions.bias"),
    (r"cls/seq_relationship/output_(weights|bias)", r"cls.seq_relationship.\1"),
    (r"output_(weights|bias)", r"classifier.\1"),
]
_RULES = [(re.compile(pattern), repl) for pattern, repl in _RULES]
# Training state, not model: the step counter, Adam's moments, mixed-precision loss scaling.
_OPTIMIZER_STATE = re.compile(r"global_step|.*/adam_[mv]|.*/Adam(_\d+)?|beta[12]_power|bad_steps|good_steps|loss_scale|current_loss_scale")


def tf_to_hf(name: str) -> str | None:
    for pattern, repl in _RULES:
        if pattern.fullmatch(name):
            hf = pattern.sub(repl, name)
            return (hf.replace(".gamma", ".weight").replace(".beta", ".bias").replace(".kernel", ".weight")
                    .replace(".weights", ".weight"))
    return None


def read_tensorflow(source: Path, options: Options) -> Converted:
    prefix = checkpoint_prefix(source)
    if prefix is None:
        raise BertkitError(f"{source}: no TensorFlow checkpoint (PREFIX.index) found")
    index_file = Path(str(prefix) + ".index")
    raw = read_bundle(prefix)
    tensors, origin, unknown = {}, {}, []
    for name, array in raw.items():
        if _OPTIMIZER_STATE.fullmatch(name):
            continue
        hf = tf_to_hf(name)
        if hf is None:
            unknown.append(name)
            continue
        # Dense kernels are stored (in, out); PyTorch's Linear holds (out, in).
        tensors[hf], origin[hf] = (array.T if name.endswith("/kernel") else array), name
    if unknown:
        raise BertkitError(f"{index_file}: {len(unknown)} variable(s) that are not part of Google's BERT: {', '.join(unknown)}")
    word = "embeddings.word_embeddings.weight"
    if word not in tensors:
        raise BertkitError(f"{index_file}: no bert/embeddings/word_embeddings variable: not a Google BERT checkpoint")
    head = choose_head(tensors, f"{index_file}: holds both pretraining heads (cls/...) and a classifier (output_weights): "
                                "keep one")

    folder = prefix.parent
    vocab_file = Path(options.vocab) if options.vocab else folder / "vocab.txt"
    if not vocab_file.is_file():
        raise BertkitError(f"{index_file}: no vocab.txt beside it; pass --vocab FILE")
    vocab = read_vocab_file(vocab_file)
    check_vocab_size(vocab, vocab_file, tensors[word].shape[0], index_file, "bert/embeddings/word_embeddings")
    pad = pad_id(vocab)
    inputs = [prefix.with_name(prefix.name + ".data-00000-of-00001")]
    if options.shape:
        config, config_from = shape_config(options.shape, len(vocab), pad, "gelu_new"), options.shape
    else:
        config_file = Path(options.config) if options.config else folder / "bert_config.json"
        if not config_file.is_file():
            raise BertkitError(f"{index_file}: no bert_config.json beside it; pass --config FILE or --shape bert_L_H_A")
        config, config_from = google_config(config_file, len(vocab), pad), config_file.name
        inputs.append(config_file)
    labels = None
    if head == "classification":
        labels = class_labels(tensors, options.labels, f"{index_file}: variable output_weights")
    lowercase = lowercase_for(vocab, [folder.name, prefix.name], options.cased)
    expected_name = expected_names(tf_to_hf, source_names(config.num_hidden_layers))
    return Converted(
        source=index_file, config=config, config_from=config_from, tensors=tensors, origin=origin, vocab=vocab,
        vocab_file=vocab_file, lowercase=lowercase, head=head, expected_name=expected_name, labels=labels,
        info={"converted_from": {"format": "tensorflow", "checkpoint": str(prefix), "vocab": str(vocab_file),
                                 "shape": config_from, "hidden_act": "gelu_new: modeling.py's tanh GELU"},
              "inputs": [str(p) for p in inputs if p.exists()]},
    )


def google_config(path: Path, vocab_size: int, pad: int) -> BertConfig:
    """bert_config.json (the same keys as Hugging Face's config.json), with modeling.py's GELU named for what it is."""
    d = json_file(path)
    if d.get("vocab_size") not in (None, vocab_size):
        raise BertkitError(f"{path}: vocab_size {d['vocab_size']} but the vocabulary has {vocab_size} tokens")
    d = {**d, "vocab_size": vocab_size, "pad_token_id": pad}
    if d.get("hidden_act", "gelu") == "gelu":
        d["hidden_act"] = "gelu_new"
    try:
        return BertConfig.from_dict(d)
    except BertkitError as e:
        raise BertkitError(f"{path}: {e}") from None


def source_names(layers: int) -> list[str]:
    """Every variable name of modeling.py, run_pretraining.py and run_classifier.py for `layers` layers."""
    names = [f"bert/embeddings/{t}_embeddings" for t in ("word", "token_type", "position")]
    names += ["bert/embeddings/LayerNorm/gamma", "bert/embeddings/LayerNorm/beta", "cls/predictions/output_bias",
              "cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias", "output_weights", "output_bias"]
    for kind in ("kernel", "bias"):
        names += [f"bert/pooler/dense/{kind}", f"cls/predictions/transform/dense/{kind}"]
        for i in range(layers):
            layer = f"bert/encoder/layer_{i}/"
            names += [f"{layer}attention/self/{w}/{kind}" for w in ("query", "key", "value")]
            names += [f"{layer}attention/output/dense/{kind}", f"{layer}intermediate/dense/{kind}", f"{layer}output/dense/{kind}"]
    for kind in ("gamma", "beta"):
        names.append(f"cls/predictions/transform/LayerNorm/{kind}")
        for i in range(layers):
            names += [f"bert/encoder/layer_{i}/attention/output/LayerNorm/{kind}", f"bert/encoder/layer_{i}/output/LayerNorm/{kind}"]
    return names
