"""Rule-based sentence splitting, good enough for next-sentence prediction.

BERT's pairs are built from sentence boundaries, so a paragraph must be cut into sentences first.
A boundary is terminal punctuation (`.`, `!`, `?`, runs such as `?!` or `...`), optionally
followed by closing quotes or brackets, then whitespace, then something that starts a sentence (an
upper-case letter or a digit, possibly after an opening quote or bracket). It is *not* a boundary
when the word before the full stop is a known abbreviation (`Mr.`, `e.g.`, `Jan.`, `No.`), a
single-letter initial (`J. R. R. Tolkien`) or a dotted acronym (`U.S.`); decimals (`3.5`) never
qualify because no whitespace follows the point.

Quotes are ambiguous in space-tokenized text such as WikiText (`he said " Stop . " Then`): a
straight quote right after the terminal punctuation closes the sentence only when the sentence so
far holds an odd number of that quote character; otherwise it opens the next sentence.

Splitting a little too rarely is preferred over splitting too often: a missed boundary only makes
a segment longer, while a false one hands NSP a "sentence" that is a fragment.
"""

from __future__ import annotations

import re

# Lower-cased, without the final full stop. Titles, months, common Latin and reference
# abbreviations; words such as "etc." and "Inc." often end a sentence, but a sentence that
# continues after them is the more common case in encyclopaedic text.
ABBREVIATIONS = frozenset(
    """
    mr mrs ms dr prof st sr jr rev gen col lt capt sgt maj cmdr adm gov sen rep pres hon fr mt ft
    jan feb mar apr jun jul aug sep sept oct nov dec
    no nos vol vols pp p ch fig figs eq eqs ed eds op cit ca c approx est dept univ assn bros
    inc ltd co corp vs v etc al cf viz ie eg
    """.split()
)

_TERMINAL = re.compile(r"[.!?\u2026]+")
_CLOSERS = ")]}\u201d\u2019\u00bb"
_QUOTES = "\"'"
_OPENERS = "\"'([{\u201c\u2018\u00ab"


def _starts_sentence(text: str, i: int) -> bool:
    """Whether text[i:] (after whitespace) looks like the start of a sentence."""
    n = len(text)
    while i < n and (text[i] in _OPENERS or text[i].isspace()):  # WikiText spaces its quotes: ' " Why'
        i += 1
    return i < n and (text[i].isupper() or text[i].isdigit())


def _is_abbreviation(text: str, start: int, end: int) -> bool:
    """Whether the word ending at `end` (just before a single full stop) is an abbreviation."""
    word = text[start:end].lstrip(_OPENERS)
    if not word:
        return False  # " ." as in WikiText: the full stop stands alone
    if len(word) == 1 and word.isalpha():
        return True  # an initial: "J. Smith"
    if "." in word:
        return True  # "U.S.", "e.g.", "a.m."
    return word.lower() in ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """Split one paragraph into sentences (each stripped, none empty)."""
    text = text.strip()
    if not text:
        return []
    sentences: list[str] = []
    begin = 0  # where the current sentence starts
    n = len(text)
    for m in _TERMINAL.finditer(text):
        stop, end = m.start(), m.end()
        if stop < begin:
            continue
        # Absorb closing brackets and closing quotes (possibly space-separated, as in WikiText).
        j = end
        while True:
            k = j
            while k < n and text[k] == " ":
                k += 1
            if k < n and text[k] in _CLOSERS:
                j = k + 1
            elif k < n and text[k] in _QUOTES and text.count(text[k], begin, j) % 2 == 1:
                j = k + 1
            else:
                break
        if j >= n or not text[j].isspace() or not _starts_sentence(text, j):
            continue
        if m.group() == ".":
            word_start = text.rfind(" ", begin, stop) + 1
            if _is_abbreviation(text, max(word_start, begin), stop):
                continue
        sentence = text[begin:j].strip()
        if sentence:
            sentences.append(sentence)
        begin = j
    tail = text[begin:].strip()
    if tail:
        sentences.append(tail)
    return sentences
