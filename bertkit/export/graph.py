"""The exported graph: a bertkit model's weights in the padded, fixed-rank layout that export needs.

bertkit's own forward unpads the batch (`padding.py`): the number of rows it works on depends on
the data, which neither `torch.export` nor ONNX can express as a static graph. `ExportGraph` runs
the same weights over the padded (B, T, H) batch instead, masking padded keys out of attention,
so every shape follows only the input's (batch, sequence) and both dims stay dynamic.

The attention is spelled the way Hugging Face's eager BERT spells it (three projections for Q, K
and V, scores + additive mask, softmax, weighted sum): that is the pattern ONNX Runtime's
transformer optimizer recognises and fuses into its Attention / SkipLayerNormalization / BiasGelu
kernels. bertkit's fused QKV weight is split into three at construction; the numbers are the same
(export verifies the result against the unpadded model).

Inputs (all int64, (B, T)): input_ids, token_type_ids, attention_mask (1 = real token).
Outputs per head (OUTPUTS): hidden states are zero at padded positions, as in bertkit's forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..model import BertLayer

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")

# head -> ((output name, shape with symbolic dims; "hidden"/"labels" filled in from the model), ...)
OUTPUTS = {
    "encoder": (("last_hidden_state", ("batch", "sequence", "hidden")), ("pooler_output", ("batch", "hidden"))),
    "classification": (("logits", ("batch", "labels")),),
    "regression": (("logits", ("batch", 1)),),
    "token_classification": (("logits", ("batch", "sequence", "labels")),),
    "question_answering": (("start_logits", ("batch", "sequence")), ("end_logits", ("batch", "sequence"))),
}


def _linear_from(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    out = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        out.weight.copy_(weight)
        out.bias.copy_(bias)
    return out


class ExportLayer(nn.Module):
    """A `BertLayer`'s weights as a padded post-LN block with separate Q, K, V projections."""

    def __init__(self, layer: BertLayer):
        super().__init__()
        self.num_heads, self.head_dim = layer.num_heads, layer.head_dim
        weights, biases = layer.qkv.weight.detach().chunk(3), layer.qkv.bias.detach().chunk(3)
        self.query, self.key, self.value = (_linear_from(w, b) for w, b in zip(weights, biases))
        self.attn_out, self.attn_norm = layer.attn_out, layer.attn_norm
        self.ffn_in, self.ffn_out, self.ffn_norm, self.act = layer.ffn_in, layer.ffn_out, layer.ffn_norm, layer.act

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, heads, T, head_dim)"""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + additive_mask
        context = torch.matmul(torch.softmax(scores, dim=-1), v).permute(0, 2, 1, 3)
        context = context.reshape(x.shape[0], x.shape[1], self.num_heads * self.head_dim)
        x = self.attn_norm(x + self.attn_out(context))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class ExportGraph(nn.Module):
    """forward(input_ids, token_type_ids, attention_mask) -> the head's outputs, padded layout."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        if head not in OUTPUTS:
            raise ValueError(f"no export graph for head {head!r}")
        self.head = head
        bert = model.bert if hasattr(model, "bert") else model
        self.embeddings = bert.embeddings
        self.layers = nn.ModuleList(ExportLayer(layer) for layer in bert.layers)
        self.pooler = bert.pooler
        self.classifier = getattr(model, "classifier", None)
        self.qa_outputs = getattr(model, "qa_outputs", None)
        if head == "encoder" and self.pooler is None:
            raise ValueError("an encoder without a pooler has no pooler_output to export")
        self.hidden_size = bert.config.hidden_size
        self.num_labels = getattr(model, "num_labels", None)
        self.eval()

    def output_names(self) -> list[str]:
        return [name for name, _ in OUTPUTS[self.head]]

    def output_spec(self) -> list[tuple[str, tuple]]:
        """(name, shape) per output, "batch" and "sequence" symbolic, the rest numbers."""
        sizes = {"hidden": self.hidden_size, "labels": self.num_labels}
        return [(name, tuple(sizes.get(d, d) for d in shape)) for name, shape in OUTPUTS[self.head]]

    def forward(self, input_ids, token_type_ids, attention_mask):
        batch, seqlen = input_ids.shape
        positions = torch.arange(seqlen, device=input_ids.device).unsqueeze(0).expand(batch, seqlen)
        x = self.embeddings(input_ids, token_type_ids, positions)
        mask = attention_mask.to(x.dtype)
        # 0 for real keys, the most negative float for padded ones (Hugging Face's convention, which
        # ONNX Runtime's attention fusion recognises); a real [CLS] key keeps every softmax finite.
        additive = (1.0 - mask[:, None, None, :]) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, additive)
        seq = x * mask[:, :, None]  # zeros at padded positions, like bertkit's unpadded forward
        if self.head == "encoder":
            return seq, torch.tanh(self.pooler(seq[:, 0]))
        if self.head in ("classification", "regression"):
            return self.classifier(torch.tanh(self.pooler(seq[:, 0])))
        if self.head == "token_classification":
            return self.classifier(seq)
        start, end = self.qa_outputs(seq).unbind(-1)
        return start, end
