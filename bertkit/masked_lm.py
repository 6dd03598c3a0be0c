"""Fill in [MASK] tokens with a pretraining model's masked-LM head.

    model = bertkit.load("out/final")                        # a BertForPreTraining checkpoint
    fill_mask(model, ["the capital of france is [MASK] ."])   # [[("paris", 0.41), ...]]
"""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import BertkitError
from .model import BertForPreTraining


@torch.no_grad()
def fill_mask(model: BertForPreTraining, texts: Sequence[str], top_k: int = 5) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each [MASK] in it: the `top_k` (token, probability) predictions."""
    if not isinstance(model, BertForPreTraining):
        raise BertkitError("fill_mask needs a model with the masked-LM head (a pretraining checkpoint)")
    tok = model.tokenizer
    if tok is None or tok.mask_id is None:
        raise BertkitError("fill_mask needs a tokenizer whose vocabulary has [MASK]")
    batch = tok(list(texts))
    was_training = model.training
    model.eval()
    mlm_logits, _ = model(batch.input_ids, batch.segment_ids, batch.valid_lengths)
    model.train(was_training)
    probs = mlm_logits.softmax(-1)
    out = []
    for row in range(len(texts)):
        masked = (batch.input_ids[row] == tok.mask_id).nonzero().flatten().tolist()
        per_mask = []
        for pos in masked:
            p, ids = probs[row, pos].topk(top_k)
            per_mask.append(list(zip(tok.convert_ids_to_tokens(ids.tolist()), p.tolist())))
        out.append(per_mask)
    return out
