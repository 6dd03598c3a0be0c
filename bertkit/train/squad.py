"""`bertkit squad`: fine-tune a span-extraction head on a SQuAD file, predict another, score it.

    from bertkit.train.squad import SquadConfig, run_squad
    results = run_squad("all-minilm-l6-v2", "out/", train_file="train.json", predict_file="dev.json")

`out` receives the fine-tuned checkpoint (when training; transformers' BertForQuestionAnswering
loads it), `metrics.jsonl`, `predictions.json`, `nbest_predictions.json`, for SQuAD 2.0
`null_odds.json`, and when the predict file has answers `eval_results.json` (the official script's
keys). For SQuAD 2.0 with answers, the null threshold that maximises F1 on the predict file is
found, `predictions_best_threshold.json` is written with it, and a checkpoint trained here keeps it
in `bertkit.json` (`null_score_diff_threshold`) as the default for later predictions.

The loss is run_squad.py's: the mean of the cross-entropies of the start and the end position over
each window's tokens (padding excluded, so a window's loss does not depend on its batch), averaged
over the windows of the global batch. Batches are random (`bucket_batches` > 1 sorts groups of that
many batches by length: less padding, but correlated batches; bertkit/batches.py says what that
costs), and everything else (device, precision, processes, checkpoints, resume) is the one loop's
(train/loop.py), as for every bertkit training job.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..device import autocast, peak_rss_mb, resolve_precision
from ..errors import BertkitError
from ..qa.features import Features, make_features
from ..qa.inference import window_logits
from ..qa.metric import evaluate
from ..qa.postprocess import answer_all, with_threshold
from ..qa.settings import REMEMBERED, AnswerSettings
from ..qa.squad_data import SquadDataWarning, read_squad
from . import distributed
from .checkpoints import remove_checkpoints
from .config import TrainConfig
from .finetune import RowsJob, run_finetune
from .loop import say


@dataclass
class SquadConfig(TrainConfig, AnswerSettings):
    epochs: int = 2
    eval_batch_size: int = 64
    log_every: int = 20

    def resolved(self, info: dict) -> "SquadConfig":
        """A copy with every None setting taken from a checkpoint's bertkit.json, else the default."""
        c = AnswerSettings.resolved(self, info)
        c.check()
        return c


def span_loss(start_logits, end_logits, valid_lengths, start_positions, end_positions, reduction: str = "mean"):
    """Mean (or, with reduction="sum", the sum over windows) of the start and end cross-entropies,
    padded positions masked out."""
    positions = torch.arange(start_logits.shape[1], device=start_logits.device)
    pad = positions[None, :] >= valid_lengths[:, None]
    start_logits = start_logits.float().masked_fill(pad, float("-inf"))
    end_logits = end_logits.float().masked_fill(pad, float("-inf"))
    return (F.cross_entropy(start_logits, start_positions, reduction=reduction)
            + F.cross_entropy(end_logits, end_positions, reduction=reduction)) / 2


class SpanBatches:
    """SQuAD training windows as the loop's rows: `batch(rows)` adds the start and end targets."""

    def __init__(self, features: Features):
        self.features, self.lengths = features, features.lengths
        self.starts = torch.from_numpy(features.start_positions)
        self.ends = torch.from_numpy(features.end_positions)

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, rows):
        ids, segs, lens = self.features.batch(rows)
        return ids, segs, lens, self.starts[rows], self.ends[rows]


def span_loss_sums(model, batch) -> dict[str, torch.Tensor]:
    ids, segs, lens, starts, ends = batch
    start_logits, end_logits = model(ids, segs, lens)
    return {"loss": span_loss(start_logits, end_logits, lens, starts, ends, reduction="sum")}


def train_spans(model, features: Features, config, out, ctx, tokenizer=None, info: dict | None = None,
                quiet: bool = False, checkpoints: bool = True):
    """Train `model` in place on the windows (`config`: a SquadConfig, or any TrainConfig); returns
    the loop's result. `checkpoints=False` (a model bertkit cannot save, e.g. a reference
    implementation's) writes no resumable checkpoints."""
    job = RowsJob("squad", SpanBatches(features), config, span_loss_sums, None, None, tokenizer, info or {})
    return run_finetune(job, model, out, config, f"squad train: {len(features)} windows, lr {config.lr}", ctx, quiet,
                        checkpoints=checkpoints)


def load_qa_model(model_name: str, training: bool):
    """The model to train (any BERT checkpoint; a missing QA head starts fresh) or to predict with
    (it must be a question-answering checkpoint)."""
    from ..model import BertForQuestionAnswering
    from ..pretrained import load

    if training:
        model = load(model_name, head="question_answering")
    else:
        model = load(model_name)
        head = model.info.get("head") or type(model).__name__
        if not isinstance(model, BertForQuestionAnswering) or any(
                m.startswith("qa_outputs.") for m in model.load_report["missing"]):
            raise BertkitError(
                f"--model {model_name}: not a question-answering checkpoint (its head: {head}); "
                f"pass --train FILE to fine-tune one")
    if model.tokenizer is None:
        raise BertkitError(f"--model {model_name}: the checkpoint has no vocabulary (vocab.txt)")
    return model


def run_squad(model_name: str, out, train_file=None, predict_file=None, config: SquadConfig | None = None,
              quiet: bool = False) -> dict:
    """Train (if `train_file`), then predict and score (if `predict_file`). Returns the results dict
    (on every process of a torchrun job; rank 0 alone predicts and writes files)."""
    if train_file is None and predict_file is None:
        raise BertkitError("nothing to do: give --train FILE, --predict FILE, or both")
    config = config or SquadConfig()
    with distributed.session(config.device) as ctx:
        return _run_squad(model_name, Path(out), train_file, predict_file, config, quiet, ctx)


def _run_squad(model_name, out: Path, train_file, predict_file, config: SquadConfig, quiet: bool, ctx) -> dict:
    from ..checkpoint import save

    wall_start = time.perf_counter()
    resolve_precision(config.precision, ctx.device)  # refuse before loading anything
    torch.manual_seed(config.seed)  # a new QA head starts from the same weights on every run and rank
    model = load_qa_model(model_name, training=train_file is not None)
    saved = {} if train_file is not None else model.info
    config = config.resolved(saved)
    max_positions = model.config.max_position_embeddings
    if config.max_seq_length > max_positions:
        raise BertkitError(f"--max-seq-length {config.max_seq_length} exceeds the model's {max_positions} positions")
    tokenizer = model.tokenizer
    feature_options = dict(max_seq_length=config.max_seq_length, doc_stride=config.doc_stride,
                           max_query_length=config.max_query_length, version_2=config.version_2)
    results: dict = {}
    info = dict(saved)
    if train_file is not None:
        data = read_squad(train_file, config.version_2, training=True)
        examples = config.training_subset(data.examples)
        features = make_features(examples, tokenizer, training=True, **feature_options)
        say(f"squad train: {len(examples)} questions -> {len(features)} windows "
            f"(max {config.max_seq_length} tokens, stride {config.doc_stride})", ctx, quiet)
        info = {"head": "question_answering", "task": "squad",
                **{name: getattr(config, name) for name in REMEMBERED},
                "null_score_diff_threshold": config.null_score_diff_threshold,
                "hyperparameters": dataclasses.asdict(config), "base_model": str(model_name),
                "train_file": str(train_file), "train_questions": len(examples), "train_windows": len(features)}
        result = train_spans(model, features, config, out, ctx, tokenizer, info, quiet)
        if ctx.is_main:
            save(model, out, tokenizer, info=info)
            remove_checkpoints(out)
        epochs = [{k: v for k, v in row.items() if not k.startswith("eval")} for row in result.epochs]
        results.update({"train_questions": len(examples), "train_windows": len(features),
                        "train_skipped": {**data.skipped, **features.skipped}, "epochs": epochs,
                        "train_seconds_per_epoch": [e["train_seconds"] for e in epochs if "train_seconds" in e],
                        **({"resumed_from": result.resumed_from} if result.resumed_from else {})})
    if not ctx.is_main:
        return ctx.broadcast_object(None)
    model.to(ctx.device)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "a" if train_file is not None else "w", encoding="utf-8") as metrics:
        def log(row):
            metrics.write(json.dumps(row) + "\n")

        if predict_file is not None:
            with autocast(ctx.device, config.precision):
                results.update(_predict(model, tokenizer, predict_file, config, feature_options, out, log, quiet))
            tuned = results.get("best_f1_thresh")
            if train_file is not None and tuned is not None:
                info["null_score_diff_threshold"] = tuned  # later predictions default to the tuned threshold
                info["null_score_diff_threshold_source"] = f"best F1 on {predict_file}"
                (out / "bertkit.json").write_text(json.dumps(info, indent=2) + "\n")
    results.update({"model": str(model_name), "hyperparameters": dataclasses.asdict(config),
                    "processes": ctx.world_size, "device": str(ctx.device),
                    "wall_seconds": round(time.perf_counter() - wall_start, 2),
                    "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()})
    if "exact" in results:
        (out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return ctx.broadcast_object(results)


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _predict(model, tokenizer, predict_file, config: SquadConfig, feature_options, out: Path, log, quiet) -> dict:
    data = read_squad(predict_file, config.version_2, training=False)
    if not data.has_answers:
        warnings.warn(f"{predict_file}: no answers in the file: writing predictions only, no evaluation",
                      SquadDataWarning, stacklevel=2)
    features = make_features(data.examples, tokenizer, training=False, **feature_options)
    say(f"squad predict: {len(data.examples)} questions -> {len(features)} windows", quiet=quiet)
    t0 = time.perf_counter()
    logits = window_logits(model, features, config.eval_batch_size, progress=config.progress and not quiet)
    forward_seconds = time.perf_counter() - t0
    answers = answer_all(data.examples, features, logits, n_best_size=config.n_best_size,
                         max_answer_length=config.max_answer_length, version_2=config.version_2,
                         threshold=config.null_score_diff_threshold)
    predict_seconds = time.perf_counter() - t0
    qids = [ex.qid for ex in data.examples]
    predictions = {q: a.text for q, a in zip(qids, answers)}
    _write_json(out / "predictions.json", predictions)
    _write_json(out / "nbest_predictions.json", {q: a.nbest for q, a in zip(qids, answers)})
    null_odds = None
    if config.version_2:
        null_odds = {q: a.null_odds for q, a in zip(qids, answers)}
        _write_json(out / "null_odds.json", null_odds)
    results = {"predict_file": str(predict_file), "predict_questions": len(qids), "predict_windows": len(features),
               "predict_forward_seconds": round(forward_seconds, 2), "predict_seconds": round(predict_seconds, 2),
               "predict_windows_per_s": round(len(features) / forward_seconds, 2),
               "null_score_diff_threshold": config.null_score_diff_threshold if config.version_2 else None}
    if data.has_answers:
        dataset = json.loads(Path(predict_file).read_text(encoding="utf-8"))["data"]
        # The predictions are already cut at the threshold; the official sweep then finds the best one.
        scores = evaluate(dataset, predictions, null_odds, na_prob_thresh=config.null_score_diff_threshold
                          if config.version_2 else 1.0)
        results = {**scores, **results}
        if config.version_2:
            best = scores["best_f1_thresh"]
            best_predictions = dict(zip(qids, with_threshold(answers, best)))
            _write_json(out / "predictions_best_threshold.json", best_predictions)
            at_best = evaluate(dataset, best_predictions, null_odds, na_prob_thresh=best)
            results["at_best_f1_thresh"] = {k: v for k, v in at_best.items() if not k.startswith("best_")}
        log({"predict": str(predict_file), **{k: v for k, v in scores.items()}})
        say("squad eval: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()
                                        if k in ("exact", "f1", "best_exact", "best_f1")), quiet=quiet)
    return results
