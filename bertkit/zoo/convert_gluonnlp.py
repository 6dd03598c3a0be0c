"""GluonNLP 0.10 BERT `.params` files -> Hugging Face tensor names (no MXNet needed).

Gluon saves parameters under structural names (gluonnlp/model/bert.py): `BERTModel` holds
`word_embed.0.weight`, `token_type_embed.0.weight`, `encoder.position_weight`, `encoder.layer_norm.*`,
per layer `encoder.transformer_cells.N.attention_cell.proj_{query,key,value}.*`, `.proj.*` (attention
output), `.layer_norm.*`, `.ffn.ffn_1.*`, `.ffn.ffn_2.*`, `.ffn.layer_norm.*`, then `pooler.*`, the
next-sentence `classifier.*` and the masked-LM `decoder.0.*` (transform), `decoder.2.*` (its LayerNorm),
`decoder.3.bias` (`decoder.3.weight` is the word embedding, tied). `BERTClassifier` puts all of that
under `bert.` and adds `classifier.N.*` (N is 1 after a dropout block, else 0). Dense weights are
(out, in) as in PyTorch; LayerNorm's gamma/beta are weight/bias. The arithmetic is BERT's (exact-erf
GELU, post-LN), so the converted model gives GluonNLP's outputs.

A `.params` file does not say how many attention heads the model has. It comes from, in order: a
named shape (`--shape bert_12_768_12`), a hyper-parameter JSON (`--hparams`, or `hparams.json` beside
the file: GluonNLP's `bert_hparams` keys), or GluonNLP's model-zoo file name
(`bert_12_768_12_book_corpus_wiki_en_uncased-75cc780f.params`). The vocabulary JSON is `--vocab`, else
found beside the file (the zoo's `DATASET-SHA1.vocab`, `vocab.json`, or the only `*.vocab`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..config import BertConfig
from ..errors import BertkitError
from .mxnet_params import read_params
from .source import (Converted, Options, check_vocab_size, choose_head, class_labels, expected_names, json_file,
                     lowercase_for, pad_id, read_vocab_file, shape_config)

_LAYER = r"encoder\.transformer_cells\.(\d+)\."
_RULES = [
    (r"word_embed\.0\.weight", "embeddings.word_embeddings.weight"),
    (r"token_type_embed\.0\.weight", "embeddings.token_type_embeddings.weight"),
    (r"encoder\.position_weight", "embeddings.position_embeddings.weight"),
    (r"encoder\.layer_norm\.(gamma|beta)", r"embeddings.LayerNorm.\1"),
    (_LAYER + r"attention_cell\.proj_(query|key|value)\.(weight|bias)", r"encoder.layer.\1.attention.self.\2.\3"),
    (_LAYER + r"proj\.(weight|bias)", r"encoder.layer.\1.attention.output.dense.\2"),
    (_LAYER + r"layer_norm\.(gamma|beta)", r"encoder.layer.\1.attention.output.LayerNorm.\2"),
    (_LAYER + r"ffn\.ffn_1\.(weight|bias)", r"encoder.layer.\1.intermediate.dense.\2"),
    (_LAYER + r"ffn\.ffn_2\.(weight|bias)", r"encoder.layer.\1.output.dense.\2"),
    (_LAYER + r"ffn\.layer_norm\.(gamma|beta)", r"encoder.layer.\1.output.LayerNorm.\2"),
    (r"pooler\.(weight|bias)", r"pooler.dense.\1"),
    (r"classifier\.(weight|bias)", r"cls.seq_relationship.\1"),
    (r"decoder\.0\.(weight|bias)", r"cls.predictions.transform.dense.\1"),
    (r"decoder\.2\.(gamma|beta)", r"cls.predictions.transform.LayerNorm.\1"),
    (r"decoder\.3\.bias", "cls.predictions.bias"),
]
_RULES = [(re.compile(pattern), repl) for pattern, repl in _RULES]
_TIED_DECODER = "decoder.3.weight"
_TASK_HEAD = re.compile(r"classifier\.(\d+)\.(weight|bias)")
_ZOO_FILE = re.compile(r"^(bert_\d+_\d+_\d+)_(.+)-[0-9a-f]{8}\.params$")
_SHAPE_PREFIX = re.compile(r"^(bert_\d+_\d+_\d+)(?=[_.-]|$)")
ACTIVATIONS = {"gelu": "gelu", "approx_gelu": "gelu_new", "relu": "relu"}


def body_to_hf(name: str) -> str | None:
    for pattern, repl in _RULES:
        if pattern.fullmatch(name):
            return pattern.sub(repl, name).replace(".gamma", ".weight").replace(".beta", ".bias")
    return None


def read_gluonnlp(path: Path, options: Options) -> Converted:
    raw = read_params(path)
    in_classifier = any(k.startswith("bert.") for k in raw)  # a BERTClassifier: the BERTModel is under "bert."
    tensors, origin, unknown, task_head = {}, {}, [], None
    for name, array in raw.items():
        body = name
        if in_classifier:
            if m := _TASK_HEAD.fullmatch(name):
                tensors[f"classifier.{m[2]}"], origin[f"classifier.{m[2]}"] = array, name
                task_head = m[1]
                continue
            if not name.startswith("bert."):
                unknown.append(name)
                continue
            body = name[len("bert."):]
        if body == _TIED_DECODER:
            continue  # the decoder's weight is the word embedding (checked below)
        hf = body_to_hf(body)
        if hf is None:
            unknown.append(name)
        else:
            tensors[hf], origin[hf] = array, name
    if unknown:
        raise BertkitError(f"{path}: {len(unknown)} tensor(s) that are not part of a GluonNLP BERT: {', '.join(unknown)}")
    prefix = "bert." if in_classifier else ""
    word = "embeddings.word_embeddings.weight"
    if word not in tensors:
        raise BertkitError(f"{path}: no word embedding ({prefix}word_embed.0.weight): not a GluonNLP BERT")
    tied = raw.get(prefix + _TIED_DECODER)
    if tied is not None and not np.array_equal(tied, tensors[word]):
        raise BertkitError(f"{path}: tensor {prefix}{_TIED_DECODER} differs from {prefix}word_embed.0.weight (they must be tied)")

    extra = sorted(origin[k] for k in tensors if k.startswith("cls."))
    head = choose_head(tensors, f"{path}: a classifier model that also holds pretraining heads ({', '.join(extra)}): "
                                "keep one")

    vocab_file = Path(options.vocab) if options.vocab else find_vocab(path)
    vocab = read_vocab_file(vocab_file)
    check_vocab_size(vocab, vocab_file, tensors[word].shape[0], path, prefix + "word_embed.0.weight")
    config, config_from, inputs = config_for(path, options, len(vocab), pad_id(vocab))
    labels = None
    if head == "classification":
        labels = class_labels(tensors, options.labels, f"{path}: tensor classifier.{task_head}.weight")
    zoo = _ZOO_FILE.match(path.name)
    lowercase = lowercase_for(vocab, [zoo[2]] if zoo else [], options.cased)
    task = f"classifier.{task_head or 0}"
    expected_name = expected_names(body_to_hf, source_names(config.num_hidden_layers), prefix,
                                   {"classifier.weight": f"{task}.weight", "classifier.bias": f"{task}.bias"})
    return Converted(
        source=path, config=config, config_from=config_from, tensors=tensors, origin=origin, vocab=vocab,
        vocab_file=vocab_file, lowercase=lowercase, head=head, expected_name=expected_name,
        labels=labels,
        info={"converted_from": {"format": "gluonnlp", "file": str(path), "vocab": str(vocab_file), "shape": config_from},
              "inputs": [str(p) for p in inputs]},
    )


def source_names(layers: int) -> list[str]:
    """Every tensor name of a GluonNLP BERTModel with `layers` layers (a BERTClassifier holds them under "bert.")."""
    names = ["word_embed.0.weight", "token_type_embed.0.weight", "encoder.position_weight", "encoder.layer_norm.gamma",
             "encoder.layer_norm.beta", "pooler.weight", "pooler.bias", "classifier.weight", "classifier.bias",
             "decoder.0.weight", "decoder.0.bias", "decoder.2.gamma", "decoder.2.beta", "decoder.3.bias"]
    for i in range(layers):
        cell = f"encoder.transformer_cells.{i}."
        for kind in ("weight", "bias"):
            names += [f"{cell}attention_cell.proj_{w}.{kind}" for w in ("query", "key", "value")]
            names += [f"{cell}proj.{kind}", f"{cell}ffn.ffn_1.{kind}", f"{cell}ffn.ffn_2.{kind}"]
        for kind in ("gamma", "beta"):
            names += [f"{cell}layer_norm.{kind}", f"{cell}ffn.layer_norm.{kind}"]
    return names


def find_vocab(path: Path) -> Path:
    """The vocabulary beside a `.params` file: the zoo's DATASET-SHA1.vocab, vocab.json, or the only *.vocab."""
    folder = path.parent
    zoo = _ZOO_FILE.match(path.name)
    candidates = sorted(folder.glob(f"{zoo[2]}-*.vocab")) if zoo else []
    if not candidates and (folder / "vocab.json").is_file():
        candidates = [folder / "vocab.json"]
    if not candidates:
        candidates = sorted(folder.glob("*.vocab"))
    if len(candidates) != 1:
        found = f"found {', '.join(p.name for p in candidates)}" if candidates else "found none"
        raise BertkitError(f"{path}: cannot tell which vocabulary JSON goes with it ({found}); pass --vocab FILE")
    if candidates[0].suffix == ".spiece":
        raise BertkitError(f"{candidates[0]}: a SentencePiece vocabulary; bertkit's tokenizer is WordPiece")
    return candidates[0]


def config_for(path: Path, options: Options, vocab_size: int, pad: int) -> tuple[BertConfig, str, list[Path]]:
    """(config, what it came from, the files it was read from)."""
    if options.shape:
        return shape_config(options.shape, vocab_size, pad, "gelu"), options.shape, []
    hparams = Path(options.hparams) if options.hparams else path.parent / "hparams.json"
    if options.hparams or hparams.is_file():
        return hparams_config(hparams, vocab_size, pad), hparams.name, [hparams]
    if m := _SHAPE_PREFIX.match(path.name):
        return shape_config(m[1], vocab_size, pad, "gelu"), m[1], []
    raise BertkitError(
        f"{path}: cannot tell the number of attention heads from a .params file; pass --shape bert_LAYERS_HIDDEN_HEADS "
        "(e.g. bert_12_768_12) or --hparams FILE.json"
    )


def hparams_config(path: Path, vocab_size: int, pad: int) -> BertConfig:
    hp = json_file(path)
    missing = [k for k in ("num_layers", "units", "hidden_size", "num_heads", "max_length") if k not in hp]
    if missing:
        raise BertkitError(f"{path}: missing hyper-parameter(s) {', '.join(missing)}")
    if hp.get("embed_size", hp["units"]) != hp["units"]:
        raise BertkitError(f"{path}: embed_size {hp['embed_size']} differs from units {hp['units']}; BERT needs them equal")
    act = hp.get("activation", "gelu")
    if act not in ACTIVATIONS:
        raise BertkitError(f"{path}: activation {act!r} is not supported (known: {', '.join(ACTIVATIONS)})")
    try:
        return BertConfig(
            vocab_size=vocab_size, hidden_size=int(hp["units"]), num_hidden_layers=int(hp["num_layers"]),
            num_attention_heads=int(hp["num_heads"]), intermediate_size=int(hp["hidden_size"]),
            hidden_act=ACTIVATIONS[act], hidden_dropout_prob=float(hp.get("dropout", 0.1)),
            attention_probs_dropout_prob=float(hp.get("dropout", 0.1)), max_position_embeddings=int(hp["max_length"]),
            type_vocab_size=int(hp.get("token_type_vocab_size", 2)), layer_norm_eps=float(hp.get("layer_norm_eps", 1e-12)),
            pad_token_id=pad,
        )
    except (TypeError, ValueError) as e:
        raise BertkitError(f"{path}: bad hyper-parameter value ({e})") from None
    except BertkitError as e:
        raise BertkitError(f"{path}: {e}") from None
