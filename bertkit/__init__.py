"""bertkit: pretrain, fine-tune, embed and export BERT models on PyTorch.

    import bertkit
    model = bertkit.load("all-minilm-l6-v2")      # or a checkpoint directory
    seq, pooled = model(model.tokenizer(["a crane is flying"]))
    bertkit.predict(bertkit.load("out/sst2"), ["a fine film"])      # also bertkit.tag, bertkit.answer, bertkit.fill_mask

Names are imported on first use (PEP 562), so `import bertkit` does not load torch: commands that
never touch a model (`bertkit pretrain-data`, `tokenize`, `vocab`) start in a fraction of a second.
Importing bertkit sets the OpenMP thread count and wait policy (bertkit/cpu/threads.py) unless the
environment already does.
"""

import importlib

from .cpu.threads import configure_threads

__version__ = "0.1.0"

# Before anything imports torch: OpenMP reads its thread count and wait policy once, when it loads.
configure_threads()

# public name -> module that defines it
_EXPORTS = {
    "load": "pretrained",
    "resolve": "pretrained",
    "save": "checkpoint",
    "BertConfig": "config",
    "PRESETS": "config",
    "BertEmbedding": "inference.embedding",
    "BertkitError": "errors",
    "BertModel": "model",
    "BertForPreTraining": "model",
    "BertForSequenceClassification": "model",
    "BertForTokenClassification": "model",
    "BertForQuestionAnswering": "model",
    "BertTokenizer": "tokenizer",
    "fill_mask": "inference.fill_mask",
    "predict": "inference.predict",
    "tag": "inference.tag",
    "answer": "inference.answer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bertkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
