"""BERT WordPiece tokenization: Google's `tokenization.py` semantics on the Rust `tokenizers` engine.

Basic tokenization (as BERT does it): control characters dropped and whitespace normalised, CJK
characters split into single characters, punctuation split off, and for uncased models
lower-casing plus accent stripping (NFD, combining marks removed). Then greedy longest-match-first
WordPiece against `vocab.txt`, with `##` marking word continuations; a word longer than 100
characters, or one with no matching pieces, becomes [UNK].

Encoding a single text gives `[CLS] a [SEP]` (segment ids 0); a pair gives `[CLS] a [SEP] b [SEP]`
(segment ids 0 for [CLS], a and the first [SEP]; 1 for b and the last [SEP]). Pairs longer than
`max_len` are truncated longest-first: one token at a time from the end of the longer text.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .batches import pad_rows
from .errors import BertkitError
from .textio import iter_lines, read_json

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)


class TruncationWarning(UserWarning):
    """Some texts were longer than `max_len` and lost their tail."""


def load_vocab(path: str | Path) -> dict[str, int]:
    """Read a BERT `vocab.txt`: one token per line, the line number (from 0) is its id."""
    path = Path(path)
    if not path.is_file():
        raise BertkitError(f"{path}: vocabulary file not found")
    vocab: dict[str, int] = {}
    for i, line in enumerate(iter_lines(path)):
        token = line.strip()
        if not token:
            # Google's vocabularies never hold empty lines; an empty token cannot be matched anyway,
            # but it still takes an id so the numbering of later lines stays right.
            token = f"[bertkit-empty-line-{i}]"
        vocab.setdefault(token, i)
    if not vocab:
        raise BertkitError(f"{path}: vocabulary file is empty")
    return require_special_tokens(vocab, path)


def require_special_tokens(vocab: dict[str, int], source) -> dict[str, int]:
    """`vocab` itself, if it has the tokens every BERT input needs; else a one-line error about `source`."""
    missing = [t for t in (UNK, CLS, SEP) if t not in vocab]
    if missing:
        raise BertkitError(f"{source}: vocabulary lacks the special token(s) {', '.join(missing)}")
    return vocab


@dataclass
class Encoding:
    """One encoded text or text pair."""

    tokens: list[str]
    ids: list[int]
    segment_ids: list[int]
    offsets: list[tuple[int, int]]  # character span in its own text; (0, 0) for special tokens
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EncodedBatch:
    """A padded batch: what a BERT model takes as input."""

    input_ids: "torch.Tensor"  # (B, T) int64, padded with [PAD]
    segment_ids: "torch.Tensor"  # (B, T) int64, 0 where padded
    valid_lengths: "torch.Tensor"  # (B,) int64, the number of real tokens of each row
    encodings: list[Encoding]

    @property
    def attention_mask(self) -> "torch.Tensor":
        """(B, T) bool, True at real tokens."""
        import torch

        t = torch.arange(self.input_ids.shape[1], device=self.valid_lengths.device)
        return t[None, :] < self.valid_lengths[:, None]

    def to(self, device) -> "EncodedBatch":
        return EncodedBatch(
            self.input_ids.to(device), self.segment_ids.to(device), self.valid_lengths.to(device), self.encodings
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class BertTokenizer:
    """WordPiece tokenizer for one vocabulary, cased or uncased.

    >>> tok = BertTokenizer("vocab.txt", lowercase=True)
    >>> batch = tok(["a crane is flying", "a crane driver came"], max_len=128)
    """

    def __init__(self, vocab: str | Path | dict[str, int], lowercase: bool = True, strip_accents: bool | None = None):
        self.vocab = dict(vocab) if isinstance(vocab, dict) else load_vocab(vocab)
        self.lowercase = bool(lowercase)
        # BERT strips accents exactly when it lower-cases, unless told otherwise.
        self.strip_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.pad_id = self.vocab.get(PAD, 0)
        self.unk_id, self.cls_id, self.sep_id = self.vocab[UNK], self.vocab[CLS], self.vocab[SEP]
        self.mask_id = self.vocab.get(MASK)

        backend = Tokenizer(models.WordPiece(self.vocab, unk_token=UNK, max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=self.strip_accents, lowercase=self.lowercase
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.post_processor = processors.BertProcessing((SEP, self.sep_id), (CLS, self.cls_id))
        backend.decoder = decoders.WordPiece(prefix="##")
        # Special tokens written in the text ("the [MASK] sat") are matched whole, before casing
        # and punctuation splitting would break them apart, as in transformers' BERT tokenizers.
        backend.add_special_tokens([t for t in SPECIAL_TOKENS if t in self.vocab])
        self._backend = backend
        self._max_len: int | None = None

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(self.vocab.values()) + 1

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.id_to_token.get(int(i), UNK) for i in ids]

    # ---- encoding ---------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, without [CLS]/[SEP]."""
        self._no_truncation()
        return self._backend.encode(text, add_special_tokens=False).tokens

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids of many texts, without special tokens (fast path for data pipelines)."""
        self._no_truncation()
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def _no_truncation(self) -> None:
        # The backend keeps the truncation an earlier `encode_batch` set; tokenizing never truncates.
        if self._max_len is not None:
            self._backend.no_truncation()
            self._max_len = None

    def _set_max_len(self, max_len: int, pair: bool) -> None:
        need = 3 if pair else 2
        if max_len < need:
            raise BertkitError(f"max_len {max_len} is too small: {'a pair' if pair else 'a text'} needs at least {need}")
        if self._max_len != max_len:
            self._backend.enable_truncation(max_len, strategy="longest_first")
            self._max_len = max_len

    def encode_batch(
        self, texts: Sequence[str], texts_b: Sequence[str] | None = None, max_len: int = 512
    ) -> list[Encoding]:
        texts = [_check_text(t, i) for i, t in enumerate(texts)]
        if texts_b is not None:
            texts_b = [_check_text(t, i) for i, t in enumerate(texts_b)]
            if len(texts_b) != len(texts):
                raise BertkitError(f"got {len(texts)} first texts but {len(texts_b)} second texts")
        self._set_max_len(max_len, pair=texts_b is not None)
        inputs = texts if texts_b is None else list(zip(texts, texts_b))
        raw = self._backend.encode_batch(inputs, add_special_tokens=True)
        out = [
            Encoding(e.tokens, e.ids, e.type_ids, [tuple(o) for o in e.offsets], truncated=bool(e.overflowing))
            for e in raw
        ]
        n_truncated = sum(e.truncated for e in out)
        if n_truncated:
            warnings.warn(
                f"{n_truncated} of {len(out)} inputs were longer than max_len={max_len} tokens and were truncated",
                TruncationWarning,
                stacklevel=3,
            )
        return out

    def encode(self, text: str, text_b: str | None = None, max_len: int = 512) -> Encoding:
        return self.encode_batch([text], None if text_b is None else [text_b], max_len=max_len)[0]

    def __call__(
        self, texts: str | Sequence[str], texts_b: str | Sequence[str] | None = None, max_len: int = 512
    ) -> EncodedBatch:
        """Encode and pad a batch (to its longest row)."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(texts_b, str):
            texts_b = [texts_b]
        return self.pad(self.encode_batch(texts, texts_b, max_len=max_len))

    def pad(self, encodings: list[Encoding]) -> EncodedBatch:
        import torch  # here, not at the top: data pipelines use this module without ever loading torch

        lengths = np.array([len(e) for e in encodings], dtype=np.int64)
        ids = pad_rows([e.ids for e in encodings], self.pad_id)
        segs = pad_rows([e.segment_ids for e in encodings])
        return EncodedBatch(torch.from_numpy(ids), torch.from_numpy(segs), torch.from_numpy(lengths), encodings)

    # ---- decoding ---------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        # The backend knows the special tokens of SPECIAL_TOKENS present in the vocab (see __init__).
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- files ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write `vocab.txt` and a `tokenizer_config.json` that `transformers` reads too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_vocab([self.id_to_token[i] for i in range(self.vocab_size)], directory / "vocab.txt")
        (directory / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "BertTokenizer",
                    "do_lower_case": self.lowercase,
                    "strip_accents": None if self.strip_accents == self.lowercase else self.strip_accents,
                    "tokenize_chinese_chars": True,
                    "unk_token": UNK,
                    "sep_token": SEP,
                    "pad_token": PAD,
                    "cls_token": CLS,
                    "mask_token": MASK,
                },
                indent=2,
            )
            + "\n"
        )

    def save_tokenizer_json(self, path: str | Path) -> None:
        """Write the whole pipeline (normalizer, pre-tokenizer, WordPiece, [CLS]/[SEP] template) as a
        `tokenizers` tokenizer.json, without truncation: what a program that has only the `tokenizers`
        library needs (an export directory)."""
        self._no_truncation()
        self._backend.save(str(path))

    @classmethod
    def from_dir(cls, directory: str | Path) -> "BertTokenizer":
        """Load from a checkpoint directory: `vocab.txt` plus casing from `tokenizer_config.json`."""
        directory = Path(directory)
        lowercase, strip_accents = saved_casing(directory)
        lowercase = True if lowercase is None else lowercase  # BERT's default, as in transformers
        vocab_txt, tokenizer_json = directory / "vocab.txt", directory / "tokenizer.json"
        if not vocab_txt.is_file() and tokenizer_json.is_file():
            # transformers 5 saves a tokenizer as tokenizer.json only: its WordPiece vocab is the same list.
            return cls(vocab_from_tokenizer_json(tokenizer_json), lowercase=lowercase, strip_accents=strip_accents)
        return cls(vocab_txt, lowercase=lowercase, strip_accents=strip_accents)


def saved_casing(directory: str | Path) -> tuple[bool | None, bool | None]:
    """(do_lower_case, strip_accents) from a directory's `tokenizer_config.json`; None where unsaid."""
    path = Path(directory) / "tokenizer_config.json"
    cfg = read_json(path) if path.is_file() else {}
    lowercase = bool(cfg["do_lower_case"]) if "do_lower_case" in cfg else None
    return lowercase, cfg.get("strip_accents")


def has_vocab(directory: str | Path) -> bool:
    """Whether a checkpoint directory holds a vocabulary (vocab.txt, or a WordPiece tokenizer.json)."""
    return (Path(directory) / "vocab.txt").is_file() or (Path(directory) / "tokenizer.json").is_file()


def vocab_from_tokenizer_json(path: Path) -> dict[str, int]:
    """The WordPiece vocabulary of a Hugging Face `tokenizer.json`."""
    try:
        model = json.loads(path.read_text(encoding="utf-8"))["model"]
        vocab = model["vocab"] if model.get("type") == "WordPiece" else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise BertkitError(f"{path}: cannot read the tokenizer: {e}") from None
    if not isinstance(vocab, dict) or not vocab:
        raise BertkitError(f"{path}: not a WordPiece tokenizer (BERT needs one)")
    return require_special_tokens({str(t): int(i) for t, i in vocab.items()}, path)


def _check_text(text, index: int) -> str:
    if not isinstance(text, str):
        raise BertkitError(f"input {index}: expected a string, got {type(text).__name__}")
    return text


def write_vocab(tokens: Sequence[str], path: str | Path) -> None:
    Path(path).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


def train_vocab(
    files: Sequence[str | Path],
    size: int = 30000,
    lowercase: bool = True,
    min_frequency: int = 2,
    limit_alphabet: int = 1000,
    errors: str = "strict",
) -> list[str]:
    """Train a WordPiece vocabulary on text files; returns the tokens in id order.

    The special tokens come first: [PAD] is id 0, then [UNK], [CLS], [SEP], [MASK]. The
    pre-tokenization is BERT's own, so the vocabulary matches how it will be used. On a small
    corpus the trainer may stop below `size`: it never invents pieces no word needs.
    """
    if size < len(SPECIAL_TOKENS) + 1:
        raise BertkitError(f"--size {size} is too small for a vocabulary")
    if not files:
        raise BertkitError("no input files given")
    backend = Tokenizer(models.WordPiece(unk_token=UNK))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        limit_alphabet=limit_alphabet,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    n_lines = 0

    def lines():
        nonlocal n_lines
        for f in files:
            for line in iter_lines(f, errors=errors):
                if line.strip():
                    n_lines += 1
                    yield line

    backend.train_from_iterator(lines(), trainer=trainer)
    if n_lines == 0:
        raise BertkitError(f"no text found in {', '.join(map(str, files))}")
    vocab = backend.get_vocab()
    return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
