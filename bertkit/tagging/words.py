"""Words and their WordPieces: the alignment that tagging and word vectors share.

Two notions of "word", each for its use:
- `split_words(text)`: raw text cut into words the way CoNLL files are tokenized (Penn Treebank
  style), for tagging plain text with a model trained on such files. Punctuation at a word's edges
  is its own word ("said," -> "said" ","), clitics too ("Germany's" -> "Germany" "'s"), but
  punctuation inside a word stays ("U.S.", "1,000.5", "Anglo-Dutch", "O'Neill"), as in CoNLL-2003.
  A tagger trained on CoNLL labels only the first piece of "U.S."; splitting it into four words
  at prediction time would ask the model about pieces it was never taught.
- `piece_groups(tokens)`: BERT's own words, the pieces of one encoded text grouped by the `##`
  continuation mark (GluonNLP's `BertEmbedding` rule), for one vector per word.
"""

from __future__ import annotations

import re
from typing import Sequence

_CLITIC = r"(?:[sSmMdD]|re|RE|ve|VE|ll|LL)(?![^\W_])"  # after an apostrophe: 's 'm 'd 're 've 'll
_WORD = re.compile(
    rf"""
      (?:[^\W\d_]\.){{2,}}                      # letters with dots: U.S., U.N., e.g.
    | '{_CLITIC}                                # a clitic, its own word as in the Treebank
    | [^\W_]                                    # a word: letters and digits, joined by - / &, by . and ,
      (?:[^\W_] | [-/&](?=[^\W_]) | (?<=\d)[.,](?=\d)    # between digits, and by apostrophes that
       | '(?!{_CLITIC})(?=[^\W_]))*              # start no clitic
    | \.\.\.
    | \S                                        # any other character (punctuation) alone
    """,
    re.VERBOSE,
)


def split_words(text: str) -> list[tuple[int, int]]:
    """The (start, end) character spans of the words of `text`, CoNLL-style (see the module doc)."""
    return [m.span() for m in _WORD.finditer(text)]


def word_pieces(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """The WordPiece ids of each word, tokenized on its own ([UNK] for a word with no pieces, such as
    a lone control character, so that every word has a first piece to be tagged on)."""
    return [ids or [tokenizer.unk_id] for ids in tokenizer.tokenize_batch(list(words))]


def piece_groups(tokens: Sequence[str], special: frozenset = frozenset({"[CLS]", "[SEP]", "[PAD]"})) -> list[tuple[int, int]]:
    """(first piece, last piece + 1) of each word of an encoded text: a word is a piece not
    starting with `##` and the `##` pieces after it. Special tokens belong to no word."""
    groups: list[list[int]] = []
    for i, tok in enumerate(tokens):
        if tok in special:
            continue
        if tok.startswith("##") and groups and groups[-1][1] == i:
            groups[-1][1] = i + 1
        else:
            groups.append([i, i + 1])
    return [(a, b) for a, b in groups]
