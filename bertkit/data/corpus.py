"""Reading corpora in the layouts users have, as a stream of documents.

Three layouts, chosen with `format`:

- `wikitext` (WikiText-2/103 `.tokens` and `.raw`): a line ` = Title = ` starts a document; lines
  such as ` = = Section = = ` are headings inside it and are dropped; every other non-blank line is
  a paragraph. The tokenization escapes `@-@`, `@,@` and `@.@` are undone (`1 @,@ 000` -> `1,000`)
  and `<unk>` is dropped: it stands for a word WikiText's own vocabulary lacked, and teaching BERT
  that [UNK] is common text would be wrong (WordPiece almost never emits it).
- `docs` (Google's `create_pretraining_data.py` input): one sentence per line, a blank line between
  documents. Lines are taken as sentences as they are.
- `text`: one paragraph per line, blank lines between documents.

Reading is split in two so that the costly part runs in worker processes: `iter_documents` (cheap,
in the main process) yields each document as its raw lines, and `document_sentences` (in a worker)
turns those lines into sentences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import BertkitError
from ..textio import iter_lines
from .sentences import split_sentences

FORMATS = ("wikitext", "docs", "text")


def detect_format(path: str | Path) -> str:
    """`wikitext` for `.tokens` / `.raw` files, otherwise Google's `docs` layout."""
    suffix = Path(path).suffix.lower()
    return "wikitext" if suffix in (".tokens", ".raw") else "docs"


def _is_wikitext_heading(line: str) -> int:
    """0 for a normal line, 1 for a ` = Title = ` line, 2+ for ` = = Section = = ` and deeper."""
    s = line.strip()
    if len(s) < 3 or not (s.startswith("= ") and s.endswith(" =")):
        return 0
    level = 0
    while s.startswith("= "):
        s = s[2:]
        level += 1
    return level


def iter_documents(path: str | Path, fmt: str, errors: str = "strict") -> Iterator[list[str]]:
    """Yield the documents of one file, each as a list of its non-blank raw lines (stripped)."""
    if fmt not in FORMATS:
        raise BertkitError(f"unknown corpus format {fmt!r} (expected one of {', '.join(FORMATS)})")
    doc: list[str] = []
    for line in iter_lines(path, errors=errors):
        line = line.strip()
        if fmt == "wikitext":
            level = _is_wikitext_heading(line)
            if level == 1:
                if doc:
                    yield doc
                doc = []
                continue
            if level >= 2 or not line:
                continue
            doc.append(line)
        elif line:
            doc.append(line)
        elif doc:
            yield doc
            doc = []
    if doc:
        yield doc


def clean_wikitext_line(line: str) -> str:
    """Undo WikiText's tokenization escapes and drop `<unk>` (plain `str.replace`: it is hot)."""
    line = f" {line} "
    if "@" in line:
        line = line.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    if "<unk>" in line:
        while " <unk> " in line:
            line = line.replace(" <unk> ", " ")
        line = line.replace("<unk>", "")  # glued to an escape, as in 'anti @-@ <unk>' or '16 @,@ <unk>'
    return line.strip()


def document_sentences(lines: list[str], fmt: str) -> list[str]:
    """The sentences of one document read by `iter_documents` with the same `fmt`."""
    if fmt == "docs":
        return lines
    out: list[str] = []
    for line in lines:
        if fmt == "wikitext":
            line = clean_wikitext_line(line)
        out.extend(split_sentences(line))
    return out


def check_has_text(path: str | Path, errors: str = "strict") -> None:
    """Fail early, naming the file, when it does not exist or holds no text at all.

    Reads only up to the first non-blank line, so it costs nothing on a large corpus.
    """
    path = Path(path)
    if not path.is_file():
        raise BertkitError(f"{path}: input file not found")
    for line in iter_lines(path, errors=errors):
        if line.strip():
            return
    raise BertkitError(f"{path}: the file is empty (no text to make pretraining data from)")
