"""A procedurally drawn edit-request dataset, so the pipeline runs end to end with no downloads.

Each scene is a small canvas with a coloured background and one to three shapes on a 3x3
grid. Each request asks for one edit in plain words; about half come with pre-edited
candidates: one that follows the instruction and sometimes one that gets it wrong, so critics
see a spread of good and flawed edits. `expected.jsonl` records which candidate is which.
Everything is derived from the seed, so the same seed always gives byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, ImageDraw

CANVAS = 128
_CELL = CANVAS // 3
_HALF = 14  # half the size of a shape, in pixels

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 40),
    "orange": (245, 140, 30),
    "purple": (140, 60, 180),
    "white": (250, 250, 250),
    "black": (25, 25, 25),
    "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle")
_CELLS = tuple((row, col) for row in range(3) for col in range(3))
_PLACES: dict[tuple[int, int], str] = {
    (0, 0): "top left corner",
    (0, 1): "top middle",
    (0, 2): "top right corner",
    (1, 0): "left side",
    (1, 1): "centre",
    (1, 2): "right side",
    (2, 0): "bottom left corner",
    (2, 1): "bottom middle",
    (2, 2): "bottom right corner",
}
_SHAPE_REQUIREMENTS = ("Keep every other shape unchanged.", "Do not change anything else in the picture.")
_BACKGROUND_REQUIREMENTS = ("Do not move or recolour any shape.", "Leave the shapes exactly as they are.")


@dataclass(frozen=True)
class Shape:
    """One drawable shape of a demo scene."""

    kind: str
    colour: str
    cell: tuple[int, int]

    @property
    def name(self) -> str:
        """How instructions refer to the shape."""
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    """A demo image's contents, from which both the image and its edits are drawn."""

    background: str
    shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class Edit:
    """An instruction, the scene that follows it, and a plausible wrong result if the edit has one."""

    instruction: str
    result: Scene
    wrong_target: Scene | None


def write_demo_edit_dataset(dest: Path, n: int = 12, seed: int = 0) -> Path:
    """Write `dest/requests.jsonl`, `dest/expected.jsonl` and PNGs under `dest/images/`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    (dest / "images").mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    expected: list[str] = []
    for index in range(n):
        request, labels = _write_item(dest, index, random.Random(f"firm-demo:{seed}:{index}"))
        requests.append(json.dumps(request, sort_keys=True))
        expected.extend(json.dumps(label, sort_keys=True) for label in labels)
    _write_if_changed(dest / "expected.jsonl", "".join(f"{line}\n" for line in expected).encode())
    path = dest / "requests.jsonl"
    _write_if_changed(path, "".join(f"{line}\n" for line in requests).encode())
    return path


def _write_item(
    dest: Path, index: int, rng: random.Random
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Draw one scene, plan an edit, render candidates; returns the request and its labels."""
    scene = random_scene(rng)
    edit = plan_edit(scene, rng)
    source = f"images/{index:05d}.png"
    _write_if_changed(dest / source, render_scene(scene))
    request: dict[str, object] = {"prompt": edit.instruction, "image": source}
    if rng.random() < 0.4:
        shapes_kept = edit.result.shapes == scene.shapes
        request["requirement"] = rng.choice(_BACKGROUND_REQUIREMENTS if shapes_kept else _SHAPE_REQUIREMENTS)
    if rng.random() >= 0.5:
        return request, []
    candidates: list[tuple[Scene, str | None]] = [(edit.result, None)]
    if rng.random() < 0.5:
        candidates.append(flawed_result(scene, edit, rng))
    rng.shuffle(candidates)
    edited, labels = [], []
    for number, (candidate, flaw) in enumerate(candidates, start=1):
        path = f"images/{index:05d}_edit{number}.png"
        _write_if_changed(dest / path, render_scene(candidate))
        edited.append(path)
        labels.append(
            {"image": source, "edited_image": path, "follows_instruction": flaw is None, "flaw": flaw}
        )
    request["edited_images"] = edited
    return request, labels


def random_scene(rng: random.Random) -> Scene:
    """A coloured background with one to three distinct shapes on distinct grid cells."""
    background = rng.choice(list(COLOURS))
    palette = [colour for colour in COLOURS if colour != background]
    cells = rng.sample(_CELLS, rng.randint(1, 3))
    kinds = rng.sample([(kind, colour) for kind in SHAPES for colour in palette], len(cells))
    return Scene(
        background,
        tuple(Shape(kind, colour, cell) for (kind, colour), cell in zip(kinds, cells, strict=True)),
    )


def plan_edit(scene: Scene, rng: random.Random) -> Edit:
    """One random edit of `scene`: recolour, remove, move, reshape, add or background."""
    planner: Callable[[Scene, random.Random], Edit] = rng.choice(_PLANNERS)
    return planner(scene, rng)


def _recolour(scene: Scene, rng: random.Random) -> Edit:
    index = rng.randrange(len(scene.shapes))
    target = scene.shapes[index]
    taken = {(s.kind, s.colour) for s in scene.shapes}
    options = [
        c for c in COLOURS if c not in (target.colour, scene.background) and (target.kind, c) not in taken
    ]
    colour = rng.choice(options)
    template = rng.choice(
        ("Change the {old} to {new}.", "Make the {old} {new}.", "Recolour the {old} {new}.")
    )
    return Edit(
        template.format(old=target.name, new=colour),
        _replace_shape(scene, index, replace(target, colour=colour)),
        _on_other_shape(scene, index, rng, lambda other: replace(other, colour=colour)),
    )


def _remove(scene: Scene, rng: random.Random) -> Edit:
    index = rng.randrange(len(scene.shapes))
    template = rng.choice(("Remove the {old}.", "Delete the {old} from the picture.", "Take away the {old}."))
    others = len(scene.shapes) > 1
    wrong = (
        _without(scene, rng.choice([i for i in range(len(scene.shapes)) if i != index])) if others else None
    )
    return Edit(template.format(old=scene.shapes[index].name), _without(scene, index), wrong)


def _move(scene: Scene, rng: random.Random) -> Edit:
    index = rng.randrange(len(scene.shapes))
    cell = rng.choice(_free_cells(scene))
    return Edit(
        f"Move the {scene.shapes[index].name} to the {_PLACES[cell]}.",
        _replace_shape(scene, index, replace(scene.shapes[index], cell=cell)),
        _on_other_shape(scene, index, rng, lambda other: replace(other, cell=cell)),
    )


def _reshape(scene: Scene, rng: random.Random) -> Edit:
    taken = {(s.kind, s.colour) for s in scene.shapes}
    choices = [(i, k) for i, s in enumerate(scene.shapes) for k in SHAPES if (k, s.colour) not in taken]
    if not choices:  # every shape kind already exists in this colour: the result would be ambiguous
        return _recolour(scene, rng)
    index, kind = rng.choice(choices)
    target = scene.shapes[index]
    return Edit(
        f"Turn the {target.name} into {_article(target.colour)} {target.colour} {kind}.",
        _replace_shape(scene, index, replace(target, kind=kind)),
        _on_other_shape(scene, index, rng, lambda other: replace(other, kind=kind)),
    )


def _add(scene: Scene, rng: random.Random) -> Edit:
    taken = {(s.kind, s.colour) for s in scene.shapes}
    kind, colour = rng.choice(
        [(k, c) for k in SHAPES for c in COLOURS if c != scene.background and (k, c) not in taken]
    )
    cell, wrong_cell = rng.sample(_free_cells(scene), 2)
    template = rng.choice(("Add {a} {name} {where}.", "Put {a} {name} {where}."))
    return Edit(
        template.format(a=_article(colour), name=f"{colour} {kind}", where=_at(cell)),
        replace(scene, shapes=(*scene.shapes, Shape(kind, colour, cell))),
        replace(scene, shapes=(*scene.shapes, Shape(kind, colour, wrong_cell))),
    )


def _background(scene: Scene, rng: random.Random) -> Edit:
    used = {scene.background} | {s.colour for s in scene.shapes}
    colour, wrong_colour = rng.sample([c for c in COLOURS if c not in used], 2)
    template = rng.choice(("Make the background {new}.", "Change the background colour to {new}."))
    return Edit(
        template.format(new=colour),
        replace(scene, background=colour),
        replace(scene, background=wrong_colour),
    )


_PLANNERS: tuple[Callable[[Scene, random.Random], Edit], ...] = (
    _recolour,
    _remove,
    _move,
    _reshape,
    _add,
    _background,
)


def flawed_result(source: Scene, edit: Edit, rng: random.Random) -> tuple[Scene, str]:
    """A wrong candidate: edit the wrong thing, do nothing, or also disturb an untouched shape."""
    options: list[tuple[Scene, str]] = [(source, "not executed")]
    if edit.wrong_target is not None:
        options.append((edit.wrong_target, "wrong target"))
    untouched = [i for i, s in enumerate(edit.result.shapes) if s in source.shapes]
    free = _free_cells(edit.result)
    if untouched and free:
        index = rng.choice(untouched)
        moved = replace(edit.result.shapes[index], cell=rng.choice(free))
        options.append((_replace_shape(edit.result, index, moved), "also moved another shape"))
    return rng.choice(options)


def _on_other_shape(
    scene: Scene, index: int, rng: random.Random, change: Callable[[Shape], Shape]
) -> Scene | None:
    """The same change applied to a shape the instruction did not name (None if there is none)."""
    others = [i for i, s in enumerate(scene.shapes) if i != index and change(s) != s]
    if not others:
        return None
    other = rng.choice(others)
    return _replace_shape(scene, other, change(scene.shapes[other]))


def _replace_shape(scene: Scene, index: int, shape: Shape) -> Scene:
    return replace(scene, shapes=tuple(shape if i == index else s for i, s in enumerate(scene.shapes)))


def _without(scene: Scene, index: int) -> Scene:
    return replace(scene, shapes=tuple(s for i, s in enumerate(scene.shapes) if i != index))


def _free_cells(scene: Scene) -> list[tuple[int, int]]:
    used = {s.cell for s in scene.shapes}
    return [cell for cell in _CELLS if cell not in used]


def _at(cell: tuple[int, int]) -> str:
    place = _PLACES[cell]
    return f"{'on' if place.endswith('side') else 'in'} the {place}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def render_scene(scene: Scene) -> bytes:
    """Draw the scene and encode it as a PNG with no metadata, so bytes depend only on pixels."""
    image = Image.new("RGB", (CANVAS, CANVAS), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        row, col = shape.cell
        cx, cy = col * _CELL + _CELL // 2, row * _CELL + _CELL // 2
        box = (cx - _HALF, cy - _HALF, cx + _HALF, cy + _HALF)
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - _HALF), (cx + _HALF, cy + _HALF), (cx - _HALF, cy + _HALF)], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Idempotent write: leave identical files untouched (stable mtimes for change detection)."""
    if path.exists() and path.read_bytes() == data:
        return
    path.write_bytes(data)


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m firm_assets.edit.demo DEST --n 12 --seed 0`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_demo_edit_dataset(args.dest, n=args.n, seed=args.seed))


if __name__ == "__main__":
    main()
