"""`bertkit pretrain-data`: a corpus -> masked-LM + next-sentence pretraining shards (.npz) and stats.json."""

from __future__ import annotations

import argparse
from pathlib import Path

NAMED_CORPORA = ("wiki-sample", "wiki-sample:train", "wiki-sample:heldout")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="corpus files or glob patterns (quoted ones too, as GluonNLP's --input_file takes them), or the "
                        "embedded corpus wiki-sample (wiki-sample:heldout for its held-out part)")
    p.add_argument("--vocab", required=True, metavar="VOCAB",
                   help="vocab.txt, a directory holding vocab.txt (and tokenizer_config.json for the casing), a model "
                        "name (its vocabulary), or a GluonNLP vocabulary name such as book_corpus_wiki_en_uncased")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for shard-*.npz and stats.json")
    p.add_argument("--format", choices=("auto", "wikitext", "docs", "text"), default="auto",
                   help="wikitext: ' = Title = ' starts a document, one paragraph per line; docs: one sentence per "
                        "line, blank lines between documents (Google's layout); text: one paragraph per line, blank "
                        "lines between documents; auto (default): wikitext for .tokens/.raw files, docs otherwise")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per instance, [CLS]/[SEP] included (128)")
    p.add_argument("--max-predictions-per-seq", type=int, default=20, help="most masked positions per instance (20)")
    p.add_argument("--masked-lm-prob", type=float, default=0.15, help="share of tokens to predict (0.15)")
    p.add_argument("--dupe-factor", type=int, default=5, help="passes over the corpus, each with new pairs and masks (5)")
    p.add_argument("--short-seq-prob", type=float, default=0.1,
                   help="probability that a document's target length is drawn shorter (0.1)")
    p.add_argument("--whole-word-mask", action="store_true", help="mask all WordPiece pieces of a word together")
    p.add_argument("--dynamic-masking", action="store_true",
                   help="write unmasked shards; the loader masks every batch afresh each epoch")
    p.add_argument("--no-nsp", action="store_true",
                   help="no next-sentence pairs: single segments of whole sentences up to --max-seq-length, for "
                        "masked-LM-only pretraining (as RoBERTa trains)")
    p.add_argument("--seed", type=int, default=12345, help="random seed; the output depends on it, not on --workers (12345)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    p.add_argument("--chunk-mb", type=float, default=1.0,
                   help="MB of text per chunk: a chunk is one shard and the window a random next sentence is drawn "
                        "from; memory grows with it, not with the corpus (1.0)")
    case = p.add_mutually_exclusive_group()
    case.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                      help="lower-case and strip accents (default: from the vocab's tokenizer_config.json, else yes)")
    case.add_argument("--cased", dest="lowercase", action="store_false", help="keep case and accents")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: stop with file and line (strict) or replace it")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is shown only on a terminal anyway)")


def resolve_vocab(arg: str) -> tuple[Path, bool | None, bool | None]:
    """(vocab.txt path, lowercase, strip_accents) with the casing from tokenizer_config.json if present."""
    from ..tokenizer import saved_casing

    path = Path(arg).expanduser()
    if not path.exists() and path.suffix != ".txt" and not arg.startswith((".", "/", "~")):
        path = _named_vocabulary(arg)  # a model or vocabulary name, not a path
    vocab = path / "vocab.txt" if path.is_dir() else path
    return (vocab, *saved_casing(vocab.parent))


def _named_vocabulary(name: str) -> Path:
    """The checkpoint directory whose vocabulary a name stands for: a model name (zoo, Hub id, cache), or a
    GluonNLP vocabulary name (the vocabulary of the first zoo model trained on that dataset)."""
    from ..pretrained import resolve
    from ..errors import BertkitError
    from ..zoo.names import ZOO

    datasets = [entry.name for entry in ZOO.values() if entry.name.endswith("/" + name)]
    try:
        return resolve(datasets[0] if datasets else name)
    except BertkitError as e:
        raise BertkitError(f"--vocab {name}: not a file or directory, and no model or vocabulary of that name ({e})") from None


def _expand_globs(names: list[str]) -> list[str]:
    """Each pattern (`*`, `?`, `[`) as the sorted files it matches; other names as given."""
    import glob

    from ..errors import BertkitError

    out = []
    for name in names:
        if not Path(name).exists() and any(c in name for c in "*?["):
            matched = sorted(glob.glob(name))
            if not matched:
                raise BertkitError(f"--input {name}: the pattern matches no file")
            out += matched
        else:
            out.append(name)
    return out


def resolve_inputs(names: list[str], fmt: str):
    from ..data.corpus import detect_format
    from ..data.pretraining import CorpusFile

    files = []
    for name in _expand_globs(names):
        if name in NAMED_CORPORA and not Path(name).exists():
            from ..data.wiki_sample import wiki_sample_paths

            paths = wiki_sample_paths()
            files.append(CorpusFile(str(paths.heldout if name.endswith(":heldout") else paths.train), "docs"))
        else:
            files.append(CorpusFile(name, detect_format(name) if fmt == "auto" else fmt))
    return files


def run(args) -> int:
    from ..data.pretraining import PretrainingConfig, create_pretraining_data, summary

    vocab, config_lowercase, strip_accents = resolve_vocab(args.vocab)
    lowercase = args.lowercase if args.lowercase is not None else (True if config_lowercase is None else config_lowercase)
    if args.lowercase is not None:
        strip_accents = None  # an explicit casing flag means BERT's usual pairing of case and accents
    config = PretrainingConfig(
        max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq,
        masked_lm_prob=args.masked_lm_prob,
        dupe_factor=args.dupe_factor,
        short_seq_prob=args.short_seq_prob,
        whole_word_mask=args.whole_word_mask,
        dynamic_masking=args.dynamic_masking, nsp=not args.no_nsp,
        seed=args.seed,
        chunk_mb=args.chunk_mb,
    )
    config.validate()  # before building wiki-sample, so a bad flag fails at once
    stats = create_pretraining_data(
        resolve_inputs(args.input, args.format), vocab, args.out, config,
        lowercase=lowercase, strip_accents=strip_accents, workers=args.workers, errors=args.errors,
        overwrite=args.overwrite, progress=False if args.no_progress else None,
    )
    print(summary(stats, args.out))
    return 0
