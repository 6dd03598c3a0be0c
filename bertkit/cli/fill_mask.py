"""`bertkit fill-mask`: the most likely tokens for each [MASK] in a text, from a checkpoint's masked-LM head."""

from .options import add_device_arguments


def add_arguments(p):
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts with [MASK] tokens (or --file, or standard input)")
    p.add_argument("--model", required=True,
                   help="a checkpoint with the masked-LM head (a pretraining checkpoint, e.g. `bertkit pretrain`'s final/)")
    p.add_argument("--file", metavar="F", help="one text per line ('-' for standard input)")
    p.add_argument("--top-k", type=int, default=5, help="predictions per [MASK] (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--errors", choices=("strict", "replace"), default="strict", help="what to do with invalid UTF-8 in --file")
    add_device_arguments(p)


def run(args):
    import json
    import sys

    from ..pretrained import load
    from ..device import resolve_device, resolve_precision
    from ..errors import BertkitError
    from ..inference.fill_mask import as_records, fill_mask
    from ..textio import iter_lines

    if args.texts and args.file:
        raise BertkitError("give texts as arguments or --file, not both")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    if args.texts:
        texts = args.texts
    else:
        texts = [line for line in iter_lines(args.file or "-", errors=args.errors) if line.strip()]
    for i, text in enumerate(texts, 1):
        if "[MASK]" not in text:
            raise BertkitError(f"{'input' if args.texts else (args.file or 'stdin') + ' line'} {i}: no [MASK] token in {text[:60]!r}")
    model = load(args.model, head="pretraining", device=device)
    results = fill_mask(model, texts, top_k=args.top_k, batch_size=args.batch_size, precision=precision)
    for text, masks in zip(texts, results):
        print(json.dumps({"text": text, "masks": as_records(masks)}, ensure_ascii=False))
    sys.stdout.flush()
