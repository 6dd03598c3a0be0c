"""Entities in plain text, from a fine-tuned token-classification checkpoint.

    model = bertkit.load("out/ner")
    bertkit.tag(model, ["EU rejects German call to boycott British lamb."])
    # [{"entities": [{"entity": "EU", "type": "ORG", "start": 0, "end": 2, "score": 0.99}, ...]}]

The text is cut into words as CoNLL files are (words.split_words), each word tagged on its first
piece (long texts in windows, as in training), and the tags read as entities by conlleval's rules.
`start`/`end` are character offsets into the text as given, so `text[start:end] == entity`;
`score` is the mean, over the entity's words, of the probability of the tag each word got. A
checkpoint trained on plain word tags (POS, say) gives `{"words": [{"word", "tag", "start", "end",
"score"}]}` instead.

The windows run on the model's own device (`model.to("cuda")` first for a GPU); `precision="bf16"`
(or "fp16" on CUDA) runs the forward passes under autocast, the probabilities are float32.
"""

from __future__ import annotations

from typing import Sequence

from ..device import autocast, model_device, resolve_precision
from ..errors import BertkitError
from ..tagging.features import TaggedWindows
from ..tagging.inference import word_probabilities
from ..tagging.labels import entity_spans, is_entity_tag
from ..tagging.words import split_words


def scheme_of(model) -> str:
    """"bio" when the model's labels are entity tags (bertkit.json says so, or the labels look it), else "tags"."""
    info = getattr(model, "info", None) or {}
    if info.get("scheme"):
        return info["scheme"]
    labels = getattr(model, "labels", None) or []
    return "bio" if labels and all(is_entity_tag(label) for label in labels) else "tags"


def tag(model, texts: str | Sequence[str], max_len: int | None = None, batch_size: int = 64,
            precision: str = "fp32") -> list[dict]:
    """One dict per text: {"entities": [...]} (or {"words": [...]} for plain tags), in input order.
    `precision`: "fp32", "bf16" or "fp16" (autocast on the model's device)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise BertkitError("this model has no tokenizer (load it with bertkit.load from a checkpoint with vocab.txt)")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise BertkitError(f"input {i + 1}: expected a string, got {type(t).__name__}")
    labels = getattr(model, "labels", None) or [f"LABEL_{i}" for i in range(model.num_labels)]
    if len(labels) != model.num_labels:
        raise BertkitError(f"the checkpoint has {len(labels)} labels but its head has {model.num_labels} outputs")
    device = model_device(model)
    precision = resolve_precision(precision, device)
    max_len = max_len or int((getattr(model, "info", None) or {}).get("max_len") or 512)
    max_len = min(max_len, model.config.max_position_embeddings)
    if max_len < 3:
        raise BertkitError(f"--max-len must be at least 3, got {max_len}")
    spans = [split_words(t) for t in texts]
    words = [[t[a:b] for a, b in sp] for t, sp in zip(texts, spans)]
    data = TaggedWindows(tok, words, None, max_len)
    with autocast(device, precision):  # word_probabilities moves each batch to the model's device
        probs = word_probabilities(model, data, batch_size)
    entities = scheme_of(model) == "bio"
    out = []
    for text, sp, p in zip(texts, spans, probs):
        best = p.argmax(-1)
        tags = [labels[j] for j in best]
        score = p.max(-1)
        if entities:
            out.append({"entities": [
                {"entity": text[sp[a][0] : sp[b - 1][1]], "type": kind, "start": sp[a][0], "end": sp[b - 1][1],
                 "score": round(float(score[a:b].mean()), 6)}
                for kind, a, b in entity_spans(tags)]})
        else:
            out.append({"words": [
                {"word": text[s:e], "tag": tag, "start": s, "end": e, "score": round(float(sc), 6)}
                for (s, e), tag, sc in zip(sp, tags, score)]})
    return out
