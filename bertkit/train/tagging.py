"""Fine-tuning a token classifier (named entities, or any word tags) on CoNLL column files.

    from bertkit.train.tagging import finetune_tagging
    results = finetune_tagging("conll2003", "data/conll2003", "all-minilm-l6-v2", "out/ner", FinetuneConfig(epochs=3))

Each word is tagged on its first WordPiece (tagging/features.py: the windows and targets); a sentence
longer than `max_len` is cut into overlapping windows, each word trained and predicted in one of them.
The job, options, metrics.jsonl and eval_results.json are those of sequence classification
(train/finetune.py: `RowsJob` on the one loop); the loss is the mean over the tagged pieces of
each global batch, and the best epoch is picked by entity F1 on dev (accuracy for plain tags).
"""

from __future__ import annotations

import dataclasses
import time
import torch
import torch.nn.functional as F

from ..tagging.conll import TaggingTask, get_task, load_tagging_data
from ..tagging.features import IGNORE, TaggedWindows
from ..tagging.inference import word_probabilities
from ..tagging.metric import entity_scores, tag_accuracy
from . import distributed
from .finetune import FinetuneConfig, RowsJob, build_task_model, run_finetune, write_results
from .loop import say

def token_loss_sums(net, batch) -> dict[str, torch.Tensor]:
    """The summed cross-entropy over the tagged pieces of a batch (the loop divides by their count)."""
    ids, segs, lens, targets = batch
    logits = net(ids, segs, lens)
    return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")}


def tagged_pieces(batch) -> dict[str, float]:
    return {"targets": float((batch[3] != IGNORE).sum())}


def score_split(net, data: TaggedWindows, gold: list[list[str]], labels: list[str], scheme: str, batch_size: int = 128) -> dict:
    """Entity P/R/F1 (or tag accuracy) of the model's predictions against the gold tags."""
    pred = [[labels[j] for j in p.argmax(-1)] for p in word_probabilities(net, data, batch_size)]
    return entity_scores(gold, pred) if scheme == "bio" else tag_accuracy(gold, pred)


def finetune_tagging(task: str | TaggingTask, data_dir, model: str, out, config: FinetuneConfig | None = None,
                     new_head: bool = False, quiet: bool = False) -> dict:
    """Fine-tune `model` to tag words; writes the best epoch's checkpoint to `out`; returns eval results."""
    config = config or FinetuneConfig()
    config.check()
    with distributed.session(config.device) as ctx:
        return _finetune_tagging(task, data_dir, model, out, config, new_head, quiet, ctx)


def _finetune_tagging(task, data_dir, model, out, config: FinetuneConfig, new_head: bool, quiet: bool, ctx) -> dict:
    wall_start = time.perf_counter()
    task = task if isinstance(task, TaggingTask) else get_task(task)
    data = load_tagging_data(task, data_dir)
    torch.manual_seed(config.seed)
    net, tokenizer = build_task_model(model, task, data.labels, new_head=new_head)

    train_sentences = config.training_subset(data.train)
    index = {label: i for i, label in enumerate(data.labels)}

    def encode(sentences, labelled):
        tags = [[index[t] for t in s.tags] for s in sentences] if labelled else None
        return TaggedWindows(tokenizer, [s.words for s in sentences], tags, config.max_len)

    train = encode(train_sentences, True)
    devs = {name: (encode(sentences, False), [s.tags for s in sentences]) for name, sentences in data.dev.items()}
    split = train.split + sum(windows.split for windows, _ in devs.values())
    if split:
        say(f"bertkit: note: {split} sentence(s) longer than --max-len {config.max_len} pieces were split into "
            "overlapping windows (nothing is truncated)", ctx, quiet)

    main_metric = "f1" if data.scheme == "bio" else "accuracy"
    info = {"head": "token_classification", "task": task.name, "labels": data.labels, "scheme": data.scheme,
            "max_len": config.max_len, "hyperparameters": dataclasses.asdict(config), "base_model": str(model)}
    job = RowsJob(f"finetune {task.name}", train, config, token_loss_sums,
                  lambda net: {name: score_split(net, *split, data.labels, data.scheme, config.eval_batch_size)
                               for name, split in devs.items()},
                  main_metric, tokenizer, info, count_key="targets", counts_of=tagged_pieces)
    describe = (f"finetune {task.name}: {len(train_sentences)} training / "
                + ", ".join(f"{len(s)} {n}" for n, s in data.dev.items())
                + f" sentences, {'entities' if data.scheme == 'bio' else 'word tags'} over labels {data.labels}")
    result = run_finetune(job, net, out, config, describe, ctx, quiet)
    return write_results(job, net, out, config, result, ctx, quiet, len(train_sentences),
                         {n: len(s) for n, s in data.dev.items()}, wall_start)
