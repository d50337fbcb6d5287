"""Prompt importers on the real shared prompt sets and on malformed files."""

import json
from pathlib import Path

import pytest

from firm_assets.gen.coverage import checklist_coverage, ground_truth_facts
from firm_assets.gen.importers import normalise, read_prompts


@pytest.mark.parametrize(
    ("name", "count"), [("drawbench.txt", 200), ("geneval_metadata.jsonl", 553), ("ocr.txt", 1018)]
)
def test_shared_prompt_sets_import_cleanly(name: str, count: int, shared_data: Path) -> None:
    imported = read_prompts(shared_data / "prompts" / name)
    assert (len(imported.prompts), imported.bad, imported.duplicates) == (count, [], [])
    assert len({p.prompt_id for p in imported.prompts}) == count


def test_geneval_metadata_is_kept_as_ground_truth(shared_data: Path) -> None:
    prompts = read_prompts(shared_data / "prompts" / "geneval_metadata.jsonl").prompts
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
    imported = read_prompts(path)
    assert [p.prompt for p in imported.prompts] == [
        "A red fox in snow.",
        "Two boats",
        "A kite",
        "A bare string prompt",
    ]
    assert [p.locator for p in imported.prompts] == ["record 1", "record 3", "record 4", "record 5"]
    assert [(q.locator, q.reason) for q in imported.duplicates] == [("record 2", "duplicate of record 1")]
    assert imported.duplicates[0].raw == '{"prompt": "a red  fox in SNOW"}'
    assert [q.locator for q in imported.bad] == ["record 6", "record 7", "record 8", "record 9"]
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
    imported = read_prompts(jsonl)
    assert [p.prompt for p in imported.prompts] == ["two cats"]
    reasons = {q.locator: q.reason for q in imported.bad}
    assert set(reasons) == {"line 2", "line 3", "line 4", "line 5", "line 6", "line 8"}
    assert (
        "malformed JSON" in reasons["line 2"]
        and "UTF-8" in reasons["line 6"]
        and "too long" in reasons["line 8"]
    )
    text = tmp_path / "plain.txt"
    text.write_bytes(b"a cat\n\xff\xfe bad bytes\n\n   \na dog\n")
    imported = read_prompts(text)
    assert [p.prompt for p in imported.prompts] == ["a cat", "a dog"]
    assert [q.locator for q in imported.bad] == ["line 2"]
    broken = tmp_path / "broken.json"
    broken.write_text('{"not": "a list"}')
    imported = read_prompts(broken)
    assert imported.prompts == []
    assert [(q.locator, q.reason) for q in imported.bad] == [("file", "a JSON prompt file must hold a list")]


def test_checklist_coverage_counts_stated_facts() -> None:
    geneval = json.dumps({"include": [{"class": "apple", "count": 3, "color": "red"}], "exclude": []})
    full = [{"item": "three red apples", "question": "Are there three apples?"}]
    partial = [{"item": "apples", "question": "Are there apples?"}]
    assert checklist_coverage(geneval, full) == 1.0
    assert checklist_coverage(geneval, partial) == pytest.approx(1 / 3)
    assert checklist_coverage(geneval, [{"item": "a pineapple", "question": "Is there a pineapple?"}]) == 0.0
