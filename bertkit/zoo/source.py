"""What the format readers hand to convert.py: a source's tensors under Hugging Face names, and the helpers they share.

A `Converted` holds Hugging Face tensor names without the `bert.` prefix, the config, the vocabulary
and casing, and for each tensor the name it had in the source, so that every error speaks of the
source's own names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import BertConfig
from ..errors import BertkitError
from ..textio import read_json
from ..tokenizer import load_vocab
from .names import parse_shape_name


@dataclass
class Options:
    """What a user may tell the converter that the files do not say."""

    vocab: Path | None = None  # GluonNLP vocabulary JSON (or a vocab.txt); TF: vocab.txt
    shape: str | None = None  # a named shape bert_L_H_A (FFN 4H, 512 positions)
    hparams: Path | None = None  # GluonNLP: a JSON of BERTEncoder/BERTModel hyper-parameters
    config: Path | None = None  # TF: bert_config.json
    cased: bool | None = None  # None: from the file names, else from the vocabulary
    labels: list[str] | None = None  # names of a classifier head's classes


@dataclass
class Converted:
    source: Path  # the weights file (for messages)
    config: BertConfig
    config_from: str  # what fixed the shape, for messages: "bert_12_768_12", "hparams.json", ...
    tensors: dict[str, np.ndarray]  # Hugging Face names, encoder ones without "bert."
    origin: dict[str, str]  # Hugging Face name -> the source's name for it
    vocab: list[str]
    vocab_file: Path
    lowercase: bool
    head: str  # encoder | pretraining | classification
    expected_name: Callable[[str], str]  # Hugging Face name -> the source name a missing tensor would have had
    info: dict = field(default_factory=dict)
    labels: list[str] | None = None


def read_vocab_file(path: Path) -> list[str]:
    """Tokens in id order from a GluonNLP vocabulary JSON (`idx_to_token`) or a BERT vocab.txt."""
    if not path.is_file():
        raise BertkitError(f"{path}: vocabulary file not found")
    with open(path, "rb") as f:
        first = f.read(1)
    if first == b"{":
        data = read_json(path)
        tokens = data.get("idx_to_token") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise BertkitError(f"{path}: not a GluonNLP vocabulary (no idx_to_token list)")
        return tokens
    vocab = load_vocab(path)
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]


def lowercase_for(vocab: list[str], names: list[str], cased: bool | None) -> bool:
    """Whether to lower-case input: as told; else as a file or folder name says ("uncased" / "cased",
    Google's "chinese_L-..." folders are cased); else uncased exactly when no token holds an upper-case
    letter (an uncased vocabulary was built from lower-cased text)."""
    if cased is not None:
        return not cased
    for name in names:
        lowered = name.lower()
        if "uncased" in lowered:
            return True
        if "cased" in lowered or lowered.startswith("chinese_"):
            return False
    return not any(t != t.lower() for t in vocab if not (t.startswith("[") and t.endswith("]")))


def check_vocab_size(vocab: list[str], vocab_file: Path, rows: int, source: Path, tensor: str) -> None:
    if len(vocab) != rows:
        raise BertkitError(
            f"{vocab_file}: has {len(vocab)} tokens but {source} tensor {tensor} has {rows} rows (a vocabulary of another model?)"
        )


def json_file(path: Path) -> dict:
    if not path.is_file():
        raise BertkitError(f"{path}: not found")
    data = read_json(path)
    if not isinstance(data, dict):
        raise BertkitError(f"{path}: expected a JSON object")
    return data


def shape_config(name: str, vocab_size: int, pad: int, act: str) -> BertConfig:
    """The config of a named shape bert_L_H_A: FFN 4H, 512 positions, 2 segment types."""
    layers, hidden, heads = parse_shape_name(name)
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, hidden_act=act, pad_token_id=pad)


# ---- what the converters decide alike: the head, its labels, the padding id, the names for messages ----


def choose_head(tensors: dict[str, np.ndarray], conflict: str) -> str:
    """"classification" (a task head: `classifier.*`), "pretraining" (the masked-LM and next-sentence
    heads: `cls.*`) or "encoder". A source holding both kinds of head is refused, `conflict` saying so."""
    has_classifier = "classifier.weight" in tensors or "classifier.bias" in tensors
    has_pretraining = any(k.startswith("cls.") for k in tensors)
    if has_classifier and has_pretraining:
        raise BertkitError(conflict)
    return "classification" if has_classifier else "pretraining" if has_pretraining else "encoder"


def class_labels(tensors: dict[str, np.ndarray], given: list[str] | None, weight: str) -> list[str]:
    """A classifier's class names: `given` (one per row of `classifier.weight`), else "0", "1", ...;
    `weight` names that tensor in the source for the error ("PATH: tensor NAME")."""
    rows = tensors["classifier.weight"].shape[0]
    labels = list(given) if given else [str(i) for i in range(rows)]
    if len(labels) != rows:
        raise BertkitError(f"{weight} has {rows} classes but {len(labels)} labels were given")
    return labels


def pad_id(vocab: list[str]) -> int:
    return vocab.index("[PAD]") if "[PAD]" in vocab else 0


def expected_names(to_hf: Callable[[str], str | None], names: list[str], prefix: str = "",
                   extra: dict[str, str] | None = None) -> Callable[[str], str]:
    """`Converted.expected_name`: a Hugging Face name -> the source name it comes from (`prefix` + one
    of the source's `names`, or as `extra` says); a name the source has no word for stays as it is."""
    inverse = {to_hf(n): prefix + n for n in names}
    inverse.update(extra or {})
    return lambda hf: inverse.get(hf, hf)
