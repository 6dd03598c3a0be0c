"""`bertkit vocab`: train a WordPiece vocabulary from text files."""



def add_arguments(p):
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="UTF-8 text files")
    p.add_argument("--size", type=int, default=30000, help="target vocabulary size (default 30000)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for vocab.txt and tokenizer_config.json")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: uncased, as BERT-base-uncased)")
    p.add_argument("--min-frequency", type=int, default=2, help="drop pieces seen fewer times (default 2)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: stop with file and line (strict) or replace it")


def run(args):
    import time

    from ..tokenizer import BertTokenizer, train_vocab

    start = time.perf_counter()
    tokens = train_vocab(args.input, size=args.size, lowercase=not args.cased,
                         min_frequency=args.min_frequency, errors=args.errors)
    tok = BertTokenizer({t: i for i, t in enumerate(tokens)}, lowercase=not args.cased)
    tok.save(args.out)
    note = "" if len(tokens) >= args.size else f" (the corpus supports no more than {len(tokens)} at min frequency {args.min_frequency})"
    print(f"wrote {args.out}/vocab.txt: {len(tokens)} tokens{note}, "
          f"{'cased' if args.cased else 'uncased'}, in {time.perf_counter() - start:.1f}s")
