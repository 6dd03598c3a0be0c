"""BertConfig, keyed exactly like Hugging Face's `config.json`, and the named shapes.

A named shape `bert_L_H_A` means L layers, hidden size H, A attention heads, feed-forward 4H,
512 positions and 2 segment types (the shapes of the BERT paper and of GluonNLP's model zoo).
The vocabulary size is not part of a shape: it comes from the vocabulary in use.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BertkitError

PRESETS: dict[str, tuple[int, int, int]] = {
    "bert_12_768_12": (12, 768, 12),  # BERT-base
    "bert_24_1024_16": (24, 1024, 16),  # BERT-large
    "bert_6_384_12": (6, 384, 12),  # the MiniLM-L6-H384 shape
    "bert_4_512_8": (4, 512, 8),  # BERT-small (Turc et al. 2019)
    "bert_4_256_4": (4, 256, 4),  # BERT-mini
    "bert_2_128_2": (2, 128, 2),  # BERT-tiny
}

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclass
class BertConfig:
    """The architecture hyper-parameters, with Hugging Face `BertConfig` names and defaults (BERT-base)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Keys we do not use but must carry through so a round trip keeps the file whole.
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise BertkitError(
                f"config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise BertkitError(
                f"config: hidden_act {self.hidden_act!r} is not supported (known: {', '.join(ACTIVATIONS)})"
            )
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise BertkitError(f"config: {name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_preset(cls, name: str, vocab_size: int = 30522, **overrides) -> "BertConfig":
        if name not in PRESETS:
            raise BertkitError(f"unknown config {name!r}; known configs: {', '.join(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        return cls(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            **overrides,
        )

    @classmethod
    def from_dict(cls, d: dict) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        if d.get("model_type", "bert") != "bert":
            raise BertkitError(f"config: model_type is {d.get('model_type')!r}, bertkit loads 'bert' models only")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise BertkitError(
                f"config: position_embedding_type {d['position_embedding_type']!r} is not supported (only 'absolute')"
            )
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as e:  # a value of the wrong type
            raise BertkitError(f"config: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BertkitError(f"{path}: cannot read config: {e}") from None
        if not isinstance(d, dict):
            raise BertkitError(f"{path}: config must be a JSON object")
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        """The Hugging Face `config.json` dictionary (`model_type` and our fields; extras kept)."""
        d = dict(self.extra)
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        d["model_type"] = "bert"
        d.setdefault("position_embedding_type", "absolute")
        return d

    def shape_name(self) -> str:
        """`bert_L_H_A`, the name of this shape (whether or not it is a preset)."""
        return f"bert_{self.num_hidden_layers}_{self.hidden_size}_{self.num_attention_heads}"

