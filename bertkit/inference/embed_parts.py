"""Embeddings of a big file written as parts: the layout `bertkit embed --part-lines` (and any
`torchrun ... -m bertkit embed`) writes, and `read_parts` to read it back.

    vectors/settings.json      the flags the parts were made with (a rerun must match them)
    vectors/part-00000.npy     rows of input lines [0, P), then [P, 2P), ... (or .jsonl)
    vectors/index.json         written once every part is there: the parts in input order

Part k holds input lines [k*P, (k+1)*P), one row per line (blank lines too), exactly the rows a
one-process run writes for them. Part k belongs to rank k % WORLD_SIZE, so the ranks never wait for
one another. A part appears under its name only when complete (written as `NAME.tmp`, then
renamed), so a killed run, rerun, computes only the parts that are missing; the number of processes
may differ between runs. Whichever rank finds every part complete writes the index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import BertkitError
from ..textio import read_json

SETTINGS, INDEX = "settings.json", "index.json"
FLAGS = {"input": "--file", "model": "--model", "pooling": "--pooling", "words": "--words", "format": "--format",
         "max_len": "--max-len", "precision": "--precision", "part_lines": "--part-lines"}


def part_name(k: int, fmt: str) -> str:
    return f"part-{k:05d}.{fmt}"


def write_atomic(path: Path, write, mode: str = "w", shared: bool = False) -> None:
    """`write(f)` into a temporary file next to `path`, synced, then renamed to `path`: readers see
    all of it or nothing. `shared`: several processes may write this same file at once (each gets
    its own temporary name); a part has one writer and a fixed one, so a killed run leaves no litter."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid() if shared else ''}")
    with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _flag(key: str, value) -> str:
    return f"{FLAGS.get(key, key)} {value}" if value is not None else f"no {FLAGS.get(key, key)}"


def check_settings(directory: Path, settings: dict) -> None:
    """Record `settings` in a new (or empty) `directory`, or check that they are the ones its parts
    were made with: a one-line `BertkitError` naming each difference."""
    if directory.exists() and not directory.is_dir():
        raise BertkitError(f"--out {directory}: is a file; parts are written to a directory")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SETTINGS
    if not path.is_file():
        if any(directory.glob("part-*")):
            raise BertkitError(f"{directory}: holds parts but no {SETTINGS}; use another --out")
        write_atomic(path, lambda f: f.write(json.dumps(settings, indent=1) + "\n"), shared=True)
        return
    old = read_json(path)
    keys = [k for k in FLAGS if old.get(k) != settings.get(k)]
    if keys:
        was = ", ".join(_flag(k, old.get(k)) for k in keys)
        now = ", ".join(_flag(k, settings.get(k)) for k in keys)
        raise BertkitError(f"{directory}: its parts were made with {was}; this run has {now}: rerun with the "
                           "same settings to resume, or write to another --out")


class OwnedParts:
    """Iterate over (k, lines of part k) for the parts of `lines` that belong to `rank` and are not
    complete in `directory` yet. Every line is read (the others are counted and skipped), so after
    the loop `n_lines` is the input's length and `skipped` the parts of this rank already there."""

    def __init__(self, lines, directory: Path, fmt: str, part_lines: int, rank: int = 0, world_size: int = 1):
        self.lines, self.directory, self.fmt = lines, directory, fmt
        self.part_lines, self.rank, self.world_size = part_lines, rank, world_size
        self.n_lines = self.skipped = 0

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        current, todo = None, []
        for i, line in enumerate(self.lines):
            self.n_lines = i + 1
            k = i // self.part_lines
            if k != current:
                if todo:
                    yield current, todo
                current, todo = k, []
                mine = k % self.world_size == self.rank
                wanted = mine and not (self.directory / part_name(k, self.fmt)).exists()
                self.skipped += mine and not wanted
            if wanted:
                todo.append(line)
        if todo:
            yield current, todo

    @property
    def n_parts(self) -> int:
        return -(-self.n_lines // self.part_lines)


def write_index_if_complete(directory: Path, settings: dict, n_lines: int, dim: int) -> bool:
    """Write `index.json` if every part of an `n_lines`-line input is in `directory`; True if so."""
    p, fmt = settings["part_lines"], settings["format"]
    parts = [{"file": part_name(k, fmt), "start": k * p, "end": min((k + 1) * p, n_lines),
              "rows": min((k + 1) * p, n_lines) - k * p} for k in range(-(-n_lines // p))]
    if not all((directory / part["file"]).is_file() for part in parts):
        return False
    index = {"rows": n_lines, "dim": dim, "settings": settings, "parts": parts}
    write_atomic(directory / INDEX, lambda f: f.write(json.dumps(index, indent=1) + "\n"), shared=True)
    return True


def read_parts(directory) -> np.ndarray | list[dict]:
    """The rows of a finished parts directory in input order: `--format npy` as one (N, H) float32
    array, `jsonl` as a list of the JSON rows. A one-line `BertkitError` if the run is unfinished or a
    part does not hold the rows the index says."""
    directory = Path(directory)
    if not (directory / INDEX).is_file():
        raise BertkitError(f"{directory}: no {INDEX}, so not every part is written; rerun the same command to finish")
    index = read_json(directory / INDEX)
    rows: list = []
    for part in index["parts"]:
        path = directory / part["file"]
        if index["settings"]["format"] == "npy":
            got = np.load(path)
        else:
            with open(path, encoding="utf-8") as f:
                got = [json.loads(line) for line in f]
        if len(got) != part["rows"]:
            raise BertkitError(f"{path}: {len(got)} rows, the index says {part['rows']}")
        rows.append(got)
    if index["settings"]["format"] != "npy":
        return [row for got in rows for row in got]
    return np.concatenate(rows) if rows else np.zeros((0, index["dim"]), np.float32)
