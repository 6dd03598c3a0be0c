"""`bertkit embed`: token, word or sentence vectors as JSON lines or a .npy matrix."""


from .options import add_device_arguments

CHUNK = 4096  # lines encoded at a time from --file: memory stays flat on big files


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
    p.add_argument("--out", metavar="F", help="output file (default standard output; required for npy)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=512, help="truncate longer sentences to this many tokens")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help="what to do with invalid UTF-8 in --file")
    add_device_arguments(p)  # vectors are written as float32 whatever the precision


def run(args):
    import json
    import sys
    import warnings
    from itertools import islice

    import numpy as np
    from tqdm import tqdm

    from ..device import resolve_device, resolve_precision
    from ..inference.embedding import BertEmbedding
    from ..errors import BertkitError
    from ..textio import iter_lines
    from ..tokenizer import TruncationWarning

    if args.format == "npy" and args.pooling == "none":
        raise BertkitError("--format npy holds one vector per sentence: use --pooling cls or mean (or --format jsonl)")
    if args.words and (args.pooling != "none" or args.format != "jsonl"):
        raise BertkitError("--words gives a vector per word as JSON lines: it goes with neither --pooling nor --format npy")
    if args.format == "npy" and not args.out:
        raise BertkitError("--format npy needs --out FILE.npy")
    if args.batch_size < 1:
        raise BertkitError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = resolve_device(args.device)  # a device or precision this machine lacks: one line, nothing written
    precision = resolve_precision(args.precision, device)
    emb = BertEmbedding(args.model, max_len=args.max_len, batch_size=args.batch_size, device=device, precision=precision)
    lines = iter(args.sentences) if args.sentences else iter_lines(args.file, errors=args.errors)
    out = open(args.out, "w", encoding="utf-8") if args.out and args.format == "jsonl" else sys.stdout
    # A progress bar only for a person watching: piped stderr stays clean (one-line errors and notes).
    bar = tqdm(desc="embedding", unit=" sentences", disable=not args.file or not sys.stderr.isatty(), file=sys.stderr)
    matrices, n_total = [], 0
    warnings.simplefilter("ignore", TruncationWarning)  # counted here and said once at the end
    try:
        while chunk := list(islice(lines, CHUNK)):
            n_total += len(chunk)
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
            bar.update(len(chunk))
    finally:
        bar.close()
        if out is not sys.stdout:
            out.close()
    if args.format == "npy":
        hidden = emb.model.config.hidden_size
        np.save(args.out, np.concatenate(matrices) if matrices else np.zeros((0, hidden), np.float32))
    if emb.n_truncated:
        print(f"bertkit: note: {emb.n_truncated} of {n_total} sentences were longer than --max-len {emb.max_len} "
              "tokens and were truncated", file=sys.stderr)
    if args.out:
        what = "word-vector rows" if args.words else "token-vector rows" if args.pooling == "none" else "sentence vectors"
        print(f"wrote {n_total} {what} to {args.out}",
              file=sys.stderr)
