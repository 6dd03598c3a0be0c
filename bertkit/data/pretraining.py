"""`bertkit pretrain-data` as a function: corpus files in, shards and `stats.json` out.

The corpus streams through in chunks of whole documents (about `chunk_mb` MB of text each). The
main process only reads lines and cuts them into documents and chunks; each chunk then goes to a
worker that splits sentences, tokenizes, builds pairs, masks and writes the chunk's shard
(`shard-<chunk index>.npz`). So:

- peak memory depends on the chunk size and the number of workers, never on the corpus size (at
  most `2 * workers` chunks are in flight);
- every chunk has its own random generators, seeded from (`seed`, chunk index), so the output is
  the same whatever `workers` is, and a chunk's shard is the same whichever process wrote it;
- the "random next sentence" comes from another document of the same chunk (see `instances.py`),
  and instances are shuffled within their shard; the loader shuffles across shards.
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import BertkitError
from .corpus import FORMATS, check_has_text, document_sentences, iter_documents
from .instances import TokenizedChunk, assemble, create_pairs, create_segments, truncate_pairs
from .masking import MaskingVocab, mask_tokens
from .wordcache import WordCacheTokenizer
from .shards import FORMAT_NAME, FORMAT_VERSION, NO_NSP_LABEL, SHARD_PATTERN, STATS_FILE, shard_name, write_shard, write_stats


@dataclass(frozen=True)
class PretrainingConfig:
    """The settings that decide the instances (Google's flag names and defaults, bar dupe_factor)."""

    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    dupe_factor: int = 5
    short_seq_prob: float = 0.1
    whole_word_mask: bool = False
    dynamic_masking: bool = False
    nsp: bool = True  # False (--no-nsp): single full-length segments, masked LM only (RoBERTa's setting)
    seed: int = 12345
    chunk_mb: float = 1.0

    def validate(self) -> None:
        if self.max_seq_length < 5:
            raise BertkitError(
                f"--max-seq-length {self.max_seq_length} is too small for a pair: "
                "[CLS] A [SEP] B [SEP] needs at least 5 tokens"
            )
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise BertkitError(f"--masked-lm-prob {self.masked_lm_prob} must be between 0 and 1 (exclusive)")
        if self.max_predictions_per_seq < 1:
            raise BertkitError(f"--max-predictions-per-seq {self.max_predictions_per_seq} must be at least 1")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise BertkitError(f"--short-seq-prob {self.short_seq_prob} must be between 0 and 1")
        if self.dupe_factor < 1:
            raise BertkitError(f"--dupe-factor {self.dupe_factor} must be at least 1")
        if not self.chunk_mb > 0:
            raise BertkitError(f"--chunk-mb {self.chunk_mb} must be positive")


@dataclass(frozen=True)
class CorpusFile:
    path: str
    format: str  # one of corpus.FORMATS


# ---- one chunk (runs in a worker) -----------------------------------------------------------------

_worker: dict = {}


def _init_worker(vocab: dict[str, int], lowercase: bool, strip_accents: bool | None, config: PretrainingConfig,
                 out_dir: str, single_thread: bool) -> None:
    if single_thread:
        # N worker processes already use the N cores; the tokenizer's own thread pool would only
        # oversubscribe them. Must be set before the tokenizer first runs in this process.
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
    from ..tokenizer import BertTokenizer

    _worker.update(
        tokenizer=WordCacheTokenizer(BertTokenizer(vocab, lowercase=lowercase, strip_accents=strip_accents)),
        masking=MaskingVocab.from_vocab(vocab),
        config=config,
        out_dir=Path(out_dir),
    )


def tokenize_documents(documents: list[list[str]], fmt: str, tokenizer: WordCacheTokenizer) -> TokenizedChunk:
    """Split into sentences and tokenize; sentences with no tokens and empty documents are dropped."""
    sentences_per_doc = [document_sentences(lines, fmt) for lines in documents]
    tokens, lengths = tokenizer.tokenize_flat(list(itertools.chain.from_iterable(sentences_per_doc)))
    lengths = lengths.tolist()
    doc_bounds: list[list[int]] = []
    offset = 0
    k = 0
    for doc in sentences_per_doc:
        bounds = [offset]
        for length in lengths[k : k + len(doc)]:
            if length:
                offset += length
                bounds.append(offset)
        k += len(doc)
        if len(bounds) > 1:
            doc_bounds.append(bounds)
    return TokenizedChunk(tokens, doc_bounds)


def chunk_seeds(seed: int, index: int) -> tuple[random.Random, np.random.Generator]:
    """The two generators of one chunk: Python's for the pairing loop (fast scalar draws), numpy's
    for the vectorised truncation, shuffling and masking."""
    seq = np.random.SeedSequence([seed, index])
    a, b = seq.generate_state(2, dtype=np.uint32)
    return random.Random(int(a) << 32 | int(b)), np.random.default_rng(seq)


def make_chunk_arrays(chunk: TokenizedChunk, index: int, config: PretrainingConfig, masking: MaskingVocab):
    """The shard arrays of one chunk plus its counts (no file written)."""
    py_rng, np_rng = chunk_seeds(config.seed, index)
    make = create_pairs if config.nsp else create_segments
    spans = make(chunk, config.max_seq_length, config.short_seq_prob, config.dupe_factor, py_rng)
    counts = {
        "documents": len(chunk.doc_bounds),
        "documents_with_pairs": sum(len(b) > 2 for b in chunk.doc_bounds),
        "sentences": chunk.num_sentences,
        "corpus_tokens": int(len(chunk.tokens)),
        "instances": len(spans),
        "random_next": int(spans.is_random_next.sum()),
        "random_next_forced": int(spans.forced_random.sum()),
        "short_target_draws": spans.short_targets_drawn,
        "target_draws": spans.documents_drawn,
        "tokens": 0,
        "masked": 0,
    }
    if not len(spans):
        return None, counts
    truncate_pairs(spans, config.max_seq_length - (3 if config.nsp else 2), np_rng)
    ids, segment_ids, valid_lengths = assemble(
        chunk.tokens, spans, config.max_seq_length, masking.cls_id, masking.sep_id, pairs=config.nsp
    )
    order = np_rng.permutation(len(spans))  # shuffle within the shard, as Google shuffles its output
    arrays = {
        "input_ids": ids[order],
        "segment_ids": segment_ids[order],
        "valid_lengths": valid_lengths[order],
        # -1: no next-sentence label (--no-nsp; the pretraining loop then trains the masked LM alone)
        "next_sentence_labels": spans.is_random_next[order].astype(np.int32) if config.nsp
        else np.full(len(order), NO_NSP_LABEL, dtype=np.int32),
    }
    if not config.dynamic_masking:
        masked = mask_tokens(
            arrays["input_ids"], arrays["valid_lengths"], masking, np_rng,
            config.masked_lm_prob, config.max_predictions_per_seq, config.whole_word_mask,
        )
        arrays["input_ids"] = masked.input_ids
        arrays["masked_lm_positions"] = masked.positions
        arrays["masked_lm_ids"] = masked.labels
        arrays["masked_lm_weights"] = masked.weights
        counts["masked"] = int(masked.weights.sum())
    # GluonNLP's key order
    keys = ("input_ids", "segment_ids", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
            "next_sentence_labels", "valid_lengths")
    arrays = {k: arrays[k] for k in keys if k in arrays}
    counts["tokens"] = int(valid_lengths.sum())
    return arrays, counts


def process_chunk(index: int, fmt: str, documents: list[list[str]]) -> dict:
    """Tokenize, pair, mask and write one chunk's shard; returns its counts."""
    w = _worker
    chunk = tokenize_documents(documents, fmt, w["tokenizer"])
    arrays, counts = make_chunk_arrays(chunk, index, w["config"], w["masking"])
    counts["shard"] = None
    if arrays is not None:
        name = shard_name(index)
        write_shard(w["out_dir"] / name, arrays)
        counts["shard"] = name
    return counts


# ---- the corpus stream (main process) -------------------------------------------------------------


def iter_chunks(files: list[CorpusFile], chunk_chars: int, errors: str) -> Iterator[tuple[int, str, list[list[str]]]]:
    """(index, format, documents) of about `chunk_chars` characters each; a chunk never spans files."""
    index = 0
    for f in files:
        docs: list[list[str]] = []
        size = 0
        for doc in iter_documents(f.path, f.format, errors=errors):
            docs.append(doc)
            size += sum(map(len, doc))
            if size >= chunk_chars:
                yield index, f.format, docs
                index += 1
                docs, size = [], 0
        if docs:
            yield index, f.format, docs
            index += 1


def _run_chunks(chunks, workers: int, init_args: tuple) -> Iterator[dict]:
    """Process chunks in order; with several workers at most 2 * workers chunks are in flight."""
    if workers <= 1:
        _init_worker(*init_args, single_thread=False)
        for index, fmt, docs in chunks:
            yield process_chunk(index, fmt, docs)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    # If this process already ran a tokenizer (a demo, a notebook), the tokenizers library warns in
    # every forked child unless TOKENIZERS_PARALLELISM is set; the workers run single-threaded anyway.
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(*init_args, True))
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    with pool:
        pending: collections.deque = collections.deque()
        for index, fmt, docs in chunks:
            pending.append(pool.apply_async(process_chunk, (index, fmt, docs)))
            while len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with earlier shards unless told to replace them."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BertkitError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir():
        old = sorted(out_dir.glob("*.npz")) + sorted(out_dir.glob(STATS_FILE))
        if old and not overwrite:
            raise BertkitError(f"{out_dir}: already holds pretraining shards ({old[0].name}); pass --overwrite to replace them")
        for path in old:
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _remove_partial_output(out_dir: Path) -> None:
    for path in itertools.chain(out_dir.glob(SHARD_PATTERN), out_dir.glob("*.tmp")):
        path.unlink(missing_ok=True)


def _check_options(files: list[CorpusFile], config: PretrainingConfig, workers: int, errors: str) -> None:
    """Settings that are wrong whatever the files hold."""
    config.validate()
    if workers < 1:
        raise BertkitError(f"--workers {workers} must be at least 1")
    if errors not in ("strict", "replace"):
        raise BertkitError(f"--errors {errors!r} must be strict or replace")
    if not files:
        raise BertkitError("no input files given")


def _check_inputs(files: list[CorpusFile], errors: str) -> None:
    """Every file in a known format, with some text in it."""
    for f in files:
        if f.format not in FORMATS:
            raise BertkitError(f"unknown corpus format {f.format!r} (expected one of {', '.join(FORMATS)})")
        check_has_text(f.path, errors=errors)


def _check_pairs(totals: collections.Counter, files: list[CorpusFile]) -> None:
    if totals["documents_with_pairs"] == 0:
        names = ", ".join(str(f.path) for f in files)
        raise BertkitError(
            f"{names}: no document has two or more sentences, so there is nothing to pair for "
            "next-sentence prediction (separate documents with blank lines and put one sentence per "
            "line, or pick the right --format)"
        )


def _write_shards(files: list[CorpusFile], config: PretrainingConfig, workers: int, errors: str,
                  init_args: tuple, out_dir: Path, progress: bool | None) -> tuple[collections.Counter, list[dict], float]:
    """Run every chunk with a progress bar; returns the summed counts, the shard list and the seconds
    taken. On any failure (Ctrl-C included) the shards written so far are removed."""
    from tqdm import tqdm

    totals = collections.Counter()
    shards = []
    start = time.perf_counter()
    bar = tqdm(unit=" doc", file=sys.stderr, disable=None if progress is None else not progress,
               desc="pretrain-data", dynamic_ncols=True)
    try:
        chunks = iter_chunks(files, int(config.chunk_mb * 1_000_000), errors)
        for counts in _run_chunks(chunks, workers, init_args):
            if counts["shard"]:
                shards.append({"file": counts["shard"], "instances": counts["instances"]})
            totals.update({k: v for k, v in counts.items() if k != "shard"})
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.update(counts["documents"])
            bar.set_postfix_str(f"{totals['tokens'] / elapsed / 1e6:.2f}M tok/s, {totals['instances']} instances")
        _check_pairs(totals, files)
    except BaseException:
        bar.close()
        _remove_partial_output(out_dir)
        raise
    bar.close()
    return totals, shards, time.perf_counter() - start


def _stats(totals: collections.Counter, shards: list[dict], elapsed: float, config: PretrainingConfig,
           settings: dict) -> dict:
    """stats.json's content (`settings`: the inputs and options besides `config`'s)."""
    n = totals["instances"]
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "documents": totals["documents"],
        "documents_with_pairs": totals["documents_with_pairs"],
        "sentences": totals["sentences"],
        "corpus_tokens": totals["corpus_tokens"],
        "instances": n,
        "tokens": totals["tokens"],
        "padding_share": round(1.0 - totals["tokens"] / (n * config.max_seq_length), 4),
        "mean_tokens_per_instance": round(totals["tokens"] / n, 2),
        "masked_positions": None if config.dynamic_masking else totals["masked"],
        "mean_masked_per_instance": None if config.dynamic_masking else round(totals["masked"] / n, 3),
        "random_next_share": round(totals["random_next"] / n, 4) if config.nsp else None,
        # Google's rule: a chunk of one sentence always gets a random B (no coin flip); these raise
        # random_next_share above 0.5, mostly in documents that drew a short target
        "random_next_forced_share": round(totals["random_next_forced"] / n, 4) if config.nsp else None,
        "short_target_share": round(totals["short_target_draws"] / max(totals["target_draws"], 1), 4),
        "time_s": round(elapsed, 2),
        "tokens_per_s": round(totals["tokens"] / elapsed),
        "dynamic_masking": config.dynamic_masking,
        "settings": {**asdict(config), **settings},
        "shards": shards,
    }


def create_pretraining_data(
    files: list[CorpusFile],
    vocab_path: str | Path,
    out_dir: str | Path,
    config: PretrainingConfig = PretrainingConfig(),
    lowercase: bool = True,
    strip_accents: bool | None = None,
    workers: int = 1,
    errors: str = "strict",
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Write `out_dir/shard-*.npz` and `out_dir/stats.json`; returns the stats.

    `progress`: a tqdm bar on stderr (None: only when stderr is a terminal).
    """
    from ..tokenizer import load_vocab

    _check_options(files, config, workers, errors)
    vocab_path = Path(vocab_path)
    vocab = load_vocab(vocab_path)
    masking = MaskingVocab.from_vocab(vocab, source=str(vocab_path))
    _check_inputs(files, errors)
    out_dir = Path(out_dir)
    prepare_output_dir(out_dir, overwrite)
    shutil.copyfile(vocab_path, out_dir / "vocab.txt")  # the loader's dynamic masking needs it

    init_args = (vocab, lowercase, strip_accents, config, str(out_dir))
    totals, shards, elapsed = _write_shards(files, config, workers, errors, init_args, out_dir, progress)
    settings = {
        "inputs": [asdict(f) for f in files],
        "vocab": str(vocab_path),
        "vocab_size": masking.size,
        "lowercase": lowercase,
        "strip_accents": strip_accents,
        "errors": errors,
        "workers": workers,
    }
    stats = _stats(totals, shards, elapsed, config, settings)
    write_stats(out_dir, stats)
    return stats


def summary(stats: dict, out_dir: str | Path) -> str:
    """A few human-readable lines for the CLI."""
    s = stats
    masked = (
        "dynamic masking (masks drawn at batch time)"
        if s["dynamic_masking"]
        else f"{s['mean_masked_per_instance']} masked per instance"
    )
    return "\n".join(
        [
            f"wrote {len(s['shards'])} shard(s) and {STATS_FILE} to {out_dir}",
            f"  {s['documents']} documents, {s['sentences']} sentences, {s['corpus_tokens']} corpus tokens",
            f"  {s['instances']} instances, {s['tokens']} tokens ({s['mean_tokens_per_instance']} per instance, "
            f"{100 * s['padding_share']:.1f}% padding), {masked}",
            (f"  random next: {100 * s['random_next_share']:.1f}% ({100 * s['random_next_forced_share']:.1f}% forced: "
             f"one-sentence chunks)" if s["random_next_share"] is not None else
             "  single segments, no next-sentence pairs (--no-nsp)")
            + f", short targets: {100 * s['short_target_share']:.1f}% of documents",
            f"  {s['time_s']} s, {s['tokens_per_s'] / 1e6:.2f}M tokens/s with {s['settings']['workers']} worker(s)",
        ]
    )


def stats_json(stats: dict) -> str:
    return json.dumps(stats, indent=2)
