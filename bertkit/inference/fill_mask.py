"""Fill in [MASK] tokens with a pretraining model's masked-LM head.

    model = bertkit.load("out/final")                        # a BertForPreTraining checkpoint
    fill_mask(model, ["the capital of france is [MASK] ."])   # [[("paris", 0.41), ...]]

The MLM head runs at the [MASK] positions only (its vocabulary-sized output is most of the work at
the other positions, for nothing). Probabilities are the softmax over the whole vocabulary, as in
transformers' `fill-mask` pipeline.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..device import autocast, evaluating, model_device, resolve_precision, to_device
from ..errors import BertkitError
from ..model import BertForPreTraining


def fill_mask(model: BertForPreTraining, texts: Sequence[str], top_k: int = 5, batch_size: int = 32,
              precision: str = "fp32") -> list[list[list[tuple[str, float]]]]:
    """For each text, for each [MASK] in it (left to right): the `top_k` (token, probability) predictions."""
    if not isinstance(model, BertForPreTraining):
        raise BertkitError("fill_mask needs a model with the masked-LM head (a pretraining checkpoint)")
    missing = [m for m in getattr(model, "load_report", {}).get("missing", []) if m.startswith("cls.predictions")]
    if missing:  # loaded with head="pretraining" from a checkpoint that lacks it: the head is random
        raise BertkitError(f"{model.load_report.get('directory', 'the checkpoint')}: has no masked-LM head "
                           f"({missing[0]} is missing); fill-mask needs a pretraining checkpoint")
    tok = model.tokenizer
    if tok is None or tok.mask_id is None:
        raise BertkitError("fill_mask needs a tokenizer whose vocabulary has [MASK]")
    if top_k < 1:
        raise BertkitError(f"top_k must be at least 1, got {top_k}")
    top_k = min(top_k, model.config.vocab_size)
    device = model_device(model)
    precision = resolve_precision(precision, device)
    with evaluating(model):
        out = []
        for start in range(0, len(texts), batch_size):
            batch = tok(list(texts[start : start + batch_size]))
            is_mask = batch.input_ids == tok.mask_id
            count = is_mask.sum(1)
            width = max(1, int(count.max()))
            # (B, P) positions of each row's masks, padded with position 0 and weight 0
            positions = torch.zeros(len(count), width, dtype=torch.long)
            weights = torch.zeros(len(count), width)
            for row in range(len(count)):
                where = is_mask[row].nonzero().flatten()
                positions[row, : len(where)] = where
                weights[row, : len(where)] = 1.0
            ids, segs, lens, positions, weights = to_device(
                (batch.input_ids, batch.segment_ids, batch.valid_lengths, positions, weights), device)
            with autocast(device, precision):
                logits, _ = model(ids, segs, lens, masked_positions=positions, masked_weights=weights)  # (masks, V)
            p, top = logits.float().softmax(-1).topk(top_k, dim=-1)
            p, top = p.cpu(), top.cpu()
            at = 0
            for n in count.tolist():
                out.append([list(zip(tok.convert_ids_to_tokens(top[at + j].tolist()), p[at + j].tolist())) for j in range(n)])
                at += n
    return out


def as_records(masks: list[list[tuple[str, float]]]) -> list[list[dict]]:
    """One text's `fill_mask` result as JSON records, [[{"token", "score"}, ...] per [MASK]] (what
    `bertkit fill-mask` prints and `serve`'s /fill-mask returns)."""
    return [[{"token": t, "score": round(p, 6)} for t, p in mask] for mask in masks]
