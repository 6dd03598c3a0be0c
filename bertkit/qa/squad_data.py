"""Reading SQuAD JSON files (v1.1 and v2.0) into examples, with errors that say where.

The layout: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}. `is_impossible` (and empty answer
lists on those questions) is SQuAD 2.0's; it needs `version_2`.

Positions in messages read like `dev.json: data[3].paragraphs[2].qas[5]`, so a bad entry is found
with any JSON viewer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BertkitError
from ..textio import read_json


class SquadDataWarning(UserWarning):
    """Some questions were skipped or something about a file is worth knowing; said once per file."""


@dataclass
class SquadExample:
    qid: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character start in context), as given in the file
    is_impossible: bool = False
    title: str = ""
    where: str = ""  # data[i].paragraphs[j].qas[k], for messages


@dataclass
class SquadData:
    path: Path
    examples: list[SquadExample]
    has_answers: bool  # any question with answers or is_impossible: the file can be scored
    is_v2: bool  # any question marked is_impossible
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (training files)


def _field(obj, key, kind, where, path):
    if not isinstance(obj, dict):
        raise BertkitError(f"{path}: {where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise BertkitError(f"{path}: {where}: missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BertkitError(f"{path}: {where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def read_squad(path, version_2: bool = False, training: bool = False) -> SquadData:
    """All questions of a SQuAD file, in file order.

    training: every question must be answerable from its first answer (or be is_impossible under
    version_2); one whose first `answer_start` does not point at its text is skipped, counted in
    `skipped` and reported once. For prediction, answers only feed the metric and are not checked.
    """
    path = Path(path)
    if not path.is_file():
        raise BertkitError(f"{path}: file not found")
    raw = read_json(path)  # malformed JSON: the file, line, column and character position
    articles = _field(raw, "data", list, "top level", path)
    examples: list[SquadExample] = []
    skipped: dict[str, int] = {}
    first_skip: dict[str, str] = {}
    has_answers = is_v2 = False
    seen_ids: set[str] = set()
    for i, article in enumerate(articles):
        title = str(article.get("title", "")) if isinstance(article, dict) else ""
        paragraphs = _field(article, "paragraphs", list, f"data[{i}]", path)
        for j, para in enumerate(paragraphs):
            pw = f"data[{i}].paragraphs[{j}]"
            context = _field(para, "context", str, pw, path)
            qas = _field(para, "qas", list, pw, path)
            if not context.strip():
                raise BertkitError(f"{path}: {pw}.context: empty context")
            for k, qa in enumerate(qas):
                where = f"{pw}.qas[{k}]"
                qid = str(_field(qa, "id", (str, int), where, path))
                question = _field(qa, "question", str, where, path)
                if not question.strip():
                    raise BertkitError(f"{path}: {where}.question: empty question")
                if qid in seen_ids:
                    raise BertkitError(f"{path}: {where}.id: duplicate question id {qid!r}")
                seen_ids.add(qid)
                impossible = bool(qa.get("is_impossible", False))
                if impossible and not version_2:
                    raise BertkitError(
                        f"{path}: {where}: is_impossible questions are SQuAD 2.0 data; pass --version-2"
                    )
                answers = []
                for a, ans in enumerate(qa.get("answers") or []):
                    text = _field(ans, "text", str, f"{where}.answers[{a}]", path)
                    start = _field(ans, "answer_start", int, f"{where}.answers[{a}]", path)
                    answers.append((text, start))
                is_v2 |= impossible
                has_answers |= bool(answers) or impossible
                ex = SquadExample(qid, question, context, answers, impossible, title, where)
                if training:
                    reason = _training_problem(ex, version_2)
                    if reason:
                        skipped[reason] = skipped.get(reason, 0) + 1
                        first_skip.setdefault(reason, f"{where} (id {qid})")
                        continue
                examples.append(ex)
    if not examples and not skipped:
        raise BertkitError(f"{path}: no questions found")
    for reason, n in skipped.items():
        warnings.warn(f"{path}: skipped {n} training question(s): {reason} (first: {first_skip[reason]})",
                      SquadDataWarning, stacklevel=2)
    if not examples:
        raise BertkitError(f"{path}: every training question was skipped ({', '.join(skipped)})")
    return SquadData(path, examples, has_answers, is_v2, skipped)


def _training_problem(ex: SquadExample, version_2: bool) -> str | None:
    if ex.is_impossible:
        return None
    if not ex.answers:
        return "no answers" + ("" if version_2 else " (unanswerable questions need --version-2 and is_impossible)")
    text, start = ex.answers[0]
    if not text.strip():
        return "the answer text is empty"
    if start < 0 or ex.context[start : start + len(text)] != text:
        return "answer_start does not point at the answer text"
    return None
