"""The feature and answer settings of extractive QA, and the ones a QA checkpoint remembers.

A checkpoint trained by `bertkit squad` keeps them in `bertkit.json`, so that predicting with it later
(`bertkit squad` without --train, `bertkit.answer`, `bertkit serve`) cuts windows and picks spans as
its training run did; a setting the caller gives wins, and one nobody gave takes `DEFAULTS`
(run_squad.py's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import BertkitError

# Feature and answer settings a QA checkpoint remembers (bertkit.json) for later predictions.
REMEMBERED = ("version_2", "max_seq_length", "doc_stride", "max_query_length", "n_best_size", "max_answer_length")
DEFAULTS = {"version_2": False, "max_seq_length": 384, "doc_stride": 128, "max_query_length": 64,
            "n_best_size": 20, "max_answer_length": 30}


@dataclass
class AnswerSettings:
    # None: the QA checkpoint's saved value when predicting with one, else DEFAULTS
    version_2: bool | None = None
    max_seq_length: int | None = None
    doc_stride: int | None = None
    max_query_length: int | None = None
    n_best_size: int | None = None
    max_answer_length: int | None = None
    null_score_diff_threshold: float | None = None  # None: the checkpoint's tuned one, else 0
    eval_batch_size: int = 64

    def resolved(self, info: dict):
        """A copy with every None setting taken from a checkpoint's bertkit.json, else the default."""
        c = dataclasses.replace(self)
        for name in REMEMBERED:
            if getattr(c, name) is None:
                setattr(c, name, info.get(name, DEFAULTS[name]))
        if c.null_score_diff_threshold is None:
            c.null_score_diff_threshold = float(info.get("null_score_diff_threshold", 0.0))
        for name in ("max_seq_length", "doc_stride", "max_query_length", "n_best_size", "max_answer_length"):
            if int(getattr(c, name)) < 1:
                raise BertkitError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
        return c
