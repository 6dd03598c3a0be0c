"""`bertkit squad`: fine-tune on SQuAD 1.1/2.0 and predict (or predict only with a QA checkpoint)."""

from .options import add_threads_argument, add_training_arguments, apply_threads, config_from_args, is_main_process


def add_arguments(p):
    p.add_argument("--model", default="all-minilm-l6-v2",
                   help="a BERT checkpoint or name to fine-tune (with --train), or a QA checkpoint to predict with")
    p.add_argument("--train", metavar="FILE", help="SQuAD JSON to fine-tune on (omit to predict with a QA checkpoint)")
    p.add_argument("--predict", metavar="FILE", help="SQuAD JSON to answer; scored when it has answers")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="checkpoint (when training), predictions.json, nbest_predictions.json, null_odds.json, "
                        "eval_results.json, metrics.jsonl")
    p.add_argument("--version-2", action="store_true", default=None,
                   help="SQuAD 2.0: unanswerable questions (is_impossible), null answers (default: as the checkpoint was trained)")
    p.add_argument("--null-score-diff-threshold", type=float, metavar="X",
                   help="SQuAD 2.0: answer \"\" when null score - best span score > X "
                        "(default: the threshold tuned when the checkpoint was trained, else 0)")
    p.add_argument("--max-seq-length", type=int, help="tokens per window (default 384)")
    p.add_argument("--doc-stride", type=int, help="tokens between window starts (default 128)")
    p.add_argument("--max-query-length", type=int, help="question tokens kept (default 64)")
    p.add_argument("--n-best-size", type=int, help="candidates kept per question (default 20)")
    p.add_argument("--max-answer-length", type=int, help="longest answer in tokens (default 30)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--optimizer", choices=("adamw", "bertadam", "lamb"), default="adamw",
                   help="adamw (torch), bertadam (Google BERT's: no bias correction), lamb")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--epsilon", type=float, default=1e-6, help="Adam epsilon (default 1e-6; GluonNLP's SQuAD runs use 1e-8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-examples", type=int, metavar="N", help="train on a seeded random subset of N questions")
    p.add_argument("--bucket-batches", type=int, default=1, metavar="N",
                   help="sort each group of N batches by window length (less padding, correlated batches); 1: random batches")
    p.add_argument("--eval-batch-size", type=int, default=64)
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    add_training_arguments(p)


def run(args):
    import json

    from ..train.squad import SquadConfig, run_squad

    apply_threads(args)
    config = config_from_args(SquadConfig, args, progress=not args.quiet)
    results = run_squad(args.model, args.out, train_file=args.train, predict_file=args.predict, config=config,
                        quiet=args.quiet)
    keys = ("exact", "f1", "total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")
    if is_main_process():
        print(json.dumps({k: results[k] for k in keys if k in results} or {"out": args.out}))
