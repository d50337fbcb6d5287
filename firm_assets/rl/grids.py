"""Sample grids for MLflow: one row per prompt group, so a reviewer sees what the policy draws for
the same prompt side by side (editing rows start with the source image)."""

from collections.abc import Sequence

from PIL import Image

from firm_assets.rl.nft.records import Rollout

TILE = 128  # px per image in the grid, whatever the rollout size


def sample_grid(rollouts: Sequence[Rollout], tile: int = TILE) -> Image.Image:
    """Rows in order of each group's first rollout; within a row the group's rollouts in order,
    after the editing source when there is one."""
    if not rollouts:
        raise ValueError("no rollouts to draw")
    rows: dict[str, list[Image.Image]] = {}
    for rollout in rollouts:
        row = rows.setdefault(rollout.prompt_id, [rollout.source] if rollout.source is not None else [])
        row.append(rollout.image)
    width = max(len(row) for row in rows.values())
    grid = Image.new("RGB", (width * tile, len(rows) * tile), "white")
    for y, row in enumerate(rows.values()):
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((tile, tile)), (x * tile, y * tile))
    return grid
