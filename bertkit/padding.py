"""Unpad / repad: run the per-token work of a BERT layer on real tokens only.

In a padded batch of variable-length sentences a large share of the (B, T) grid is padding, and the
dense layers (Q/K/V, attention output, feed-forward: nearly all of BERT's FLOPs) would spend that
share computing vectors nobody reads. Instead the encoder keeps activations packed as (N, H), N the
number of real tokens, and only the attention scores, which need the (B, T) layout, are computed on
a repadded view. The idea is MosaicBERT's `bert_padding.py`; this is our own small version.
"""

from __future__ import annotations

import torch


def real_token_indices(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices (into B*T) of the True entries of a (B, T) mask, in row-major order."""
    return mask.reshape(-1).nonzero(as_tuple=False).squeeze(1)


def unpad(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) -> (N, ...): keep the rows at `indices` of the flattened batch."""
    return x.reshape(-1, *x.shape[2:]).index_select(0, indices)


def repad(x: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """(N, ...) -> (B, T, ...): scatter packed rows back, zeros at padding. Differentiable."""
    # In place into a fresh buffer: the out-of-place index_copy would copy the zeros once more.
    out = x.new_zeros(batch * seqlen, *x.shape[1:]).index_copy_(0, indices, x)
    return out.view(batch, seqlen, *x.shape[1:])


def packed_rows(flat_rows: torch.Tensor, indices: torch.Tensor | None, total: int) -> torch.Tensor:
    """Rows of the packed (N, ...) layout for flat positions into B*T (`total` = B*T).

    `indices` None means nothing was unpadded (N = B*T). Every position must be a real token."""
    if indices is None:
        return flat_rows
    row_of = torch.full((total,), -1, dtype=torch.long, device=indices.device)
    row_of[indices] = torch.arange(indices.numel(), device=indices.device)
    rows = row_of[flat_rows]
    if bool((rows < 0).any()):
        raise ValueError("a requested position is a padding token, not a real one")
    return rows
