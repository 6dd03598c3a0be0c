"""One question about one context, with a question-answering checkpoint.

    model = bertkit.load("squad-model/")
    bertkit.answer(model, "Who wrote it?", "It was written by Ada in 1843.")
    # {"text": "Ada", "start": 18, "end": 21, "score": 0.93}

`start`/`end` are character offsets into `context` (context[start:end] == text); `score` is the
answer's probability among the n-best candidates. A SQuAD 2.0 model answers "" (start and end
None) when its null score beats the best span by more than the checkpoint's tuned threshold.

The windows run on the model's own device (`model.to("cuda")` first for a GPU); `precision="bf16"`
(or "fp16" on CUDA) runs the forward passes under autocast, the logits are read as float32.
"""

from __future__ import annotations

from ..device import autocast, model_device, resolve_precision
from ..errors import BertkitError
from ..qa.features import make_features
from ..qa.inference import window_logits
from ..qa.postprocess import answer_example
from ..qa.settings import AnswerSettings
from ..qa.squad_data import SquadExample


def answer(model, question: str, context: str, threshold: float | None = None, precision: str = "fp32",
           **settings) -> dict:
    """{"text", "start", "end", "score"}; `settings` override the checkpoint's saved feature options
    (max_seq_length, doc_stride, max_query_length, n_best_size, max_answer_length, version_2).
    `precision`: "fp32", "bf16" or "fp16" (autocast on the model's device)."""
    for name, value in (("question", question), ("context", context)):
        if not isinstance(value, str):
            raise BertkitError(f"{name}: expected a string, got {type(value).__name__}")
        if not value.strip():
            raise BertkitError(f"{name}: empty {name}")
    if getattr(model, "tokenizer", None) is None:
        raise BertkitError("this model has no tokenizer (load it with bertkit.load from a checkpoint with vocab.txt)")
    device = model_device(model)
    precision = resolve_precision(precision, device)
    c = AnswerSettings(null_score_diff_threshold=threshold, **settings).resolved(getattr(model, "info", None) or {})
    example = SquadExample("q", question, context, [], where="input")
    features = make_features([example], model.tokenizer, max_seq_length=c.max_seq_length, doc_stride=c.doc_stride,
                             max_query_length=c.max_query_length)
    with autocast(device, precision):  # window_logits moves each batch to the model's device
        logits = window_logits(model, features, batch_size=c.eval_batch_size, progress=False)
    a = answer_example(example, features.context_spans[0], list(range(len(features))), features, logits,
                       n_best_size=c.n_best_size, max_answer_length=c.max_answer_length, version_2=c.version_2,
                       threshold=c.null_score_diff_threshold)
    return {"text": a.text, "start": a.start, "end": a.end, "score": a.probability}
