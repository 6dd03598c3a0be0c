"""BERT (Devlin et al., 2019) in one file: encoder, pooler, pretraining heads and task heads.

The architecture is the published one, numerically the same as Google's and Hugging Face's BERT:
token + segment + learned position embeddings, LayerNorm, dropout; post-LN transformer blocks
(x = LN(x + Attn(x)); x = LN(x + FFN(x))) with exact-erf GELU; a tanh pooler on [CLS].

Implementation choices that make it faster than a straight transcription, without changing what
it computes:
- Activations between layers are kept *unpadded*, (N, H) for the N real tokens of the batch
  (see `padding.py`); only attention sees the padded (B, T) layout.
- Q, K and V are one (H, 3H) matrix multiply. Checkpoints still store `query`/`key`/`value`
  separately in Hugging Face names; `checkpoint.py` splits and joins them.
- CPU inference runs the feed-forward GELU and both residual adds inside the GEMMs
  (`cpu/onednn.py`; equal up to float32 rounding).
- CPU training draws dropout masks from a cheaper generator and does attention's softmax, dropout
  and product with V in one autograd step (`cpu/dropout.py`; the same distribution).
These come through the few operations of `cpu/ops.py` (which kernel runs: `cpu/dispatch.py`);
`bertkit.cpu.optimize_for_cpu` adds the compiled encoder (`cpu/native/`: its own fp32, bf16 and
int8 GEMMs, padding skipped), which `forward` asks first.
The MLM head is evaluated only at the masked positions it is given, not at every token, and so is
the last layer's work after attention: pretraining reads the final hidden states only at the masked
positions and at [CLS], so the last block's attention output projection and feed-forward run on
those rows alone (its keys and values still come from every token). NVIDIA's and MosaicBERT's BERT
pretraining do the same.

Inputs: `input_ids` (B, T), optional `segment_ids` (B, T), and either `valid_lengths` (B,) (the
number of real tokens per row, GluonNLP style) or an `attention_mask` (B, T) (1 = real token).
Padding never changes the outputs at real tokens; outputs at padded positions are zero.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import BertConfig
from .cpu.ops import ACTIVATIONS, Dropout, attention, fit_threads, graph_capture, linear
from .padding import packed_rows, real_token_indices, repad, unpad


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(name)
    return ACTIVATIONS[name][0]


def token_mask(input_ids: torch.Tensor, valid_lengths=None, attention_mask=None) -> torch.Tensor:
    """A (B, T) bool mask of real tokens from whichever form the caller used."""
    if attention_mask is not None:
        return attention_mask.to(torch.bool)
    if valid_lengths is not None:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return positions[None, :] < valid_lengths.to(input_ids.device)[:, None]
    return torch.ones_like(input_ids, dtype=torch.bool)


def uses_jagged_attention(x: torch.Tensor) -> bool:
    """Padded batches on CUDA: attention as a nested jagged tensor, which reaches the flash and
    memory-efficient SDPA kernels (a boolean padding mask rules flash out). Not on the CPU, where
    PyTorch has no jagged SDPA kernel (and bertkit's own CPU paths are faster), nor while a graph is
    being recorded for export."""
    return x.is_cuda and not graph_capture()


def jagged_offsets(mask: torch.Tensor) -> torch.Tensor:
    """(B + 1,) start offsets of each row's real tokens in the packed layout (rows are contiguous
    there: `real_token_indices` is row-major)."""
    return F.pad(mask.sum(1).cumsum(0), (1, 0))


def jagged_qkv(qkv: torch.Tensor, offsets: torch.Tensor, heads: int, head_dim: int):
    """Packed (N, 3H) projections -> q, k, v nested jagged tensors of shape (B, heads, j, head_dim)."""
    q, k, v = qkv.view(-1, 3, heads, head_dim).unbind(1)
    return [torch.nested.nested_tensor_from_jagged(t, offsets).transpose(1, 2) for t in (q, k, v)]


def jagged_attention(qkv: torch.Tensor, offsets: torch.Tensor, heads: int, head_dim: int, dropout: float) -> torch.Tensor:
    """Self-attention of each row over its own real tokens; packed (N, 3H) in, packed (N, H) out."""
    q, k, v = jagged_qkv(qkv, offsets, heads, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    return out.transpose(1, 2).values().reshape(qkv.shape[0], heads * head_dim)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, segment_ids, positions):
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(segment_ids) + self.position_embeddings(positions)
        return self.dropout(self.norm(x))


class BertLayer(nn.Module):
    """One post-LN transformer block working on packed tokens (N, H)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.qkv = nn.Linear(h, 3 * h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(h, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.act, self.act_name = activation(cfg.hidden_act), cfg.hidden_act
        self.dropout = Dropout(cfg.hidden_dropout_prob)
        self.attn_dropout = cfg.attention_probs_dropout_prob

    def attention(self, x, indices, batch, seqlen, key_mask, out_rows=None, offsets=None, out_packed=None):
        """Self-attention over the packed tokens; returns the rows `out_rows` (flat indices into
        B*T; `out_packed`: the same rows in the packed layout) of its output, by default every real
        token's. With `offsets` (a padded batch on CUDA) the packed rows go to SDPA as a nested
        jagged tensor: no padding mask, so the flash / memory-efficient kernels can run."""
        qkv = linear(self.qkv, x)  # (N, 3H)
        if offsets is not None:
            out = jagged_attention(qkv, offsets, self.num_heads, self.head_dim, self.attn_dropout if self.training else 0.0)
            return out if out_packed is None else out.index_select(0, out_packed)
        if indices is not None:
            qkv = repad(qkv, indices, batch, seqlen)  # (B, T, 3H), zeros at padding
        q, k, v = qkv.view(batch, seqlen, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, key_mask, self.attn_dropout, self.training)  # (B, heads, T, head_dim)
        out = out.transpose(1, 2).reshape(batch * seqlen, -1)
        if out_rows is None:
            out_rows = indices
        return out if out_rows is None else out.index_select(0, out_rows)

    def forward(self, x, indices, batch, seqlen, key_mask, keep=None, offsets=None):
        """`keep`: optional (packed rows, flat rows) of the only tokens whose outputs are wanted; the
        block then returns just those rows, skipping the projection and feed-forward of the rest."""
        if keep is None:
            a = self.attention(x, indices, batch, seqlen, key_mask, offsets=offsets)
        else:
            keep_packed, keep_flat = keep
            a = self.attention(x, indices, batch, seqlen, key_mask, out_rows=keep_flat, offsets=offsets, out_packed=keep_packed)
            x = x.index_select(0, keep_packed)
        if not self.training:  # no dropout: on CPU inference, GELU and residual adds inside the GEMMs (cpu/ops.py)
            x = self.attn_norm(linear(self.attn_out, a, residual=x))
            return self.ffn_norm(linear(self.ffn_out, linear(self.ffn_in, x, self.act_name), residual=x))
        x = self.attn_norm(x + self.dropout(self.attn_out(a)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class BertModel(nn.Module):
    """The encoder and (optionally) the pooler. `forward` returns (sequence_output, pooled_output)."""

    def __init__(self, cfg: BertConfig, add_pooler: bool = True):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if add_pooler else None
        self.tokenizer = None  # attached by `bertkit.load`
        self.cpu_encoder = None  # attached by `bertkit.cpu.optimize_for_cpu`
        self.apply(lambda m: init_weights(m, cfg))

    def encode_packed(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None, rows=None):
        """Run the encoder; returns (packed hidden states (N, H), real-token indices or None).

        `indices` is None when the batch has no padding (then N = B*T and nothing is gathered).
        With `rows` (flat indices into B*T, each a real token), the hidden states come back for
        those positions only, (len(rows), H) in that order, and the last layer does the per-token
        work after attention for them alone."""
        batch, seqlen = input_ids.shape
        if seqlen > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {seqlen} exceeds max_position_embeddings {self.config.max_position_embeddings}"
            )
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        mask = token_mask(input_ids, valid_lengths, attention_mask)
        positions = torch.arange(seqlen, device=input_ids.device).expand(batch, seqlen)
        if bool(mask.all()):
            indices, key_mask = None, None
            x = self.embeddings(input_ids.reshape(-1), segment_ids.reshape(-1), positions.reshape(-1))
        else:
            indices = real_token_indices(mask)
            key_mask = mask[:, None, None, :]  # (B, 1, 1, T): every query may attend to every real key
            x = self.embeddings(unpad(input_ids, indices), unpad(segment_ids, indices), unpad(positions, indices))
        keep = None if rows is None else (packed_rows(rows, indices, batch * seqlen), rows)
        offsets = jagged_offsets(mask) if indices is not None and uses_jagged_attention(input_ids) else None
        for i, layer in enumerate(self.layers):
            x = layer(x, indices, batch, seqlen, key_mask, keep if i == len(self.layers) - 1 else None, offsets)
        return x, indices

    def pool(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.pool_cls(sequence_output[:, 0])

    def pool_cls(self, cls_hidden: torch.Tensor) -> torch.Tensor:
        """The pooler on the final [CLS] hidden states, (B, H) -> (B, H)."""
        return torch.tanh(self.pooler(cls_hidden))

    def pooled_output(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None):
        """`forward(...)[1]` alone, (B, H), for less work: the last layer's attention output projection
        and feed-forward run for the [CLS] rows only (its keys and values still come from every
        token), as for pretraining's NSP. What a sequence classifier needs, in training too."""
        if self.pooler is None:
            raise ValueError("this BertModel has no pooler (add_pooler=False)")
        input_ids, segment_ids, valid_lengths = _unpack_batch(input_ids, segment_ids, valid_lengths)
        fit_threads()  # as many threads as other processes leave CPUs free (cpu/threads.py)
        if self.cpu_encoder is not None:
            out = self.cpu_encoder(input_ids, segment_ids, valid_lengths, attention_mask, cls_only=True)
            if out is not None:
                return out[1]
        cls_rows = torch.arange(input_ids.shape[0], device=input_ids.device) * input_ids.shape[1]
        hidden, _ = self.encode_packed(input_ids, segment_ids, valid_lengths, attention_mask, rows=cls_rows)
        return self.pool_cls(hidden)

    def forward(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None):
        input_ids, segment_ids, valid_lengths = _unpack_batch(input_ids, segment_ids, valid_lengths)
        fit_threads()  # as many threads as other processes leave CPUs free (cpu/threads.py)
        if self.cpu_encoder is not None:  # small unpadded CPU inputs at inference; None where it does not apply
            out = self.cpu_encoder(input_ids, segment_ids, valid_lengths, attention_mask)
            if out is not None:
                return out
        batch, seqlen = input_ids.shape
        x, indices = self.encode_packed(input_ids, segment_ids, valid_lengths, attention_mask)
        seq = x.view(batch, seqlen, -1) if indices is None else repad(x, indices, batch, seqlen)
        return seq, (self.pool(seq) if self.pooler is not None else None)


class BertForPreTraining(nn.Module):
    """Encoder + masked-LM head (decoder tied to the word embeddings) + next-sentence head.

    `forward(..., masked_positions=(B, P))` returns (mlm_logits (B, P, V), nsp_logits (B, 2)); the
    MLM head (and the last layer's per-token work) runs only at those positions, which must be real
    tokens. Without `masked_positions` it runs at every position.
    NSP logit 0 means "B follows A", logit 1 "B is random" (Google's convention).
    """

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg)
        self.mlm_transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.mlm_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.nsp = nn.Linear(cfg.hidden_size, 2)
        self.act = activation(cfg.hidden_act)
        for m in (self.mlm_transform, self.mlm_norm, self.nsp):
            init_weights(m, cfg)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.mlm_norm(self.act(self.mlm_transform(hidden)))
        return F.linear(h, self.bert.embeddings.word_embeddings.weight, self.mlm_bias)

    def forward(
        self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None,
        masked_positions=None, masked_weights=None,
    ):
        """With `masked_weights` (B, P) too, only the predictions whose weight is > 0 are scored and
        the MLM logits come back flat, (M, V) for those M positions in row-major order: padding
        slots of a shard's fixed-width prediction arrays cost nothing."""
        input_ids, segment_ids, valid_lengths = _unpack_batch(input_ids, segment_ids, valid_lengths)
        fit_threads()  # as many threads as other processes leave CPUs free (cpu/threads.py)
        if masked_positions is None:
            seq, pooled = self.bert(input_ids, segment_ids, valid_lengths, attention_mask)
            return self.mlm_logits(seq), self.nsp(pooled)
        batch, seqlen = input_ids.shape
        positions = masked_positions.long().to(input_ids.device)
        flat = positions + torch.arange(batch, device=input_ids.device)[:, None] * seqlen  # (B, P) into B*T
        flat = flat[masked_weights > 0] if masked_weights is not None else flat.reshape(-1)
        cls_rows = torch.arange(batch, device=input_ids.device) * seqlen
        # Only [CLS] (for NSP) and the masked positions (for MLM) are read from the last layer.
        hidden, _ = self.bert.encode_packed(
            input_ids, segment_ids, valid_lengths, attention_mask, rows=torch.cat([cls_rows, flat])
        )
        mlm = self.mlm_logits(hidden[batch:])
        if masked_weights is None:
            mlm = mlm.view(batch, positions.shape[1], -1)
        return mlm, self.nsp(self.bert.pool_cls(hidden[:batch]))


class BertForSequenceClassification(nn.Module):
    """Pooled [CLS] -> dropout -> linear. `num_labels == 1` is regression. Returns logits (B, num_labels)."""

    def __init__(self, cfg: BertConfig, num_labels: int = 2):
        super().__init__()
        self.config, self.num_labels = cfg, num_labels
        self.bert = BertModel(cfg)
        self.dropout = Dropout(cfg.extra.get("classifier_dropout") or cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self.classifier, cfg)

    def forward(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None):
        pooled = self.bert.pooled_output(input_ids, segment_ids, valid_lengths, attention_mask)
        return self.classifier(self.dropout(pooled))


class BertForTokenClassification(nn.Module):
    """Every token -> dropout -> linear. Returns logits (B, T, num_labels)."""

    def __init__(self, cfg: BertConfig, num_labels: int = 2):
        super().__init__()
        self.config, self.num_labels = cfg, num_labels
        self.bert = BertModel(cfg, add_pooler=False)
        self.dropout = Dropout(cfg.extra.get("classifier_dropout") or cfg.hidden_dropout_prob)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_weights(self.classifier, cfg)

    def forward(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None):
        seq, _ = self.bert(input_ids, segment_ids, valid_lengths, attention_mask)
        return self.classifier(self.dropout(seq))


class BertForQuestionAnswering(nn.Module):
    """Span extraction: every token -> (start, end) logits, each (B, T)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.bert = BertModel(cfg, add_pooler=False)
        self.qa_outputs = nn.Linear(cfg.hidden_size, 2)
        init_weights(self.qa_outputs, cfg)

    def forward(self, input_ids, segment_ids=None, valid_lengths=None, attention_mask=None):
        seq, _ = self.bert(input_ids, segment_ids, valid_lengths, attention_mask)
        start, end = self.qa_outputs(seq).unbind(-1)
        return start, end


def init_weights(module: nn.Module, cfg: BertConfig) -> None:
    """BERT's initialisation: truncated-free normal(0, initializer_range), zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=cfg.initializer_range)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=cfg.initializer_range)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _unpack_batch(input_ids, segment_ids, valid_lengths):
    """Let models take a tokenizer's `EncodedBatch` directly: `model(tok(texts))`."""
    if hasattr(input_ids, "input_ids") and hasattr(input_ids, "valid_lengths"):
        b = input_ids
        return b.input_ids, b.segment_ids, b.valid_lengths
    return input_ids, segment_ids, valid_lengths


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: BertConfig, seqlen: int, training: bool = True) -> float:
    """Matrix-multiply FLOPs per token (forward, or forward + backward), for MFU estimates."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dense = 2 * (4 * h * h + 2 * h * i)  # QKV + output projection + FFN, 2 FLOPs per multiply-add
    attention = 2 * 2 * seqlen * h  # scores and weighted sum
    forward = layers * (dense + attention)
    return forward * (3 if training else 1)


__all__ = [
    "BertModel",
    "BertForPreTraining",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertForQuestionAnswering",
    "count_parameters",
    "flops_per_token",
]
