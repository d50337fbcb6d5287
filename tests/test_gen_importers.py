"""Prompt importers on the real shared prompt sets and on malformed files."""

import json
from pathlib import Path

import pytest

from firm_assets.gen.coverage import checklist_coverage, ground_truth_facts
from firm_assets.gen.importers import normalise, read_prompts

PROMPTS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "prompts"


@pytest.mark.parametrize(
    ("name", "count"), [("drawbench.txt", 200), ("geneval_metadata.jsonl", 553), ("ocr.txt", 1018)]
)
def test_shared_prompt_sets_import_cleanly(name: str, count: int) -> None:
    prompts, bad, duplicates = read_prompts(PROMPTS / name)
    assert (len(prompts), bad, duplicates) == (count, [], 0)
    assert len({p.prompt_id for p in prompts}) == count


def test_geneval_metadata_is_kept_as_ground_truth() -> None:
    prompts, _, _ = read_prompts(PROMPTS / "geneval_metadata.jsonl")
    first = prompts[0]
    assert first.prompt == "a photo of two wine glasses" and first.tag == "counting"
    spec = json.loads(first.geneval)
    assert spec["include"] == [{"class": "wine glass", "count": 2}]
    assert ("count", "wine glass", "2") in ground_truth_facts(first.geneval)
    positional = next(p for p in prompts if "position" in (p.geneval or ""))
    assert any(fact[0] == "position" for fact in ground_truth_facts(positional.geneval))


def test_json_list_with_key_variants_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(
        json.dumps(
            [
                {"input_prompt": "A red fox in snow."},
                {"prompt": "a red  fox in SNOW"},  # the same after normalisation
                {"caption": "Two boats"},
                {"text": "A kite"},
                "A bare string prompt",
                {"title": "no prompt key"},
                {"prompt": ""},
                {"prompt": 42},
                ["not", "an", "object"],
            ]
        )
    )
    prompts, bad, duplicates = read_prompts(path)
    assert [p.prompt for p in prompts] == [
        "A red fox in snow.",
        "Two boats",
        "A kite",
        "A bare string prompt",
    ]
    assert duplicates == 1
    assert [q.locator for q in bad] == ["item 5", "item 6", "item 7", "item 8"]
    assert normalise("A red  FOX in snow!") == normalise("a red fox in snow")


def test_malformed_lines_are_quarantined(tmp_path: Path) -> None:
    jsonl = tmp_path / "meta.jsonl"
    jsonl.write_bytes(
        b'{"tag": "t", "include": [{"class": "cat", "count": 2}], "prompt": "two cats"}\n'
        b'{"prompt": "broken\n'
        b'{"include": [], "prompt": "nothing to include"}\n'
        b'{"include": [{"count": 1}], "prompt": "no class"}\n'
        b'{"include": [{"class": "dog", "count": -1}], "prompt": "negative"}\n'
        b'{"prompt": "caf\xe9"}\n'
        b"\n"
        b'{"prompt": "' + b"x" * 3000 + b'"}\n'
    )
    prompts, bad, _ = read_prompts(jsonl)
    assert [p.prompt for p in prompts] == ["two cats"]
    reasons = {q.locator: q.reason for q in bad}
    assert set(reasons) == {"line 2", "line 3", "line 4", "line 5", "line 6", "line 8"}
    assert (
        "malformed JSON" in reasons["line 2"]
        and "UTF-8" in reasons["line 6"]
        and "too long" in reasons["line 8"]
    )
    text = tmp_path / "plain.txt"
    text.write_bytes(b"a cat\n\xff\xfe bad bytes\n\n   \na dog\n")
    prompts, bad, _ = read_prompts(text)
    assert [p.prompt for p in prompts] == ["a cat", "a dog"] and [q.locator for q in bad] == ["line 2"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"not": "a list"}')
    prompts, bad, _ = read_prompts(broken)
    assert prompts == [] and "must hold a list" in bad[0].reason


def test_checklist_coverage_counts_stated_facts() -> None:
    geneval = json.dumps({"include": [{"class": "apple", "count": 3, "color": "red"}], "exclude": []})
    full = [{"item": "three red apples", "question": "Are there three apples?"}]
    partial = [{"item": "apples", "question": "Are there apples?"}]
    assert checklist_coverage(geneval, full) == 1.0
    assert checklist_coverage(geneval, partial) == pytest.approx(1 / 3)
    assert checklist_coverage(geneval, [{"item": "a pineapple", "question": "Is there a pineapple?"}]) == 0.0
