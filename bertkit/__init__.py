"""bertkit: pretrain, fine-tune, embed and export BERT models on PyTorch.

    import bertkit
    model = bertkit.load("all-minilm-l6-v2")      # or a checkpoint directory
    seq, pooled = model(model.tokenizer(["a crane is flying"]))
"""

from .checkpoint import load, resolve, save
from .config import PRESETS, BertConfig
from .embedding import BertEmbedding
from .errors import BertkitError
from .model import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from .tokenizer import BertTokenizer

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "BertEmbedding",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertTokenizer",
    "BertkitError",
    "PRESETS",
    "load",
    "resolve",
    "save",
]
