"""Extractive question answering (SQuAD 1.1 and 2.0), end to end.

    squad_data.py   read and check SQuAD JSON files -> SquadExample
    features.py     run_squad.py's features: query + sliding context windows, max-context flags,
                    answer character spans -> token positions (through the tokenizer's offsets)
    inference.py    start/end logits of every window, batched
    postprocess.py  n-best spans, probabilities, the SQuAD 2.0 null score and threshold
    metric.py       the official SQuAD metric (exact match, F1, HasAns/NoAns, best thresholds)
    train.py        the fine-tuning loop on the windows
    job.py          `bertkit squad`: train, predict, write the outputs, remember the threshold
    answer.py       one question about one context: `bertkit.load(QA_DIR).answer(q, c)`

Nothing here is imported by `import bertkit`; each module imports torch only if it needs it.
"""
