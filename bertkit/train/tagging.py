"""Fine-tuning a token classifier (named entities, or any word tags) on CoNLL column files.

    from bertkit.tagging.train import finetune_tagging
    results = finetune_tagging("conll2003", "data/conll2003", "all-minilm-l6-v2", "out/ner", FinetuneConfig(epochs=3))

Each word is tagged on its first WordPiece; its other pieces, [CLS] and [SEP] get the target -100,
which the cross-entropy ignores (the BERT paper's recipe). A sentence longer than `max_len` is cut
into overlapping windows (windows.py), each word trained and predicted in exactly one of them.
The job, options, metrics.jsonl and eval_results.json are those of sequence classification
(train/finetune.py: `RowsJob` on the one loop); the loss is the mean over the tagged pieces of
each global batch, and the best epoch is picked by entity F1 on dev (accuracy for plain tags).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..batches import sorted_batches
from ..device import model_device, to_device
from ..train import distributed
from ..train.finetune import FinetuneConfig, RowsJob, build_task_model, run_finetune, write_results
from ..train.loop import say
from .conll import TaggingTask, get_task, load_tagging_data
from .metric import entity_scores, tag_accuracy
from .windows import plan_windows
from .words import word_pieces

IGNORE = -100  # the target of pieces that are not a word's first piece (cross_entropy's ignore_index)


class TaggedWindows:
    """Sentences of words as model inputs: one row per window, with the position of the first
    piece of each word the window owns, and (for training) those words' label ids."""

    def __init__(self, tokenizer, sentences: Sequence[Sequence[str]], label_ids: Sequence[Sequence[int]] | None, max_len: int):
        capacity = max_len - 2
        pieces = word_pieces(tokenizer, [w for words in sentences for w in words])
        self.n_words = [len(words) for words in sentences]
        self.ids: list[list[int]] = []
        self.sentence: list[int] = []  # the sentence of each window
        self.words: list[np.ndarray] = []  # the words each window owns (indices into its sentence)
        self.positions: list[np.ndarray] = []  # ... and their first pieces' positions in the window
        self.targets: list[np.ndarray] = []
        self.split = 0  # sentences that needed more than one window
        k = 0
        for s, n in enumerate(self.n_words):
            sp = pieces[k : k + n]
            k += n
            windows = plan_windows([len(p) for p in sp], capacity)
            self.split += len(windows) > 1
            for win in windows:
                if not win.owned:
                    continue
                ids, first = [tokenizer.cls_id], {}
                for w in range(win.start, win.end):
                    first[w] = len(ids)
                    ids.extend(sp[w][:capacity])
                ids.append(tokenizer.sep_id)
                self.ids.append(ids)
                self.sentence.append(s)
                self.words.append(np.array(win.owned, dtype=np.int64))
                self.positions.append(np.array([first[w] for w in win.owned], dtype=np.int64))
                if label_ids is not None:
                    self.targets.append(np.asarray(label_ids[s], dtype=np.int64)[win.owned])
        self.lengths = np.array([len(i) for i in self.ids], dtype=np.int64)
        self.pad_id = tokenizer.pad_id

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, rows):
        """(input ids, segment ids, valid lengths, targets (B, T) with -100 off the owned first pieces)."""
        width = int(self.lengths[rows].max())
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
        for r, i in enumerate(rows):
            ids[r, : self.lengths[i]] = self.ids[i]
            if self.targets:
                targets[r, self.positions[i]] = self.targets[i]
        ids = torch.from_numpy(ids)
        return ids, torch.zeros_like(ids), torch.from_numpy(self.lengths[rows]), torch.from_numpy(targets)


def token_loss_sums(net, batch) -> dict[str, torch.Tensor]:
    """The summed cross-entropy over the tagged pieces of a batch (the loop divides by their count)."""
    ids, segs, lens, targets = batch
    logits = net(ids, segs, lens)
    return {"loss": F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")}


def tagged_pieces(batch) -> dict[str, float]:
    return {"targets": float((batch[3] != IGNORE).sum())}


@torch.no_grad()
def word_probabilities(net, data: TaggedWindows, batch_size: int = 128) -> list[np.ndarray]:
    """Softmax over the labels at each word's first piece: one (words, labels) array per sentence."""
    was_training = net.training
    net.eval()
    device = model_device(net)
    out = [np.zeros((n, net.num_labels), dtype=np.float32) for n in data.n_words]
    for rows in sorted_batches(data.lengths, batch_size):
        ids, segs, lens, _ = to_device(data.batch(rows), device)
        probs = torch.softmax(net(ids, segs, lens).float(), dim=-1).cpu().numpy()
        for r, i in enumerate(rows):
            out[data.sentence[i]][data.words[i]] = probs[r, data.positions[i]]
    net.train(was_training)
    return out


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
