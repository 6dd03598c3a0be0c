"""`bertkit finetune`: fine-tune a checkpoint on a GLUE, sentiment or your own TSV task, or a CoNLL tagging task."""

from .options import add_threads_argument, add_training_arguments, apply_threads, config_from_args, is_main_process

TASK_NAMES = ("sst-2", "cola", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte", "wnli", "xnli", "imdb", "ag-news", "rotten-tomatoes",
              "text")
TAGGING_TASKS = ("conll2003", "tags")  # token classification: bertkit/tagging


def add_arguments(p):
    p.add_argument("--task", required=True, metavar="NAME", help="one of: " + ", ".join(TASK_NAMES + TAGGING_TASKS))
    p.add_argument("--data-dir", metavar="DIR",
                   help="the task's files: GLUE TSVs (DIR or DIR/TASK), aclImdb folders, XNLI, ag_news_csv (train.csv, test.csv), "
                        "or train.tsv/dev.tsv for --task text "
                        "(not needed for rotten-tomatoes); eng.train/eng.testa[/eng.testb] for conll2003, "
                        "train.txt/dev.txt[/test.txt] CoNLL columns for tags")
    p.add_argument("--model", default="all-minilm-l6-v2", help="checkpoint directory or model name (default all-minilm-l6-v2)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the fine-tuned checkpoint, eval_results.json and metrics.jsonl go")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128, help="tokens per example, [CLS]/[SEP] included (default 128)")
    p.add_argument("--optimizer", choices=("adamw", "bertadam", "lamb"), default="adamw",
                   help="adamw (torch), bertadam (Google BERT's: no bias correction), lamb")
    p.add_argument("--epsilon", type=float, default=1e-6, help="Adam epsilon (default 1e-6)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of steps with linear warm-up (default 0.1)")
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step (gradient accumulation)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm, 0 for none (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--bucket-batches", type=int, default=None, metavar="N",
                   help="sort groups of N training batches by length: less padding, faster, but batches of "
                        "similar texts score lower (default 1: plain shuffled batches)")
    p.add_argument("--max-train-examples", type=int, metavar="N", help="train on a seeded random subset of N examples")
    p.add_argument("--regression", action="store_true", help="--task text: labels are numbers (MSE loss, Pearson/Spearman)")
    p.add_argument("--lang", default="en", help="--task xnli: the language (default en)")
    p.add_argument("--new-head", action="store_true",
                   help="the checkpoint already has a task head for another task: re-initialise it, keep the encoder")
    p.add_argument("--eval-before", action="store_true", help="also score the dev set before training")
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    add_training_arguments(p)


def run(args):
    import json

    from ..train.finetune import FinetuneConfig, finetune

    apply_threads(args)
    config = config_from_args(FinetuneConfig, args, progress=not args.quiet)
    if args.task in TAGGING_TASKS:
        from ..train.tagging import finetune_tagging

        results = finetune_tagging(args.task, args.data_dir, args.model, args.out, config, new_head=args.new_head, quiet=args.quiet)
    else:
        results = finetune(args.task, args.data_dir, args.model, args.out, config, new_head=args.new_head,
                           regression=args.regression, task_options={"lang": args.lang}, quiet=args.quiet)
    dev = {k: v for k, v in results.items() if isinstance(v, dict) and k.startswith(("dev", "test"))}
    if is_main_process():
        print(json.dumps({"task": results["task"], "best_epoch": results["best_epoch"], **dev}))
