"""`bertkit squad-eval`: the official SQuAD metric (v1.1 and v2.0) of a predictions file."""


def add_arguments(p):
    p.add_argument("data_file", metavar="DATA.json", help="the SQuAD file with the gold answers")
    p.add_argument("pred_file", metavar="PREDICTIONS.json", help="{question id: answer text}")
    p.add_argument("--na-prob-file", "-n", metavar="F",
                   help="{question id: no-answer score} (e.g. null_odds.json): adds best_exact/best_f1 and thresholds")
    p.add_argument("--na-prob-thresh", "-t", type=float, default=1.0,
                   help="count a prediction as no answer when its no-answer score exceeds this (default 1.0)")
    p.add_argument("--out-file", "-o", metavar="F", help="write the JSON here (default standard output)")


def _read(path, what):
    from pathlib import Path

    from ..errors import BertkitError
    from ..textio import read_json

    if not Path(path).is_file():
        raise BertkitError(f"{path}: file not found")
    value = read_json(path)
    if what == "data":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise BertkitError(f"{path}: not a SQuAD file (no 'data' list at the top level)")
        return value["data"]
    if not isinstance(value, dict):
        raise BertkitError(f"{path}: expected a JSON object mapping question ids to {what}")
    return value


def run(args):
    import json

    from ..errors import BertkitError
    from ..qa.metric import evaluate
    from ..qa.squad_data import read_squad

    read_squad(args.data_file, version_2=True)  # checks the layout; errors name the position
    dataset = _read(args.data_file, "data")
    preds = _read(args.pred_file, "answer texts")
    bad = next((q for q, a in preds.items() if not isinstance(a, str)), None)
    if bad is not None:
        raise BertkitError(f"{args.pred_file}: the prediction for {bad!r} is not a string")
    na_probs = _read(args.na_prob_file, "no-answer scores") if args.na_prob_file else None
    try:
        result = evaluate(dataset, preds, na_probs, args.na_prob_thresh)
    except (KeyError, ValueError) as e:
        source = args.na_prob_file if isinstance(e, KeyError) else args.pred_file
        raise BertkitError(f"{source}: {e.args[0]}") from None
    text = json.dumps(result, indent=2)
    if args.out_file:
        with open(args.out_file, "w", encoding="utf-8") as f:
            f.write(json.dumps(result))
    else:
        print(text)
