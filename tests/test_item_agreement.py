"""Item agreement of a plan-then-score critic with bench checklist labels, and those labels' way in:
the demo bench derives them from what it drew, the importer keeps them when a bench has them."""

import json
from pathlib import Path

import polars as pl
import pytest

from firm_assets.benchmark.demo import checklist_labels, write_demo_bench
from firm_assets.benchmark.importer import BenchItem, bench_version, read_firm_bench
from firm_assets.benchmark.item_agreement import (
    ItemAgreement,
    agreement,
    agreement_by_dimension,
    normalise_question,
)
from firm_assets.edit.demo import Scene, Shape

LABELS = [
    {"question": "Is the background plain blue?", "answer": "yes"},
    {"question": "Are there exactly two red circles?", "answer": "no"},
    {"question": "Is there exactly one green square?", "answer": "yes"},
    {"question": "Is the red circle above the green square?", "answer": "no"},
]


def test_normalise_question_ignores_case_punctuation_and_spacing() -> None:
    assert normalise_question("  Are there exactly TWO red-circles ?") == "are there exactly two red circles"


def test_agreement_hand_computed() -> None:
    verdicts = [
        {"question": "is the background plain blue", "verdict": "yes"},  # matched, right
        {"question": "Are there exactly two red circles?", "verdict": "yes"},  # matched, wrong
        {"question": "ARE THERE exactly two red circles?", "verdict": "no"},  # repeat: first counts
        {"question": "Is the red circle above the green square?", "verdict": "no"},  # matched, right
        {"question": "Is the sky cloudy?", "verdict": "no"},  # not labelled: ignored
    ]
    found = agreement(LABELS, verdicts)
    assert found == ItemAgreement(n_labelled=4, n_matched=3, n_correct=2)
    assert found.as_dict() == {
        "item_agreement": 0.5,
        "item_matched_agreement": pytest.approx(2 / 3),
        "item_n_labelled": 4,
        "item_n_matched": 3,
    }
    assert agreement(LABELS, []).as_dict()["item_matched_agreement"] is None


def test_agreement_over_a_bench_side() -> None:
    """Summed over labelled items: an unlabelled item does not count, a failed answer (no verdicts)
    counts its labels as unmatched; dimensions without verdicts get nothing."""
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "item_labels": [json.dumps(LABELS[:2]), json.dumps(LABELS[2:]), None],
        }
    )
    predictions = pl.DataFrame(
        {
            "item_id": ["a", "b", "c", "a"],
            "dimension": ["instruction", "instruction", "instruction", "other"],
            "verdicts": [
                json.dumps([{"question": LABELS[0]["question"], "verdict": "yes", "evidence": ""}]),
                None,
                json.dumps([{"question": "anything?", "verdict": "no", "evidence": ""}]),
                None,
            ],
        }
    )
    assert agreement_by_dimension(items, predictions) == {
        "instruction": {
            "item_agreement": 0.25,
            "item_matched_agreement": 1.0,
            "item_n_labelled": 4,
            "item_n_matched": 1,
        }
    }
    assert (
        agreement_by_dimension(items.with_columns(pl.lit(None, pl.String).alias("item_labels")), predictions)
        == {}
    )
    assert agreement_by_dimension(items.drop("item_labels"), predictions) == {}


def test_demo_checklist_labels_follow_the_drawing() -> None:
    asked = Scene("blue", (Shape("circle", "red", (0, 1)), Shape("square", "green", (2, 1))))
    questions = [
        "Is the background plain blue?",
        "Is there exactly one red circle?",
        "Is there exactly one green square?",
        "Is the red circle above the green square?",
    ]
    assert checklist_labels(asked, asked, relation=True) == [
        {"question": q, "answer": "yes"} for q in questions
    ]
    swapped = Scene("blue", (Shape("circle", "red", (2, 1)), Shape("square", "green", (0, 1))))
    assert [label["answer"] for label in checklist_labels(asked, swapped, relation=True)] == [
        "yes",
        "yes",
        "yes",
        "no",
    ]
    recoloured = Scene("white", (Shape("circle", "red", (0, 0)), Shape("circle", "red", (1, 1))))
    assert checklist_labels(asked, recoloured, relation=False) == [
        {"question": "Is the background plain blue?", "answer": "no"},
        {"question": "Is there exactly one red circle?", "answer": "no"},
        {"question": "Is there exactly one green square?", "answer": "no"},
    ]
    counted = Scene("grey", (Shape("star", "red", (0, 0)), Shape("star", "red", (0, 2))))
    assert checklist_labels(counted, counted, relation=False)[1] == {
        "question": "Are there exactly two red stars?",
        "answer": "yes",
    }


def test_demo_gen_items_carry_checklist_labels(tmp_path: Path) -> None:
    """Every demo gen item is labelled; a correctly drawn item answers yes everywhere, the others
    have at least one no."""
    items, bad, _ = read_firm_bench(write_demo_bench(tmp_path), "gen")
    assert bad == [] and all(item.item_labels for item in items)
    for item in items:
        answers = {answer for _, answer in item.item_labels}
        assert answers == {"yes"} if item.human["instruction"] == 5 else "no" in answers


def _write_gen_bench(root: Path, label_extra: dict) -> Path:
    side = root / "gen"
    (side / "result").mkdir(parents=True)
    write_demo_bench(tmp := root / "demo", n_edit=0, n_gen=1)
    (side / "images").mkdir()
    (side / "images" / "a.png").write_bytes((tmp / "gen" / "images" / "gen-0000.png").read_bytes())
    (side / "bench_v1.jsonl").write_text(
        json.dumps({"id": "a", "prompt": "p", "image": ["images/a.png"]}) + "\n"
    )
    label = {"id": "a", "instruction_following": {"score": [4]}, **label_extra}
    (side / "result" / "human_bench_v1.jsonl").write_text(json.dumps(label) + "\n")
    return root


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, ()),
        ({"checklist": None}, ()),
        (
            {
                "item_labels": [
                    {"question": "Is it red?", "verdict": "YES"},
                    {"item": "A cat", "label": False},
                ]
            },
            (("Is it red?", "yes"), ("A cat", "no")),
        ),
    ],
)
def test_importer_keeps_checklist_labels_when_present(tmp_path: Path, extra: dict, expected: tuple) -> None:
    items, bad, _ = read_firm_bench(_write_gen_bench(tmp_path, extra), "gen")
    assert bad == [] and [item.item_labels for item in items] == [expected]


@pytest.mark.parametrize(
    ("checklist", "reason"),
    [
        ("yes", "must be a list"),
        ([{"question": "Is it red?", "answer": "maybe"}], "is not yes or no"),
        ([{"question": " ", "answer": "yes"}], "no question text"),
        ([{"question": "Is it red?"}], "no answer"),
    ],
)
def test_importer_quarantines_malformed_checklist_labels(
    tmp_path: Path, checklist: object, reason: str
) -> None:
    items, bad, _ = read_firm_bench(_write_gen_bench(tmp_path, {"checklist": checklist}), "gen")
    assert items == [] and any(reason in q.reason for q in bad)


def test_bench_version_moves_with_checklist_labels() -> None:
    plain = BenchItem("1", "gen", "p", ("/x.png",), ("a" * 64,), "all", None, {"instruction": 3.0})
    labelled = BenchItem(
        "1", "gen", "p", ("/x.png",), ("a" * 64,), "all", None, {"instruction": 3.0}, (("Q?", "yes"),)
    )
    flipped = BenchItem(
        "1", "gen", "p", ("/x.png",), ("a" * 64,), "all", None, {"instruction": 3.0}, (("Q?", "no"),)
    )
    assert len({bench_version([plain]), bench_version([labelled]), bench_version([flipped])}) == 3
