"""A procedurally drawn FIRM-Bench (both sides) with human-style labels, to benchmark critics offline.

Edit items reuse the edit demo's scenes, edits and flawed results (`firm_assets.edit.demo`); their
labels follow from the ground truth the way a careful annotator applies the FIRM rubrics. Gen
items are simple shape prompts, drawn correctly, with a wrong count or colour, or unrelated; each
also carries checklist labels (the prompt's requirements as yes/no questions, answered from the
drawing) for measuring a plan-then-score critic's item agreement.
Images are drawn at twice the demo canvas, so none can coincide byte for byte with the demo edit
dataset's, and everything derives from the seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from firm_assets.benchmark.importer import ITEMS_FILE, LABELS_FILE
from firm_assets.edit.demo import (
    COLOURS,
    SHAPES,
    Scene,
    Shape,
    flawed_result,
    plan_edit,
    random_scene,
    render_scene,
)

SCALE = 2
EDITORS = ("demo-editor-a", "demo-editor-b", "demo-editor-c")
# (execution, consistency) for each flaw of the edit demo, by the FIRM rubrics.
_FLAW_LABELS: dict[str | None, tuple[int, int]] = {
    None: (5, 5),
    "not executed": (1, 5),
    "wrong target": (1, 2),
    "also moved another shape": (5, 3),
}
# A wrong target that is still the requested change, misplaced or mis-coloured, disturbs nothing else.
_WRONG_TARGET_BY_KIND = {"add": (3, 5), "background": (1, 5)}
_STRICT_EVERY = 3  # every third correct edit gets consistency 4: annotators are not all lenient
_GEN_CATEGORIES = ("counting", "colors", "color_attr", "position")
_GEN_OUTCOMES = {"correct": 5, "wrong count": 3, "wrong colour": 2, "unrelated": 1}
_NUMBERS = {2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class _DemoItem:
    record: dict[str, object]
    label: dict[str, object]
    scenes: dict[str, Scene]  # relative image path -> what it shows


def write_demo_bench(dest: Path, n_edit: int = 16, n_gen: int = 12, seed: int = 7) -> Path:
    """Write `dest/edit` and `dest/gen`, each with bench_v1.jsonl, result/human_bench_v1.jsonl and images/."""
    if n_edit < 0 or n_gen < 0:
        raise ValueError(f"n_edit and n_gen must be >= 0, got {n_edit} and {n_gen}")
    _write_side(
        dest / "edit", [_edit_item(i, random.Random(f"firm-bench-edit:{seed}:{i}")) for i in range(n_edit)]
    )
    _write_side(
        dest / "gen", [_gen_item(i, random.Random(f"firm-bench-gen:{seed}:{i}")) for i in range(n_gen)]
    )
    return dest


def edit_kind(source: Scene, result: Scene) -> str:
    """The edit type read off the ground truth (the planner may fall back from one type to another)."""
    if result.background != source.background:
        return "background"
    if len(result.shapes) != len(source.shapes):
        return "add" if len(result.shapes) > len(source.shapes) else "remove"
    before, after = next((a, b) for a, b in zip(source.shapes, result.shapes, strict=True) if a != b)
    if before.colour != after.colour:
        return "recolour"
    return "move" if before.cell != after.cell else "reshape"


def _edit_item(index: int, rng: random.Random) -> _DemoItem:
    """Even items are edited correctly, odd ones carry one of the demo's flaws."""
    source = random_scene(rng)
    edit = plan_edit(source, rng)
    result, flaw = (edit.result, None) if index % 2 == 0 else flawed_result(source, edit, rng)
    kind = edit_kind(source, edit.result)
    execution, consistency = _edit_label(kind, flaw, strict=(index // 2) % _STRICT_EVERY == _STRICT_EVERY - 1)
    item_id = f"edit-{index:04d}"
    images = {f"images/{item_id}_source.png": source, f"images/{item_id}_edited.png": result}
    return _DemoItem(
        record={
            "id": item_id,
            "instruction": edit.instruction,
            "image": list(images),
            "category": kind,
            "model": rng.choice(EDITORS),
        },
        label={"id": item_id, "execution": {"score": [execution]}, "consistency": {"score": [consistency]}},
        scenes=images,
    )


def _edit_label(kind: str, flaw: str | None, strict: bool) -> tuple[int, int]:
    """(execution, consistency) a careful annotator gives this kind of edit with this flaw."""
    if flaw == "wrong target" and kind in _WRONG_TARGET_BY_KIND:
        return _WRONG_TARGET_BY_KIND[kind]
    execution, consistency = _FLAW_LABELS[flaw]
    return execution, 4 if strict and flaw is None else consistency


def _gen_item(index: int, rng: random.Random) -> _DemoItem:
    """Categories cycle; outcomes are shifted every round so each category sees every outcome."""
    category = _GEN_CATEGORIES[index % len(_GEN_CATEGORIES)]
    outcome = list(_GEN_OUTCOMES)[(index + index // len(_GEN_CATEGORIES)) % len(_GEN_OUTCOMES)]
    prompt, target = _PROMPTS[category](rng)
    drawn = _OUTCOMES[outcome](target, rng)
    item_id = f"gen-{index:04d}"
    path = f"images/{item_id}.png"
    return _DemoItem(
        record={"id": item_id, "prompt": prompt, "image": [path], "category": category},
        label={
            "id": item_id,
            "instruction_following": {"score": [_GEN_OUTCOMES[outcome]]},
            "checklist": checklist_labels(target, drawn, relation=category == "position"),
        },
        scenes={path: drawn},
    )


def checklist_labels(asked: Scene, drawn: Scene, relation: bool) -> list[dict[str, str]]:
    """The prompt's requirements as yes/no questions, answered from what was drawn: the background,
    the exact count of each (colour, shape), and with `relation` where the first shape sits relative
    to the second (same row: left of; same column: above, as `_position` draws them)."""
    labels = [_label(f"Is the background plain {asked.background}?", drawn.background == asked.background)]
    groups: dict[tuple[str, str], int] = {}
    for shape in asked.shapes:
        groups[(shape.kind, shape.colour)] = groups.get((shape.kind, shape.colour), 0) + 1
    for (kind, colour), count in groups.items():
        question = (
            f"Is there exactly one {colour} {kind}?"
            if count == 1
            else f"Are there exactly {_NUMBERS[count]} {colour} {kind}s?"
        )
        found = sum((s.kind, s.colour) == (kind, colour) for s in drawn.shapes)
        labels.append(_label(question, found == count))
    if relation:
        first, second = asked.shapes
        same_row = first.cell[0] == second.cell[0]
        question = f"Is the {first.name} {'to the left of' if same_row else 'above'} the {second.name}?"
        a = [s.cell for s in drawn.shapes if s.name == first.name]
        b = [s.cell for s in drawn.shapes if s.name == second.name]
        axis = 1 if same_row else 0
        labels.append(_label(question, len(a) == len(b) == 1 and a[0][axis] < b[0][axis]))
    return labels


def _label(question: str, holds: bool) -> dict[str, str]:
    return {"question": question, "answer": "yes" if holds else "no"}


def _counting(rng: random.Random) -> tuple[str, Scene]:
    background = _background(rng)
    (kind, colour), count = _shape_kinds(rng, 1, background)[0], rng.randint(2, 4)
    shapes = tuple(Shape(kind, colour, cell) for cell in _cells(rng, count))
    return f"{_NUMBERS[count]} {colour} {kind}s on a plain {background} background", Scene(background, shapes)


def _colors(rng: random.Random) -> tuple[str, Scene]:
    background = _background(rng)
    (kind, colour), cell = _shape_kinds(rng, 1, background)[0], _cells(rng, 1)[0]
    return f"one {colour} {kind} on a plain {background} background", Scene(
        background, (Shape(kind, colour, cell),)
    )


def _color_attr(rng: random.Random) -> tuple[str, Scene]:
    background = _background(rng)
    (kind_a, colour_a), (kind_b, colour_b) = _shape_kinds(rng, 2, background)
    cell_a, cell_b = _cells(rng, 2)
    scene = Scene(background, (Shape(kind_a, colour_a, cell_a), Shape(kind_b, colour_b, cell_b)))
    return f"one {colour_a} {kind_a} and one {colour_b} {kind_b} on a plain {background} background", scene


def _position(rng: random.Random) -> tuple[str, Scene]:
    """Two shapes on one row (left of) or one column (above)."""
    background = _background(rng)
    (kind_a, colour_a), (kind_b, colour_b) = _shape_kinds(rng, 2, background)
    line, (first, second) = rng.randrange(3), sorted(rng.sample(range(3), 2))
    if rng.random() < 0.5:
        relation, cell_a, cell_b = "to the left of", (line, first), (line, second)
    else:
        relation, cell_a, cell_b = "above", (first, line), (second, line)
    scene = Scene(background, (Shape(kind_a, colour_a, cell_a), Shape(kind_b, colour_b, cell_b)))
    return (
        f"one {colour_a} {kind_a} {relation} one {colour_b} {kind_b} on a plain {background} background",
        scene,
    )


def _background(rng: random.Random) -> str:
    return rng.choice(list(COLOURS))


def _shape_kinds(rng: random.Random, n: int, background: str) -> list[tuple[str, str]]:
    """`n` (kind, colour) pairs, all kinds and colours distinct, none in the background colour."""
    colours = [colour for colour in COLOURS if colour != background]
    return list(zip(rng.sample(SHAPES, n), rng.sample(colours, n), strict=True))


def _cells(rng: random.Random, n: int) -> list[tuple[int, int]]:
    """`n` distinct cells of the demo's 3x3 grid."""
    return [divmod(cell, 3) for cell in rng.sample(range(9), n)]


def _correct(scene: Scene, rng: random.Random) -> Scene:
    return scene


def _wrong_count(scene: Scene, rng: random.Random) -> Scene:
    """One shape too many of the first kind, or one too few where at least two were asked for."""
    first = scene.shapes[0]
    group = [s for s in scene.shapes if (s.kind, s.colour) == (first.kind, first.colour)]
    if len(group) > 1 and rng.random() < 0.5:
        return replace(scene, shapes=tuple(s for s in scene.shapes if s != group[-1]))
    taken = {s.cell for s in scene.shapes}
    cell = next(cell for cell in _cells(rng, 9) if cell not in taken)
    return replace(scene, shapes=(*scene.shapes, replace(first, cell=cell)))


def _wrong_colour(scene: Scene, rng: random.Random) -> Scene:
    first = scene.shapes[0]
    used = {scene.background} | {s.colour for s in scene.shapes}
    colour = rng.choice([c for c in COLOURS if c not in used])
    return replace(
        scene,
        shapes=tuple(replace(s, colour=colour) if s.colour == first.colour else s for s in scene.shapes),
    )


def _unrelated(scene: Scene, rng: random.Random) -> Scene:
    """A random scene sharing neither the background nor any (shape, colour) with the prompt."""
    asked = {(s.kind, s.colour) for s in scene.shapes}
    while True:
        other = random_scene(rng)
        if other.background != scene.background and not asked & {(s.kind, s.colour) for s in other.shapes}:
            return other


_PROMPTS: dict[str, Callable[[random.Random], tuple[str, Scene]]] = {
    "counting": _counting,
    "colors": _colors,
    "color_attr": _color_attr,
    "position": _position,
}
_OUTCOMES: dict[str, Callable[[Scene, random.Random], Scene]] = {
    "correct": _correct,
    "wrong count": _wrong_count,
    "wrong colour": _wrong_colour,
    "unrelated": _unrelated,
}


def _write_side(side_dir: Path, items: list[_DemoItem]) -> None:
    (side_dir / "images").mkdir(parents=True, exist_ok=True)
    (side_dir / LABELS_FILE).parent.mkdir(parents=True, exist_ok=True)
    for item in items:
        for relative, scene in item.scenes.items():
            (side_dir / relative).write_bytes(_png(scene))
    (side_dir / ITEMS_FILE).write_text(_jsonl(item.record for item in items), encoding="utf-8")
    (side_dir / LABELS_FILE).write_text(_jsonl(item.label for item in items), encoding="utf-8")


def _png(scene: Scene) -> bytes:
    """The demo drawing scaled up (nearest neighbour, so pixels stay flat), as metadata-free PNG."""
    with Image.open(io.BytesIO(render_scene(scene))) as small:
        image = small.resize((small.width * SCALE, small.height * SCALE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _jsonl(records: Iterable[dict[str, object]]) -> str:
    return "".join(f"{json.dumps(record, sort_keys=True)}\n" for record in records)


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m firm_assets.benchmark.demo DEST --n-edit 16 --n-gen 12 --seed 7`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--n-edit", type=int, default=16)
    parser.add_argument("--n-gen", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    print(write_demo_bench(args.dest, n_edit=args.n_edit, n_gen=args.n_gen, seed=args.seed))


if __name__ == "__main__":
    main()
