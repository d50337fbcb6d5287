"""Item agreement: where bench items carry checklist labels (question + yes/no), how many of those
questions a plan-then-score critic asked itself and answered right.

The critic writes its own questions, so they are matched to the labelled ones by normalised text
(case, punctuation and spacing ignored). A labelled question the critic did not ask counts against
it in `item_agreement` (share of labelled questions answered right) and is visible in `n_matched`;
`matched_agreement` is the share right among the questions it did ask.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import polars as pl

ANSWERS = ("yes", "no")
# The leaderboard columns (migration 006) that `ItemAgreement.as_dict` fills.
ITEM_AGREEMENT_COLUMNS = ("item_agreement", "item_matched_agreement", "item_n_labelled", "item_n_matched")


def normalise_question(text: str) -> str:
    """Lower case, letters and digits only, single spaces: "Is the cat BLACK?" -> "is the cat black"."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


@dataclass(frozen=True)
class ItemAgreement:
    """Per-checklist-item agreement with human labels, beside the overall score agreement."""

    n_labelled: int
    n_matched: int
    n_correct: int

    def __add__(self, other: ItemAgreement) -> ItemAgreement:
        return ItemAgreement(
            self.n_labelled + other.n_labelled,
            self.n_matched + other.n_matched,
            self.n_correct + other.n_correct,
        )

    def as_dict(self) -> dict[str, float | int | None]:
        """Flattens the counts and rates into bench result columns."""
        return {
            "item_agreement": self.n_correct / self.n_labelled if self.n_labelled else None,
            "item_matched_agreement": self.n_correct / self.n_matched if self.n_matched else None,
            "item_n_labelled": self.n_labelled,
            "item_n_matched": self.n_matched,
        }


def agreement(labels: list[dict], verdicts: list[dict]) -> ItemAgreement:
    """One bench item: `labels` [{question, answer}], the critic's `verdicts` [{question, verdict}].
    A question the critic answered twice counts with its first answer."""
    answers: dict[str, str] = {}
    for verdict in verdicts:
        answers.setdefault(normalise_question(verdict["question"]), verdict["verdict"])
    matched = [
        (label["answer"], answers[key])
        for label in labels
        if (key := normalise_question(label["question"])) in answers
    ]
    return ItemAgreement(len(labels), len(matched), sum(truth == given for truth, given in matched))


def agreement_by_dimension(items: pl.DataFrame, predictions: pl.DataFrame) -> dict[str, dict]:
    """Summed over the labelled items, for each dimension whose predictions carry verdicts; an item
    the critic failed on (no verdicts) still counts its labels. Empty when no item is labelled."""
    if "item_labels" not in items.columns:
        return {}
    labelled = items.filter(pl.col("item_labels").is_not_null()).select("item_id", "item_labels")
    if labelled.is_empty():
        return {}
    found = {}
    for dimension in predictions.filter(pl.col("verdicts").is_not_null())["dimension"].unique():
        answered = predictions.filter(pl.col("dimension") == dimension).select("item_id", "verdicts")
        total = ItemAgreement(0, 0, 0)
        for row in labelled.join(answered, on="item_id", how="left").iter_rows(named=True):
            total += agreement(json.loads(row["item_labels"]), json.loads(row["verdicts"] or "[]"))
        found[dimension] = total.as_dict()
    return found
