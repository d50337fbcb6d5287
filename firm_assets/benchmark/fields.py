"""Field names of FIRM-Bench records and how to read their values.

The published files were not reachable while this was written; what is known of them comes from
the public scoring script `FIRM-Bench-Gen/gen_mae.py`: records are keyed by `id`, images are a
list of paths relative to the side's folder (`"image": ["en/..."]`), and a human score sits at
`record["instruction_following"]["score"][0]`. Those names come first in every alias list; the
others are variants seen in similar benchmarks, so a re-exported or hand-made file still imports.
"""

from __future__ import annotations

import math
from typing import Any

from firm_assets.curation.lines import BadLine, clean_text

ID_KEYS = ("id", "idx", "item_id", "key", "index")
TEXT_KEYS = ("instruction", "prompt", "edit_instruction", "text")
SOURCE_KEYS = ("source_image", "input_image", "src_image", "original_image", "image")
EDITED_KEYS = ("edited_image", "output_image", "edit_image", "result_image")
IMAGE_LIST_KEYS = ("image", "images")
GEN_IMAGE_KEYS = ("image", "image_path", "output_image", "images")
EDITOR_KEYS = ("model", "editor", "model_name")
CATEGORY_KEYS = ("category", "task_type", "edit_type", "tag")
LABEL_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "edit": {
        "execution": ("execution", "execution_score", "exec", "instruction_score"),
        "consistency": ("consistency", "consistency_score", "cons"),
    },
    "gen": {
        "instruction": (
            "instruction_following",
            "score",
            "human_score",
            "if_score",
            "instruction_score",
            "alignment",
        ),
    },
}
# Optional checklist labels of a gen item: [{"question": str, "answer": "yes" | "no"}] (project layout).
CHECKLIST_KEYS = ("checklist", "item_labels", "checklist_labels")
QUESTION_KEYS = ("question", "item", "text")
ANSWER_KEYS = ("answer", "verdict", "label")
SCORE_RANGE = (1.0, 5.0)
_MAX_NESTING = 4  # {"score": [5]} is two levels; deeper nesting is not a score


def pick(record: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """The first of `keys` present with a non-null value, as (key, value)."""
    for key in keys:
        if record.get(key) is not None:
            return key, record[key]
    return None


def item_id(record: dict[str, Any]) -> str:
    """Ids may be numbers or strings in the wild; both become the same string key."""
    found = pick(record, ID_KEYS)
    if found is None:
        raise BadLine(f"missing item id (one of {', '.join(ID_KEYS)})")
    key, value = found
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadLine(f"{key} must be a string or an integer, got {type(value).__name__}")
    text = clean_text(str(value), key)
    if not text:
        raise BadLine(f"empty {key}")
    return text


def required_text(record: dict[str, Any], keys: tuple[str, ...], name: str) -> str:
    """Reads a mandatory text field under any of its accepted names, or rejects the line."""
    found = pick(record, keys)
    if found is None:
        raise BadLine(f"missing {name} (one of {', '.join(keys)})")
    text = clean_text(found[1], found[0])
    if not text:
        raise BadLine(f"empty {found[0]}")
    return text


def optional_text(record: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """Absent, null, blank or non-string metadata means 'not given'; a string must still be text."""
    found = pick(record, keys)
    if found is None or not isinstance(found[1], str):
        return None
    return clean_text(found[1], found[0]) or None


def score(value: object, name: str) -> float:
    """A 1-5 human score from a number, a numeric string, `[n, ...]` or `{"score": ...}`.

    Of a list only the first entry counts, as in the official scoring script.
    """
    for _ in range(_MAX_NESTING):
        if isinstance(value, dict):
            if "score" not in value:
                raise BadLine(f"{name} label is an object without 'score'")
            value = value["score"]
        elif isinstance(value, list):
            if not value:
                raise BadLine(f"{name} label is an empty list")
            value = value[0]
        else:
            break
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadLine(f"{name} label must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise BadLine(f"{name} label is not a number: {value!r}") from None
    low, high = SCORE_RANGE
    if not math.isfinite(number) or not low <= number <= high:
        raise BadLine(f"{name} label {value!r} outside {low:g}-{high:g}")
    return number


def checklist_labels(value: object, name: str) -> tuple[tuple[str, str], ...]:
    """(question, "yes"|"no") pairs; answers may be any-case yes/no or booleans. Anything else is a
    bad label line rather than a guess."""
    if not isinstance(value, list):
        raise BadLine(f"{name} must be a list of {{question, answer}} objects")
    pairs = []
    for entry in value:
        if not isinstance(entry, dict):
            raise BadLine(f"{name} entry is not an object")
        question = pick(entry, QUESTION_KEYS)
        answer = pick(entry, ANSWER_KEYS)
        if question is None or not isinstance(question[1], str) or not question[1].strip():
            raise BadLine(f"{name} entry has no question text")
        if answer is None:
            raise BadLine(f"{name} entry has no answer (one of {', '.join(ANSWER_KEYS)})")
        given = answer[1]
        if isinstance(given, bool):
            given = "yes" if given else "no"
        if not isinstance(given, str) or given.strip().lower() not in ("yes", "no"):
            raise BadLine(f"{name} answer {answer[1]!r} is not yes or no")
        pairs.append((clean_text(question[1], name).strip(), given.strip().lower()))
    return tuple(pairs)
