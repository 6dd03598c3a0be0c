"""`bertkit embed`: token, word or sentence vectors as JSON lines or a .npy matrix.

With `--part-lines N`, or under `torchrun --nproc-per-node N` (WORLD_SIZE > 1), `--out` is a
directory of parts of a --file, each rank writing its own, resumable part by part
(bertkit/inference/embed_parts.py). Otherwise one process writes one file, as it always did.
"""


from .options import add_device_arguments, add_quantize_argument

CHUNK = 4096  # lines encoded at a time from --file: memory stays flat on big files
PART_LINES = 25 * CHUNK  # parts start on chunk boundaries: batched exactly as a one-process run batches them


def add_arguments(p):
    p.add_argument("--model", default="all-minilm-l6-v2", help="checkpoint directory or model name (default all-minilm-l6-v2)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sentences", nargs="+", metavar="S", help="sentences given on the command line")
    src.add_argument("--file", metavar="F", help="one sentence per line ('-' for standard input)")
    p.add_argument("--pooling", choices=("none", "cls", "mean", "auto"), default="none",
                   help="none: a vector per WordPiece token; cls / mean: one vector per sentence; auto: the "
                        "checkpoint's sentence-transformers recipe (e.g. mean + L2 normalisation), else mean")
    p.add_argument("--words", choices=("avg", "sum", "last"),
                   help="one vector per word instead of per WordPiece: the average, sum or last of its pieces' "
                        "vectors, [CLS]/[SEP] left out; JSON lines {text, words, offsets, vectors}")
    p.add_argument("--format", choices=("jsonl", "npy"), default="jsonl", help="npy: an (N, H) float32 matrix, sentence pooling only")
    p.add_argument("--out", metavar="F", help="output file (default standard output; required for npy); a directory of parts with "
                                                 "--part-lines or under torchrun")
    p.add_argument("--part-lines", type=int, metavar="N",
                   help=f"write --out DIR as parts of N lines of --file (part-00000.npy ..., then index.json); a rerun "
                        f"computes only the missing parts. Always on under torchrun (default {PART_LINES} there)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=512, help="truncate longer sentences to this many tokens")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help="what to do with invalid UTF-8 in --file")
    add_device_arguments(p)  # vectors are written as float32 whatever the precision
    add_quantize_argument(p)


def run(args):
    import sys
    import warnings
    from itertools import islice

    import numpy as np
    from tqdm import tqdm

    from ..device import resolve_precision
    from ..errors import BertkitError
    from ..inference.embedding import BertEmbedding
    from ..textio import iter_lines
    from ..tokenizer import TruncationWarning
    from ..train.distributed import launch_env, rank_device

    if args.format == "npy" and args.pooling == "none":
        raise BertkitError("--format npy holds one vector per sentence: use --pooling cls or mean (or --format jsonl)")
    if args.words and (args.pooling != "none" or args.format != "jsonl"):
        raise BertkitError("--words gives a vector per word as JSON lines: it goes with neither --pooling nor --format npy")
    if args.format == "npy" and not args.out:
        raise BertkitError("--format npy needs --out FILE.npy")
    if args.batch_size < 1:
        raise BertkitError(f"--batch-size must be at least 1, got {args.batch_size}")
    rank, world_size, local_rank = launch_env()
    # a device or precision this machine lacks: one line, nothing written
    device = rank_device(args.device, local_rank, world_size)
    precision = resolve_precision(args.precision, device)
    if args.part_lines is not None or world_size > 1:
        return _run_parts(args, device, precision, rank, world_size)
    emb = BertEmbedding(args.model, max_len=args.max_len, batch_size=args.batch_size, device=device, precision=precision,
                        quantize=args.quantize)
    lines = iter(args.sentences) if args.sentences else iter_lines(args.file, errors=args.errors)
    out = open(args.out, "w", encoding="utf-8") if args.out and args.format == "jsonl" else sys.stdout
    # A progress bar only for a person watching: piped stderr stays clean (one-line errors and notes).
    bar = tqdm(desc="embedding", unit=" sentences", disable=not args.file or not sys.stderr.isatty(), file=sys.stderr)
    matrices, n_total = [], 0
    warnings.simplefilter("ignore", TruncationWarning)  # counted here and said once at the end
    try:
        while chunk := list(islice(lines, CHUNK)):
            n_total += len(chunk)
            _embed_chunk(emb, args, chunk, out, matrices)
            bar.update(len(chunk))
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
    if args.format == "npy":
        hidden = emb.model.config.hidden_size
        np.save(args.out, np.concatenate(matrices) if matrices else np.zeros((0, hidden), np.float32))
    _truncation_note(emb, n_total)
    if args.out:
        print(f"wrote {n_total} {_what(args)} to {args.out}", file=sys.stderr)


def _what(args) -> str:
    return "word-vector rows" if args.words else "token-vector rows" if args.pooling == "none" else "sentence vectors"


def _truncation_note(emb, n_total: int, prefix: str = "") -> None:
    import sys

    if emb.n_truncated:
        print(f"bertkit: note: {prefix}{emb.n_truncated} of {n_total} sentences were longer than --max-len "
              f"{emb.max_len} tokens and were truncated", file=sys.stderr)


def _embed_chunk(emb, args, chunk: list[str], out, matrices: list) -> None:
    """Write the rows of `chunk` to `out` as JSON lines, or (--format npy) append its (n, H) matrix to `matrices`."""
    import json

    import numpy as np

    if args.words:
        for text, (words, offsets, vectors) in zip(chunk, emb.word_vectors(chunk, args.words)):
            out.write(json.dumps({"text": text, "words": words, "offsets": offsets,
                                  "vectors": np.round(vectors, 6).tolist()}) + "\n")
    elif args.pooling == "none":
        for text, (tokens, vectors) in zip(chunk, emb(chunk)):
            out.write(json.dumps({"text": text, "tokens": tokens, "vectors": np.round(vectors, 6).tolist()}) + "\n")
    else:
        vectors = emb.sentence_vectors(chunk, pooling=args.pooling)
        if args.format == "npy":
            matrices.append(vectors)
        else:
            for text, v in zip(chunk, vectors):
                out.write(json.dumps({"text": text, "vector": np.round(v, 6).tolist()}) + "\n")


def _run_parts(args, device, precision: str, rank: int, world_size: int) -> None:
    """--out DIR as parts: this rank's missing parts, then the index if every part is there."""
    import sys
    import warnings
    from pathlib import Path

    from tqdm import tqdm

    from ..errors import BertkitError
    from ..inference.embed_parts import OwnedParts, check_settings, part_name, write_index_if_complete
    from ..inference.embedding import BertEmbedding
    from ..textio import iter_lines
    from ..tokenizer import TruncationWarning

    how = "under torchrun" if world_size > 1 else "--part-lines"
    if not args.file or args.file == "-":
        raise BertkitError(f"{how} embeds a --file in parts (every rank reads it): not --sentences or standard input")
    if not args.out:
        raise BertkitError(f"{how} writes parts to a directory: give --out DIR")
    part_lines = PART_LINES if args.part_lines is None else args.part_lines
    if part_lines < 1:
        raise BertkitError(f"--part-lines must be at least 1, got {part_lines}")
    next(iter_lines(args.file, errors=args.errors), None)  # a file that cannot be read: its one-line error first
    source = Path(args.file)
    settings = {"input": f"{source.resolve()} ({source.stat().st_size} bytes)", "model": str(args.model),
                "pooling": args.pooling, "words": args.words, "format": args.format, "max_len": args.max_len,
                "precision": precision, "part_lines": part_lines}
    directory = Path(args.out)
    check_settings(directory, settings)
    emb = BertEmbedding(args.model, max_len=args.max_len, batch_size=args.batch_size, device=device, precision=precision,
                        quantize=args.quantize)
    parts = OwnedParts(iter_lines(args.file, errors=args.errors), directory, args.format, part_lines, rank, world_size)
    bar = tqdm(desc="embedding", unit=" sentences", disable=rank != 0 or not sys.stderr.isatty(), file=sys.stderr)
    warnings.simplefilter("ignore", TruncationWarning)
    written = n_rows = 0
    try:
        for k, part in parts:
            _write_part(emb, args, part, directory / part_name(k, args.format), bar)
            written, n_rows = written + 1, n_rows + len(part)
    finally:
        bar.close()
    who = f"rank {rank}: " if world_size > 1 else ""
    _truncation_note(emb, n_rows, who)
    print(f"{who}wrote {written} part{'s' * (written != 1)} ({n_rows} {_what(args)}) to {directory}, {parts.skipped} "
          "of this rank's parts were already there", file=sys.stderr)
    if write_index_if_complete(directory, settings, parts.n_lines, emb.model.config.hidden_size):
        print(f"{who}all {parts.n_parts} parts ({parts.n_lines} rows) are in {directory}: wrote "
              f"{directory / 'index.json'}", file=sys.stderr)


def _write_part(emb, args, lines: list[str], path, bar) -> None:
    """Encode `lines` chunk by chunk (as a one-process run does) into `path`, all at once or not at all."""
    import numpy as np

    from ..inference.embed_parts import write_atomic

    matrices: list = []

    def write(f):
        for start in range(0, len(lines), CHUNK):
            _embed_chunk(emb, args, lines[start : start + CHUNK], f, matrices)
            bar.update(min(CHUNK, len(lines) - start))
        if args.format == "npy":
            np.save(f, np.concatenate(matrices))

    write_atomic(path, write, mode="wb" if args.format == "npy" else "w")
