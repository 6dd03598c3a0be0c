"""`bertkit tokenize`: text lines in, one JSON object per line out."""



def add_arguments(p):
    p.add_argument("--model", required=True, help="checkpoint directory or model name (its vocab.txt is used), or a vocab.txt")
    p.add_argument("--pair", action="store_true", help="each line holds two texts separated by a tab")
    p.add_argument("--max-len", type=int, default=512, help="truncate longer inputs (longest first for pairs)")
    p.add_argument("--input", default="-", metavar="FILE", help="read lines from FILE instead of standard input")
    p.add_argument("--cased", action="store_true", help="with a bare vocab.txt: keep case (default uncased)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help="what to do with invalid UTF-8")


def load_tokenizer(name: str, cased: bool = False):
    """A tokenizer from a vocab.txt path or from a checkpoint's directory (without loading weights)."""
    from pathlib import Path

    from ..pretrained import resolve
    from ..tokenizer import BertTokenizer

    if Path(name).is_file():
        return BertTokenizer(name, lowercase=not cased)
    return BertTokenizer.from_dir(resolve(name))


def run(args):
    import json
    import sys
    import warnings
    from itertools import islice

    from ..errors import BertkitError
    from ..textio import iter_lines
    from ..tokenizer import TruncationWarning

    tok = load_tokenizer(args.model, args.cased)
    source = "<stdin>" if args.input == "-" else args.input
    lines = enumerate(iter_lines(args.input, errors=args.errors), start=1)
    warnings.simplefilter("ignore", TruncationWarning)  # counted here and said once at the end
    n_lines = n_truncated = 0
    while chunk := list(islice(lines, 2048)):
        if args.pair:
            firsts, seconds = [], []
            for lineno, line in chunk:
                if "\t" not in line:
                    raise BertkitError(f"{source}:{lineno}: --pair needs two texts separated by a tab")
                a, b = line.split("\t", 1)
                firsts.append(a)
                seconds.append(b)
            encodings = tok.encode_batch(firsts, seconds, max_len=args.max_len)
        else:
            encodings = tok.encode_batch([line for _, line in chunk], max_len=args.max_len)
        sys.stdout.write("".join(
            json.dumps({"tokens": e.tokens, "ids": e.ids, "segment_ids": e.segment_ids}, ensure_ascii=False) + "\n"
            for e in encodings
        ))
        n_lines += len(encodings)
        n_truncated += sum(e.truncated for e in encodings)
    if n_truncated:
        print(f"bertkit: note: {n_truncated} of {n_lines} inputs were longer than --max-len {args.max_len} "
              "tokens and were truncated", file=sys.stderr)
