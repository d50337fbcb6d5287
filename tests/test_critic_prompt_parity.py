"""The same critic text at training and at serving: one edit sample whose instruction holds a literal
`<image>` (and the export's old escaped form `<\\image>`) rendered by the ShareGPT training export (as
LLaMA-Factory loads it, by a byte-level copy of its placeholder rule, and as the project's reader
loads it), by the bench (`score_with_critic`) and by serving (`CriticScorer`, what `firm serve`
runs): the system and user text are the same bytes everywhere. Bench and serving send their requests
over real HTTP to a loopback judge, which records what it was sent."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from loopback import LoopbackServer, completion
from PIL import Image

from firm_assets.critics.inference import score_with_critic, tasks_for
from firm_assets.critics.scoring import CriticScorer, EditQuery
from firm_assets.curation.dataset import publish_dataset
from firm_assets.curation.sharegpt import INFO_FILE, read_task
from firm_assets.edit.dataset import TASKS as EDIT_TASKS
from resources.openai_backend import OpenAIBackend
from warehouse.connection import Warehouse

INSTRUCTION = "Write <image> on the sign, and <\\image> below it"
IMAGE_PLACEHOLDER = "<image>"  # LLaMA-Factory's IMAGE_PLACEHOLDER (src/llamafactory/extras/constants.py)


def llama_factory_text(content: str, n_images: int) -> str:
    """What LLaMA-Factory makes of a user message, by its rule (src/llamafactory/data/mm_plugin.py):
    the number of "<image>" in the message must equal the record's images (`_validate_messages`), and
    each one, left to right, becomes the image's vision tokens (`Qwen2VLPlugin.process_messages`);
    every other byte stays. Returned: the text around the images, as the model reads it."""
    if content.count(IMAGE_PLACEHOLDER) != n_images:
        raise ValueError("The number of images does not match the number of <image> tokens")
    return content.replace(IMAGE_PLACEHOLDER, "")


@pytest.fixture
def judge() -> Iterator[tuple[LoopbackServer, list[dict[str, Any]]]]:
    """A judge over real HTTP that answers a score and keeps every request it was sent."""
    sent: list[dict[str, Any]] = []

    def handler(payload: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        sent.append(payload)
        return 200, {}, completion('{"reasoning": "done", "score": 4}')

    server = LoopbackServer(handler)
    yield server, sent
    server.close()


def sent_text(payload: dict[str, Any]) -> tuple[str | None, str, int]:
    """(system, user text, images) of one chat request as the OpenAI-compatible client sent it."""
    messages = payload["messages"]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    user = messages[-1]["content"]
    text = "".join(part["text"] for part in user if part["type"] == "text")
    return system, text, sum(part["type"] == "image_url" for part in user)


def test_export_bench_and_serving_render_the_same_bytes(
    judge: tuple[LoopbackServer, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, sent = judge
    monkeypatch.setenv("FIRM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FIRM_TEMPLATE_DIR", raising=False)
    paths = {}
    for name, colour in (("source", "red"), ("edited", "blue")):
        paths[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (32, 32), colour).save(paths[name])
    sha = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in paths.items()}

    # training export, then LLaMA-Factory's reading of it and the project's own
    row = {
        "sample_id": "s1",
        "source": "editor",
        "instruction": INSTRUCTION,
        "requirement": None,
        "source_sha": sha["source"],
        "source_path": str(paths["source"]),
        "edited_sha": sha["edited"],
        "edited_path": str(paths["edited"]),
        "execution_score": 4.0,
        "execution_reasoning": "done",
        "consistency_score": 5.0,
        "consistency_reasoning": "nothing else",
        "cache_keys": ["k1"],
    }
    warehouse = Warehouse(tmp_path / "home" / "warehouse.duckdb")
    published = publish_dataset(
        "firm_edit",
        pl.DataFrame([row]),
        EDIT_TASKS,
        {},
        [("synthetic", "v0")],
        warehouse,
        None,
        lambda *_: None,
    )
    info = json.loads((tmp_path / "home" / "datasets" / INFO_FILE).read_text())
    entry = info[f"edit_execution@{published.version}"]
    (record,) = json.loads((tmp_path / "home" / "datasets" / entry["file_name"]).read_text())
    system_turn, user_turn = record["messages"][0]["content"], record["messages"][1]["content"]
    exported = llama_factory_text(user_turn, len(record["images"]))
    (read,) = read_task(published.folder, "edit_execution")
    assert read.system == system_turn and read.user[2] == exported

    # bench: the critic prompt of a bench item, asked over HTTP
    items = pl.DataFrame(
        [
            {
                "item_id": "b1",
                "text": INSTRUCTION,
                "images": [str(paths["source"]), str(paths["edited"])],
                "image_shas": [sha["source"], sha["edited"]],
            }
        ]
    )
    execution = next(task for task in tasks_for("edit") if task.dimension == "execution")
    backend = OpenAIBackend(server.base_url, "parity-judge", revision="r1")
    score_with_critic(backend, execution, items, warehouse, 32, 1, None, expectation=False)
    bench = sent_text(sent[-1])

    # serving: CriticScorer, what `firm serve` runs, with no requirement given
    scorer = CriticScorer(backend, "parity")
    pictures = {name: Image.open(path) for name, path in paths.items()}
    scorer.score_edit([EditQuery(pictures["source"], pictures["edited"], INSTRUCTION)], mode="parsed")
    serving = [sent_text(payload) for payload in sent[1:]]  # execution and consistency, concurrently
    (served_execution,) = [text for text in serving if "Was the requested change carried out?" in text[1]]

    assert bench == served_execution == (system_turn, exported, 2)
    assert "< image>" in exported and IMAGE_PLACEHOLDER not in exported
