"""Reading users' text files line by line, with errors that name the file and the line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

from .errors import BertkitError


def iter_lines(path: str | Path, errors: str = "strict") -> Iterator[str]:
    """Yield the lines of a UTF-8 text file without their line endings.

    Each line is decoded on its own so that invalid UTF-8 is reported with its line number;
    `errors="replace"` substitutes U+FFFD instead of stopping. The path "-" reads standard input.
    """
    if str(path) == "-":
        f, path = sys.stdin.buffer, "<stdin>"
    else:
        path = Path(path)
        if path.is_dir():
            raise BertkitError(f"{path}: is a directory, expected a text file")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise BertkitError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as e:
                raise BertkitError(
                    f"{path}:{lineno}: invalid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                ) from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]  # a byte-order mark is not text
            yield line.rstrip("\r\n")


def read_json(path: str | Path):
    """A JSON file's content; a one-line error naming the file if it is not valid UTF-8 JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BertkitError(f"{path}: not valid JSON: {e}") from None
