"""The `bertkit` command: one subcommand per job, each in its own module of this package.

A subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args)`. Modules
import torch and the heavy parts of bertkit inside `run`, so `bertkit --help` stays instant.

A user's mistake (`BertkitError`) prints one line, `bertkit: error: ...`, and exits with status 2;
only a real bug shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import BertkitError

# subcommand name -> module in this package
COMMANDS = {
    "demo": "demo",
    "info": "info",
    "vocab": "vocab",
    "tokenize": "tokenize",
    "embed": "embed",
    "pretrain-data": "pretrain_data",
}


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"bertkit: note: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertkit", description="Pretrain, fine-tune, embed and export BERT models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f".{module_name}", __name__)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    warnings.showwarning = _one_line_warning
    try:
        return args._run(args) or 0
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
