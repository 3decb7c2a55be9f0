"""Labels that cannot be right for their model: text for a regression, or a class of the other kind.

A classifier trained on 0/1 whose labels arrive as "no"/"yes" (a mapping
forgotten in the producer) would have every label counted a
misclassification: a concept-drift alert and a retrain request out of a
format slip. A version's classes are known from its registration (the
targets of its held-out rows): integers (``0``, ``1``, ``1.0``: one class
by ``class_text``) or text. A label of the other kind, a non-integer number
where the classes are integers included, matches none of them; a label of
the same kind that is not among them may be a new class and is taken.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from undertow.models import registry
from undertow.models.drift.errors import class_text

NUMBER, INTEGER_CLASSES, TEXT_CLASSES = "number", "integer classes", "text classes"
_INTEGER_TEXT = re.compile(r"-?\d+")
_SHOWN_CLASSES = 6  # classes named in a refusal


def _integer_like(value: Any) -> bool:
    """Whether a label names an integer class: 1, 1.0 and "1" do (``class_text``); 0.5, "1.0", "no" do not."""
    cls = value.__class__
    if cls is int:
        return True
    if cls is float:
        return bool(value.is_integer())
    return cls is str and _INTEGER_TEXT.fullmatch(value) is not None


@dataclass(frozen=True)
class LabelKind:
    """What a version's labels must look like.

    >>> kind = LabelKind("1", INTEGER_CLASSES, ("0", "1"))
    >>> [kind.fits(v) for v in (1, 0.0, "1", "no", 0.5)]
    [True, True, True, False, False]
    >>> LabelKind("1", NUMBER, ()).fits("12"), LabelKind("1", TEXT_CLASSES, ("cat",)).fits("dog")
    (False, True)
    """

    version: str
    kind: str  # NUMBER, INTEGER_CLASSES or TEXT_CLASSES
    classes: tuple[str, ...]  # the registered classes (class_text), for the refusal

    @classmethod
    def of(cls, row: registry.ModelVersion) -> LabelKind | None:
        """From a version's task and the targets of its held-out rows; None where they do not say (no task,
        no targets, or classes of both kinds)."""
        if row.task == "regression":
            return cls(row.version, NUMBER, ())
        if row.task != "classification" or not row.test_set:
            return None
        targets = [t for t in json.loads(row.test_set).get("targets", []) if t is not None]
        integer = {_integer_like(t) for t in targets}
        if len(integer) != 1:
            return None  # none known, or both kinds: nothing to compare with
        kind = INTEGER_CLASSES if integer == {True} else TEXT_CLASSES
        texts = sorted({class_text(t) for t in targets}, key=lambda t: (len(t), t) if kind == INTEGER_CLASSES else t)
        return cls(row.version, kind, tuple(texts))

    def fits(self, label: Any) -> bool:
        if self.kind == NUMBER:
            return label.__class__ is int or label.__class__ is float
        return _integer_like(label) == (self.kind == INTEGER_CLASSES)

    def describe(self, model_id: str, label: Any) -> str:
        """One line: why the label cannot be right, and what it was compared with."""
        if self.kind == NUMBER:
            return f"label {label!r} of model {model_id!r} is not a number: version {self.version} is a regression"
        shown = ", ".join(self.classes[:_SHOWN_CLASSES]) + (", ..." if len(self.classes) > _SHOWN_CLASSES else "")
        return (
            f"label {label!r} of model {model_id!r} cannot be one of version {self.version}'s {self.kind} "
            f"({shown}): map the labels to the classes the model was trained on"
        )
