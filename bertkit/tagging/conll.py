"""Readers for CoNLL column files, and the two tagging tasks built on them.

A CoNLL file holds one word per line, its columns separated by spaces or tabs, the tag in the last
column, and a blank line after each sentence; `-DOCSTART-` lines (document breaks in CoNLL-2003)
also end a sentence and are not words.

- `conll2003`: `DIR/eng.train`, `DIR/eng.testa` (dev) and, when present, `DIR/eng.testb` (test),
  four columns (word, POS, chunk, entity tag), entity tags in IOB1.
- `tags`: `DIR/train.txt`, `DIR/dev.txt` and, when present, `DIR/test.txt`, two or more columns.
  When every training tag is `O`, `B-X` or `I-X` the tags are entities (IOB1 or BIO, scored by
  entity F1); otherwise they are plain word tags such as POS (scored by accuracy).

Entity tags are converted to BIO for training and scoring. Every problem is a one-line
`BertkitError` naming the file and line.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import BertkitError
from ..textio import iter_lines
from .labels import bio_labels, is_entity_tag, ordered_types, split_tag, to_bio


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    path: str
    lines: list[int]  # the line number of each word, for error messages


@dataclass(frozen=True)
class TaggingTask:
    name: str
    train: str
    dev: str
    test: str
    columns: int  # the fewest columns a word line may have
    column_names: str  # for error messages
    entities_only: bool  # the tags must be entity tags

    # What train/finetune.py's build_task_model asks of a task.
    head = kind = "token_classification"


TASKS = {
    "conll2003": TaggingTask("conll2003", "eng.train", "eng.testa", "eng.testb", 4, "word POS chunk tag", True),
    "tags": TaggingTask("tags", "train.txt", "dev.txt", "test.txt", 2, "word ... tag", False),
}


@dataclass
class TaggingData:
    train: list[Sentence]
    dev: dict[str, list[Sentence]]  # "dev", and "test" when the test file is present
    labels: list[str]  # the model's outputs
    scheme: str  # "bio" (entities) or "tags" (plain word tags)


def read_conll(path: str | Path, columns: int = 2, column_names: str = "word ... tag") -> list[Sentence]:
    """The sentences of a CoNLL column file (word = first column, tag = last column)."""
    sentences: list[Sentence] = []
    words, tags, lines = [], [], []

    def close():
        if words:
            sentences.append(Sentence(list(words), list(tags), str(path), list(lines)))
            words.clear(), tags.clear(), lines.clear()

    for lineno, line in enumerate(iter_lines(path), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            close()
            continue
        if len(fields) < columns:
            raise BertkitError(f"{path}:{lineno}: {len(fields)} column(s), expected {columns} ({column_names})")
        words.append(fields[0])
        tags.append(fields[-1])
        lines.append(lineno)
    close()
    if not sentences:
        raise BertkitError(f"{path}: no sentences (the file is empty)")
    return sentences


def get_task(name: str) -> TaggingTask:
    if name not in TASKS:
        raise BertkitError(f"unknown tagging task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def load_tagging_data(task: str | TaggingTask, data_dir) -> TaggingData:
    """Read a tagging task's files; entity tags come back in BIO."""
    task = task if isinstance(task, TaggingTask) else get_task(task)
    if data_dir is None:
        raise BertkitError(f"--task {task.name} needs --data-dir (a folder with {task.train} and {task.dev})")
    data_dir = Path(data_dir)

    def read(file):
        path = data_dir / file
        if not path.is_file():
            raise BertkitError(f"task {task.name}: data file {path} not found "
                               f"(expected {task.train}, {task.dev} and optionally {task.test} in {data_dir})")
        return read_conll(path, task.columns, task.column_names)

    train = read(task.train)
    splits = {"dev": read(task.dev)}
    if (data_dir / task.test).is_file():
        splits["test"] = read(task.test)

    plain = [(s, i) for s in train for i, tag in enumerate(s.tags) if not is_entity_tag(tag)]
    if plain and task.entities_only:
        s, i = plain[0]
        raise BertkitError(f"{s.path}:{s.lines[i]}: tag {s.tags[i]!r} is not an entity tag (O, B-TYPE or I-TYPE)")
    scheme = "tags" if plain else "bio"

    if scheme == "bio":
        types = {split_tag(tag)[1] for s in train for tag in s.tags if tag != "O"}
        if not types:
            warnings.warn(f"{train[0].path}: no entities in the training data (every tag is O): the model can only learn O")
        labels = bio_labels(ordered_types(types))
        for sentences in (train, *splits.values()):
            for s in sentences:
                for i, tag in enumerate(s.tags):
                    if not is_entity_tag(tag):
                        raise BertkitError(f"{s.path}:{s.lines[i]}: tag {tag!r} is not an entity tag (O, B-TYPE or I-TYPE)")
                    if tag != "O" and split_tag(tag)[1] not in types:
                        raise BertkitError(f"{s.path}:{s.lines[i]}: tag {tag!r}: entity type {split_tag(tag)[1]!r} never "
                                           f"appears in training (types: {', '.join(ordered_types(types)) or 'none'})")
                s.tags = to_bio(s.tags)
    else:
        labels = sorted({tag for s in train for tag in s.tags})
        known = set(labels)
        for sentences in splits.values():
            for s in sentences:
                for i, tag in enumerate(s.tags):
                    if tag not in known:
                        raise BertkitError(f"{s.path}:{s.lines[i]}: tag {tag!r} never appears in training")
    return TaggingData(train, splits, labels, scheme)
