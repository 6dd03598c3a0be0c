"""`bertkit predict`: the label (and its probability) or regression score of texts, or their entities, from a fine-tuned checkpoint."""

from .options import add_device_arguments, add_quantize_argument


def add_arguments(p):
    p.add_argument("--model", required=True, help="a fine-tuned checkpoint directory (from bertkit finetune, or transformers)")
    p.add_argument("texts", nargs="*", metavar="TEXT [TEXT_B]",
                   help="one text, or a pair of texts; for a token-classification (entity) model, any number of texts")
    p.add_argument("--file", metavar="F.tsv",
                   help="many inputs: a TSV with a header naming text (or sentence) and optionally text_b; "
                        "writes one JSON object {label, score} per row (an entity model reads plain text, one "
                        "text per line, and writes {entities} per line)")
    p.add_argument("--out", metavar="F", help="with --file: write the JSON lines here (default standard output)")
    p.add_argument("--max-len", type=int, help="tokens per input (default: the fine-tuning --max-len)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--question", help="question-answering checkpoint: the question (with --context)")
    p.add_argument("--context", help="question-answering checkpoint: the text holding the answer")
    add_device_arguments(p)
    add_quantize_argument(p)


def read_inputs(path):
    """(texts, texts_b or None) from a TSV with a header; errors name the file and line."""
    from ..errors import BertkitError
    from ..textio import iter_lines

    lines = iter_lines(path)
    header = next(lines, None)
    if header is None:
        raise BertkitError(f"{path}: file is empty (expected a header naming a 'text' column)")
    names = [n.strip().lower() for n in header.split("\t")]
    a = next((names.index(n) for n in ("text", "sentence", "text_a", "sentence1", "question", "#1 string") if n in names), None)
    b = next((names.index(n) for n in ("text_b", "sentence2", "#2 string") if n in names), None)
    if a is None:
        raise BertkitError(f"{path}:1: header must name a 'text' (or 'sentence') column; found: {header!r}")
    need = max(a, b if b is not None else 0) + 1
    texts, texts_b = [], []
    for lineno, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < need:
            raise BertkitError(f"{path}:{lineno}: malformed line: {len(fields)} tab-separated column(s), the header needs {need}")
        for col in (a, b):
            if col is not None and not fields[col].strip():
                raise BertkitError(f"{path}:{lineno}: empty text in column {names[col]!r}")
        texts.append(fields[a].strip())
        if b is not None:
            texts_b.append(fields[b].strip())
    if not texts:
        raise BertkitError(f"{path}: no rows after the header")
    return texts, (texts_b if b is not None else None)


def _answer(model, args, precision):
    """A question-answering checkpoint: one JSON object {text, start, end, score}."""
    import json

    from ..errors import BertkitError

    if type(model).__name__ != "BertForQuestionAnswering" or any(
            m.startswith("qa_outputs.") for m in model.load_report["missing"]):
        raise BertkitError(f"--model {args.model}: not a question-answering checkpoint; --question/--context need one")
    if args.question is None or args.context is None or args.texts or args.file:
        raise BertkitError("give both --question Q and --context C, and no TEXT or --file")
    from ..inference.answer import answer

    print(json.dumps(answer(model, args.question, args.context, precision=precision), ensure_ascii=False))
    return 0


def run(args):
    from ..cpu.optimize import for_inference
    from ..device import resolve_device, resolve_precision
    from ..errors import BertkitError
    from ..inference.predict import predict
    from ..pretrained import load

    device = resolve_device(args.device)  # a device or precision this machine lacks: one line, nothing written
    precision = resolve_precision(args.precision, device)
    if args.question is not None or args.context is not None:
        return _answer(for_inference(load(args.model), device, precision, args.quantize), args, precision)
    if args.file and args.texts:
        raise BertkitError("give either TEXT [TEXT_B] or --file, not both")
    if not args.file and not args.texts:
        raise BertkitError("give one TEXT, a pair TEXT TEXT_B, or --file F.tsv")
    model = for_inference(load(args.model), device, precision, args.quantize)
    if type(model).__name__ == "BertForQuestionAnswering":
        raise BertkitError(f"--model {args.model} answers questions: give --question Q --context C")
    if type(model).__name__ == "BertForTokenClassification":
        return predict_entities(model, args, precision)
    if not args.file and len(args.texts) > 2:
        raise BertkitError("give one TEXT, a pair TEXT TEXT_B, or --file F.tsv")
    if model.load_report.get("missing"):
        missing = [m for m in model.load_report["missing"] if m.startswith("classifier.")]
        if missing or type(model).__name__ != "BertForSequenceClassification":
            raise BertkitError(f"--model {args.model}: not a fine-tuned classification/regression checkpoint (no task head)")
    if type(model).__name__ != "BertForSequenceClassification":
        raise BertkitError(f"--model {args.model}: not a sequence classification/regression checkpoint")
    if args.file:
        texts, texts_b = read_inputs(args.file)
        write_json_lines(predict(model, texts, texts_b, max_len=args.max_len, batch_size=args.batch_size,
                                 precision=precision), args.out)
        return 0
    texts_b = [args.texts[1]] if len(args.texts) == 2 else None
    r = predict(model, [args.texts[0]], texts_b, max_len=args.max_len, precision=precision)[0]
    print(f"{r['score']:.4f}" if r["label"] is None else f"{r['label']}\t{r['score']:.4f}")


def predict_entities(model, args, precision="fp32"):
    """A token-classification checkpoint: one JSON line {"entities": [...]} per TEXT, or per line of a
    plain-text --file (blank lines give no entities, so output line N is input line N)."""
    from ..errors import BertkitError
    from ..inference.tag import tag
    from ..textio import iter_lines

    if model.load_report.get("missing"):
        raise BertkitError(f"--model {args.model}: not a fine-tuned token-classification checkpoint (no trained head)")
    texts = list(iter_lines(args.file)) if args.file else args.texts
    write_json_lines(tag(model, texts, max_len=args.max_len, batch_size=args.batch_size, precision=precision), args.out)
    return 0


def write_json_lines(results, path=None):
    """One JSON object per line, to `path` or standard output."""
    import json
    import sys

    out = open(path, "w", encoding="utf-8") if path else sys.stdout
    try:
        for r in results:
            out.write(json.dumps(r) + "\n")
    finally:
        if path:
            out.close()
