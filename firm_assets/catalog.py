"""What the UI's catalog shows for every asset, applied in one place rather than per decorator: a
code reference to the file and line that defines it (so an asset's name leads to its code in one
click) and an owner. Kinds stay on the decorators, where they say which engines an asset uses."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from dagster import AssetsDefinition, AssetSpec, BetaWarning, map_asset_specs, with_source_code_references

OWNER = "team:firm"


def _owned(spec: AssetSpec) -> AssetSpec:
    return spec if spec.owners else spec.replace_attributes(owners=[OWNER])


def catalogued(assets: Sequence[AssetsDefinition]) -> list[AssetsDefinition]:
    """Every asset with its source code reference and an owner (the team unless it names one)."""
    with warnings.catch_warnings():
        # code references are a beta API in Dagster 1.13 (pinned in pyproject)
        warnings.simplefilter("ignore", BetaWarning)
        referenced = with_source_code_references(list(assets))
    return list(map_asset_specs(_owned, referenced))
