"""Corpora and BERT pretraining data.

    corpus.py       readers for WikiText, Google's one-sentence-per-line layout and plain text
    sentences.py    rule-based sentence splitting
    wiki_sample.py  the embedded `wiki-sample` corpus (gensim's Wikipedia sample) -> cached text files
    wordcache.py    fast exact WordPiece ids through a bounded word cache
    instances.py    next-sentence pairs and truncation (Google's create_pretraining_data.py rules)
    masking.py      masked-LM masking, shared by shard writing and dynamic masking
    shards.py       .npz shards (GluonNLP's arrays) and stats.json
    pretraining.py  the streaming, multi-process pipeline behind `bertkit pretrain-data`
    loader.py       lazy, bucketed, DDP-aware batches of torch tensors

Names are imported lazily, so `import bertkit.data` costs nothing (the loader needs torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "wiki_sample_paths": "wiki_sample",
    "WikiSamplePaths": "wiki_sample",
    "iter_documents": "corpus",
    "document_sentences": "corpus",
    "split_sentences": "sentences",
    "CorpusFile": "pretraining",
    "PretrainingConfig": "pretraining",
    "create_pretraining_data": "pretraining",
    "MaskingVocab": "masking",
    "mask_tokens": "masking",
    "read_shard": "shards",
    "read_stats": "shards",
    "PretrainingLoader": "loader",
    "BATCH_KEYS": "loader",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
