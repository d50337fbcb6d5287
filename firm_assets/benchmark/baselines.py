"""The constant baseline: a judge that always answers the median training label of a dimension.

A critic that learned only the label distribution of its training data scores about as well as
this judge, so a leaderboard needs it to show whether a critic learned anything about the images.
The median, not the mean: the constant that minimises the mean absolute error (the bench's metric)
is the median, so it is the strongest constant a critic must beat (on the demo bench the median 4
scores MAE 1.125 where the mean scores 1.443, and a critic answering 4 on all but one item would
beat the mean). `statistics.median_low`, so the constant answers a whole score as a critic does;
between the two middle labels every value has the same training MAE.
It needs no model and no cache: its answers are read from the critic's exact dataset version.
"""

from __future__ import annotations

import statistics

import polars as pl

from warehouse.connection import Warehouse

# The training Parquet column holding each bench dimension's label, by dataset.
LABEL_COLUMNS = {
    "firm_edit": {"execution": "execution_score", "consistency": "consistency_score"},
    "firm_gen": {"instruction": "if_score"},
}


class BaselineUnavailable(ValueError):
    """The critic's training data cannot give a constant baseline (the reason is the message)."""


def median_labels(warehouse: Warehouse, dataset: str, dataset_version: str) -> dict[str, float]:
    """Median training label per bench dimension of one dataset version. Labels are rounded to whole
    scores first, as the SFT targets the critic learned from are (`round`, like the exporter)."""
    if dataset not in LABEL_COLUMNS:
        raise BaselineUnavailable(f"no label columns known for dataset {dataset!r}")
    rows = warehouse.rows(
        "SELECT parquet_path FROM dataset_versions WHERE dataset = ? AND version = ?",
        [dataset, dataset_version],
    )
    if not rows:
        raise BaselineUnavailable(f"dataset {dataset} version {dataset_version} is not in the warehouse")
    columns = LABEL_COLUMNS[dataset]
    missing = [column for column in columns.values() if column not in pl.read_parquet_schema(rows[0][0])]
    if missing:  # a version imported from released files: their answers are not read as scores
        raise BaselineUnavailable(
            f"dataset {dataset} version {dataset_version} has no {', '.join(missing)} labels (imported?)"
        )
    training = pl.read_parquet(rows[0][0], columns=list(columns.values()))
    medians = {}
    for dimension, column in columns.items():
        labels = [round(value) for value in training[column].drop_nulls()]
        if not labels:
            raise BaselineUnavailable(f"dataset {dataset} version {dataset_version} has no {column} labels")
        medians[dimension] = float(statistics.median_low(labels))
    return medians
