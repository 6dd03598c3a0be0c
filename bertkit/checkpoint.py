"""Checkpoint directories in the Hugging Face BERT layout: read and write them.

A checkpoint directory holds
    config.json            Hugging Face `BertConfig` keys (+ `architectures`, labels for task heads)
    model.safetensors      tensors under Hugging Face's names (`bert.encoder.layer.0.attention.self.query.weight`, ...)
    vocab.txt              the WordPiece vocabulary (+ tokenizer_config.json for casing)
    bertkit.json           what bertkit adds: the task, the labels, training metadata
so a directory written here loads in `transformers` and the reverse. Loading never runs code from
the checkpoint: weights come from safetensors, or from a `.bin` pickle with `weights_only=True`.

Names a user may pass instead of a directory (packaged models, Hub ids, zoo names, GluonNLP and
TensorFlow checkpoints) are turned into directories above this module, in `pretrained.py` and `zoo/`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import BertConfig
from .device import resolve_device
from .errors import BertkitError
from .model import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from .textio import read_json
from .tokenizer import BertTokenizer, has_vocab

# head name -> (model class, Hugging Face architecture name)
HEADS = {
    "encoder": (BertModel, "BertModel"),
    "pretraining": (BertForPreTraining, "BertForPreTraining"),
    "classification": (BertForSequenceClassification, "BertForSequenceClassification"),
    "regression": (BertForSequenceClassification, "BertForSequenceClassification"),
    "token_classification": (BertForTokenClassification, "BertForTokenClassification"),
    "question_answering": (BertForQuestionAnswering, "BertForQuestionAnswering"),
}
_HEAD_OF_ARCHITECTURE = {
    "BertForPreTraining": "pretraining",
    "BertForSequenceClassification": "classification",
    "BertForTokenClassification": "token_classification",
    "BertForQuestionAnswering": "question_answering",
}

# Internal parameter names -> Hugging Face names. The fused `qkv` is handled separately.
_RENAMES = [
    (r"^embeddings\.norm\.", "embeddings.LayerNorm."),
    (r"^layers\.(\d+)\.attn_out\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.attn_norm\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^layers\.(\d+)\.ffn_in\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.ffn_out\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"^pooler\.", "pooler.dense."),
    (r"^mlm_transform\.", "cls.predictions.transform.dense."),
    (r"^mlm_norm\.", "cls.predictions.transform.LayerNorm."),
    (r"^mlm_bias$", "cls.predictions.bias"),
    (r"^nsp\.", "cls.seq_relationship."),
]
_QKV = re.compile(r"^layers\.(\d+)\.qkv\.(weight|bias)$")
# Tensors some files carry that are buffers or tied copies, not parameters of their own.
_IGNORED = re.compile(r"(^|\.)embeddings\.position_ids$|^cls\.predictions\.decoder\.(weight|bias)$")
_ENCODER_KEY = re.compile(r"^(embeddings|encoder|pooler)\.")


def hf_name_map(model: torch.nn.Module) -> list[tuple[str, str, int | None]]:
    """(Hugging Face name, internal name, qkv part 0/1/2 or None) for every parameter of `model`."""
    out = []
    for name in model.state_dict():
        prefix, local = ("bert.", name[5:]) if name.startswith("bert.") else ("", name)
        if m := _QKV.match(local):
            layer, kind = m.groups()
            for part, which in enumerate(("query", "key", "value")):
                out.append((f"{prefix}encoder.layer.{layer}.attention.self.{which}.{kind}", name, part))
            continue
        hf = local
        for pattern, repl in _RENAMES:
            hf, n = re.subn(pattern, repl, hf)
            if n:
                break
        out.append((prefix + hf if _ENCODER_KEY.match(hf) else hf, name, None))
    return out


def to_hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out = {}
    for hf, name, part in hf_name_map(model):
        t = sd[name]
        if part is not None:
            t = t.chunk(3, dim=0)[part]
        out[hf] = t.detach().to(torch.float32).contiguous()
    return out


def load_hf_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint"):
    """Copy Hugging Face-named tensors into `model`. Returns (missing, unexpected) name lists.

    Shapes must match exactly (a wrong shape names the tensor). Missing encoder tensors are an
    error; a missing task or pretraining head is reported and left as initialised.
    """
    has_bert_prefix = hasattr(model, "bert")
    tensors = {k: v for k, v in tensors.items() if not _IGNORED.search(k)}
    # Encoder-only files (BertModel) have no `bert.` prefix; head models carry one. Accept both.
    if has_bert_prefix:
        tensors = {("bert." + k if _ENCODER_KEY.match(k) else k): v for k, v in tensors.items()}
    else:
        tensors = {(k[5:] if k.startswith("bert.") else k): v for k, v in tensors.items()}
    sd = model.state_dict()
    missing, used = [], set()
    with torch.no_grad():
        for hf, name, part in hf_name_map(model):
            target = sd[name] if part is None else sd[name].chunk(3, dim=0)[part]
            if hf not in tensors:
                missing.append(hf)
                continue
            t = tensors[hf]
            if tuple(t.shape) != tuple(target.shape):
                raise BertkitError(
                    f"{source}: tensor {hf} has shape {tuple(t.shape)}, the config needs {tuple(target.shape)}"
                )
            target.copy_(t.to(target.dtype))
            used.add(hf)
    unexpected = sorted(set(tensors) - used)
    missing_encoder = [m for m in missing if m.removeprefix("bert.").split(".")[0] in ("embeddings", "encoder")]
    if missing_encoder:
        raise BertkitError(
            f"{source}: {len(missing_encoder)} encoder tensor(s) missing, e.g. {missing_encoder[0]} "
            f"(is this a BERT checkpoint with {model.config.num_hidden_layers} layers?)"
        )
    return missing, unexpected


# ---- files ----------------------------------------------------------------------------------
def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    st, index, pickle = directory / "model.safetensors", directory / "model.safetensors.index.json", directory / "pytorch_model.bin"
    try:
        if st.is_file():
            return load_file(st)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            out = {}
            for shard in shards:
                st = directory / shard
                out.update(load_file(st))
            return out
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise BertkitError(f"{st}: cannot read weights, the file is truncated or corrupt ({e})") from None
    if pickle.is_file():
        try:
            return torch.load(pickle, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise BertkitError(f"{pickle}: cannot read weights safely ({type(e).__name__}: {e})") from None
    raise BertkitError(f"{directory}: no weights found (expected model.safetensors or pytorch_model.bin)")


def read_bertkit_info(directory: Path) -> dict:
    p = directory / "bertkit.json"
    return read_json(p) if p.is_file() else {}


def save(model: torch.nn.Module, directory: str | Path, tokenizer: BertTokenizer | None = None, info: dict | None = None) -> Path:
    """Write `model` (+ tokenizer, + bertkit metadata) as a checkpoint directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    head = head_of(model)
    info = dict(info or {})
    info.setdefault("head", head)
    cfg = model.config.to_dict()
    cfg["architectures"] = [HEADS[head][1]]
    labels = info.get("labels")
    if labels is not None:
        cfg["id2label"] = {str(i): str(l) for i, l in enumerate(labels)}
        cfg["label2id"] = {str(l): i for i, l in enumerate(labels)}
    if head == "regression":
        cfg["problem_type"] = "regression"
        cfg["id2label"], cfg["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp = directory / "model.safetensors.tmp"
    save_file(to_hf_state_dict(model), tmp, metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")  # never leave a half-written weights file
    tok = tokenizer if tokenizer is not None else getattr(_encoder(model), "tokenizer", None)
    if tok is not None:
        tok.save(directory)
    (directory / "bertkit.json").write_text(json.dumps(info, indent=2) + "\n")
    return directory


def head_of(model: torch.nn.Module) -> str:
    if isinstance(model, BertForSequenceClassification):
        return "regression" if model.num_labels == 1 else "classification"
    for head, (cls, _) in HEADS.items():
        if type(model) is cls:
            return head
    raise TypeError(f"not a bertkit model: {type(model).__name__}")


def _encoder(model: torch.nn.Module) -> BertModel:
    return model if isinstance(model, BertModel) else model.bert


def load_config(directory: Path) -> BertConfig:
    p = directory / "config.json"
    if not p.is_file():
        raise BertkitError(f"{directory}: not a checkpoint directory (config.json is missing)")
    return BertConfig.from_json_file(p)


def saved_head(cfg: BertConfig, info: dict) -> str:
    """The head a checkpoint holds: bertkit.json's word for it, else config.json's architecture."""
    head = info.get("head") or _HEAD_OF_ARCHITECTURE.get((cfg.extra.get("architectures") or ["BertModel"])[0], "encoder")
    if head == "classification" and cfg.extra.get("problem_type") == "regression":
        head = "regression"
    return head


def saved_labels(cfg: BertConfig, info: dict) -> list | None:
    """The label names a checkpoint holds: bertkit.json's, else config.json's id2label, else None."""
    labels = info.get("labels")
    if labels is None and isinstance(cfg.extra.get("id2label"), dict):
        id2label = cfg.extra["id2label"]
        labels = [id2label[str(i)] for i in range(len(id2label))]
    return labels


def read(directory: str | Path, head: str = "auto", num_labels: int | None = None,
         device: str | torch.device | None = None):
    """A checkpoint directory as a bertkit model with its tokenizer attached (`model.tokenizer`).

    head: "auto" (what the checkpoint holds), or one of HEADS to build that model from the encoder
    (a head the checkpoint lacks is freshly initialised). The model is returned in eval mode, on the
    CPU, or on `device` ("auto", "cpu", "cuda", "cuda:N": bertkit/device.py). `bertkit.load` is this
    over `bertkit.pretrained.resolve`, which turns model names into directories.
    """
    directory = Path(directory)
    cfg = load_config(directory)
    info = read_bertkit_info(directory)
    tokenizer = BertTokenizer.from_dir(directory) if has_vocab(directory) else None
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        vocab_file = "vocab.txt" if (directory / "vocab.txt").is_file() else "tokenizer.json"
        raise BertkitError(
            f"{directory / vocab_file}: has {tokenizer.vocab_size} tokens but config.json says vocab_size {cfg.vocab_size}"
        )
    if head == "auto":
        head = saved_head(cfg, info)
    if head not in HEADS:
        raise BertkitError(f"unknown head {head!r}; known heads: {', '.join(HEADS)}")
    labels = saved_labels(cfg, info)
    cls = HEADS[head][0]
    if cls in (BertForSequenceClassification, BertForTokenClassification):
        n = num_labels or (1 if head == "regression" else len(labels) if labels else 2)
        model = cls(cfg, num_labels=n)
    else:
        model = cls(cfg)
    missing, unexpected = load_hf_state_dict(model, read_weights(directory), source=str(directory))
    model.eval()
    model.labels = labels
    model.info = info  # bertkit.json as saved: task settings a head's predict/answer may need
    model.load_report = {"missing": missing, "unexpected": unexpected, "directory": str(directory)}
    _encoder(model).tokenizer = tokenizer
    model.tokenizer = tokenizer
    if device is not None:
        model.to(resolve_device(device))
    return model
