"""The `bertkit` command: one subcommand per job, each in its own module of this package.

A subcommand module defines `add_arguments(parser)` and `run(args)`, and is listed in COMMANDS.

A user's mistake (`BertkitError`) prints one line, `bertkit: error: ...`, and exits with status 2;
only a real bug shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from ..cpu.allocator import keep_freed_memory
from ..errors import BertkitError

# subcommand name -> (module in this package, one-line help). A module is imported only when its
# subcommand runs, so one command's imports never slow down or break another.
COMMANDS = {
    "demo": ("demo", "show what bertkit does, on a real pretrained BERT and embedded data (no arguments needed)"),
    "info": ("info", "show a model's config, parameter count, heads and vocabulary"),
    "vocab": ("vocab", "train a WordPiece vocabulary from text files"),
    "tokenize": ("tokenize", "tokenize lines into JSON lines {tokens, ids, segment_ids}"),
    "embed": ("embed", "token or sentence vectors from a BERT encoder"),
    "fill-mask": ("fill_mask", "the most likely tokens for each [MASK] in a text (a checkpoint with the masked-LM head)"),
    "pretrain-data": ("pretrain_data", "turn a corpus into masked-LM + next-sentence pretraining shards"),
    "pretrain": ("pretrain", "pretrain a BERT (masked LM + next sentence) from shards; torchrun for many processes"),
    "finetune": ("finetune", "fine-tune a checkpoint on a GLUE / sentiment / TSV task or CoNLL tagging; writes the best epoch's checkpoint"),
    "predict": ("predict", "classify (or score) texts, find their entities, or answer a question, with a fine-tuned checkpoint"),
    "squad": ("squad", "fine-tune on SQuAD 1.1/2.0 and answer its questions; predictions, n-best, official scores"),
    "squad-eval": ("squad_eval", "the official SQuAD 1.1/2.0 metric of a predictions file"),
    "export": ("export", "export a checkpoint to ONNX or a PyTorch-native file, verified against PyTorch"),
    "serve": ("serve", "an HTTP server for embeddings, predictions and answers, with dynamic batching"),
    "zoo": ("zoo", "list the named pretrained BERTs (GluonNLP's and Google's), which are here; --fetch downloads"),
    "convert": ("convert", "convert a GluonNLP .params file or a Google TensorFlow checkpoint into a checkpoint directory"),
}


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"bertkit: note: {message}", file=sys.stderr)


def top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertkit",
        description="Pretrain, fine-tune, embed and export BERT models.",
        epilog="Run 'bertkit COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str):
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(f".{module_name}", __name__)
    parser = argparse.ArgumentParser(prog=f"bertkit {name}", description=help_text)
    module.add_arguments(parser)
    if any(a.dest == "model" for a in parser._actions) and not any(a.dest == "offline" for a in parser._actions):
        # Every command that takes a model may have to download it (a zoo name, a Hub id).
        parser.add_argument("--offline", action="store_true",
                            help="never download: use only models already on this machine (as HF_HUB_OFFLINE=1)")
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        parser = top_level_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints help, or the unknown-command error and exits 2
        return 2
    parser, module = command_parser(argv[0])
    args = parser.parse_args(argv[1:])
    if getattr(args, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = "1"
    warnings.showwarning = _one_line_warning
    keep_freed_memory()  # large activations reuse freed memory instead of fresh pages (cpu/allocator.py)
    try:
        return module.run(args) or 0
    except BertkitError as e:
        print(f"bertkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bertkit embed ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
