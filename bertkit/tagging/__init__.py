"""Token classification: tag every word of a sentence (named entities, POS, chunks, your own tags).

    conll.py     CoNLL column files: the conll2003 and tags tasks
    labels.py    entity spans from IOB1/BIO tags (conlleval rules), IOB1 -> BIO, the label list
    words.py     raw text -> words, words -> WordPieces, WordPieces -> words
    windows.py   long sentences as overlapping windows, each word tagged in exactly one
    metric.py    entity-level precision / recall / F1 (conlleval), tag accuracy
    train.py     fine-tuning on the shared loop of train/finetune.py
    predict.py   entities with character offsets in plain text
"""
