"""`bertkit convert SOURCE --out DIR`: a GluonNLP .params file or a Google TensorFlow checkpoint -> a checkpoint directory."""

from pathlib import Path


def add_arguments(p):
    p.add_argument("source", help="GluonNLP .params file, or TensorFlow checkpoint prefix / .index file / folder")
    p.add_argument("--out", required=True, help="the checkpoint directory to write")
    p.add_argument("--vocab", type=Path, help="vocabulary: GluonNLP's JSON (.vocab) or a vocab.txt (default: found beside SOURCE)")
    p.add_argument("--shape", metavar="bert_L_H_A", help="named shape (L layers, hidden H, A heads, FFN 4H, 512 positions)")
    p.add_argument("--hparams", type=Path, help="GluonNLP: JSON of the BERTEncoder/BERTModel hyper-parameters (default: hparams.json beside)")
    p.add_argument("--config", type=Path, help="TensorFlow: bert_config.json (default: the one beside SOURCE)")
    casing = p.add_mutually_exclusive_group()
    casing.add_argument("--cased", dest="cased", action="store_true", default=None, help="keep case (default: from names, else the vocabulary)")
    casing.add_argument("--uncased", dest="cased", action="store_false", help="lower-case input")
    p.add_argument("--labels", help="comma-separated class names of a classifier head (default 0,1,...)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out directory")


def run(args):
    from ..zoo.convert import check_out, read_source, write_converted
    from ..zoo.source import Options

    options = Options(vocab=args.vocab, shape=args.shape, hparams=args.hparams, config=args.config, cased=args.cased,
                      labels=args.labels.split(",") if args.labels else None)
    out = Path(args.out)
    check_out(out, args.overwrite)
    c = read_source(args.source, options)
    write_converted(c, out)
    cfg = c.config
    print(f"{c.source} -> {out}")
    print(f"  {c.info['converted_from']['format']} checkpoint, {c.head} head, {len(c.tensors)} tensors; shape from {c.config_from}: "
          f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} heads, FFN {cfg.intermediate_size}, "
          f"{cfg.max_position_embeddings} positions, {cfg.hidden_act}")
    print(f"  vocabulary {c.vocab_file} ({len(c.vocab)} tokens, {'uncased' if c.lowercase else 'cased'})"
          + (f"; labels {', '.join(c.labels)}" if c.labels else ""))
