"""One labelled example of a sentence (or sentence-pair) task, as every reader returns it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Example:
    text_a: str
    text_b: str | None
    label: str | float  # the label string, or a float for regression
    where: str = ""  # "file:line", for error messages
