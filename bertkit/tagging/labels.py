"""Tag schemes: entity spans from IOB tags (the conlleval rules), IOB1 -> BIO, the label list.

A tag is `O` or `PREFIX-TYPE` with PREFIX `B` or `I`. CoNLL-2003 ships IOB1, where `B-` appears
only between two adjacent entities of the same type and an entity otherwise starts with `I-`;
BIO (IOB2) starts every entity with `B-`. Both read the same way under conlleval's rules, which
`entity_spans` follows:
- an entity starts at `B-X`, or at `I-X` after `O` or after a tag of another type;
- it continues through the `I-X` tags right after it and ends before anything else.
So `O I-PER` is a PER entity, and `B-PER I-LOC` is two entities.
"""

from __future__ import annotations

from typing import Sequence

# The CoNLL-2003 types in their usual order, so labels are listed as in the paper and in transformers' examples.
CONLL2003_TYPES = ("PER", "ORG", "LOC", "MISC")


def split_tag(tag: str) -> tuple[str, str]:
    """("B"|"I"|"O", type): "B-PER" -> ("B", "PER"), "O" -> ("O", "")."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def is_entity_tag(tag: str) -> bool:
    prefix, kind = split_tag(tag)
    return tag == "O" or (prefix in ("B", "I") and bool(kind))


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one sentence as (type, first word, last word + 1), by conlleval's rules."""
    spans = []
    start, kind = None, ""
    for i, tag in enumerate(tags):
        prefix, this = split_tag(tag)
        continues = prefix == "I" and start is not None and this == kind
        if start is not None and not continues:
            spans.append((kind, start, i))
            start = None
        if prefix in ("B", "I") and start is None:
            start, kind = i, this
    if start is not None:
        spans.append((kind, start, len(tags)))
    return spans


def to_bio(tags: Sequence[str]) -> list[str]:
    """The same entities written in BIO: `B-` on each entity's first word, `I-` on the rest."""
    out = ["O"] * len(tags)
    for kind, start, end in entity_spans(tags):
        out[start] = f"B-{kind}"
        for i in range(start + 1, end):
            out[i] = f"I-{kind}"
    return out


def bio_labels(types: Sequence[str]) -> list[str]:
    """The model's output labels for these entity types: O, then B-X and I-X for each type."""
    labels = ["O"]
    for kind in types:
        labels += [f"B-{kind}", f"I-{kind}"]
    return labels


def ordered_types(types: set[str]) -> list[str]:
    """CoNLL-2003's four types first in their usual order, any others after them, sorted."""
    return [t for t in CONLL2003_TYPES if t in types] + sorted(types - set(CONLL2003_TYPES))
