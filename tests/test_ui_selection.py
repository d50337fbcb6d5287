"""The selection `bench/ui_materialize.py` launches through the webserver: the main job's assets and
checks, derived from the job's definition, so the UI run does the same work as `firm run main` (the
inbox group, partitioned by file, stays out)."""

from typing import Any

import pytest
from dagster_dev import Selection, job_nodes, job_selection, node_selection

from firm_assets.definitions import defs
from jobs.curation import INBOX_GROUP


def node(path: str, *checks: str) -> dict[str, Any]:
    """An asset node as the webserver's GraphQL `assetNodes` lists it (None: an asset without checks)."""
    listed = {"checks": [{"name": name} for name in checks]} if checks else None
    return {
        "assetKey": {"path": path.split("/")},
        "repository": {"name": "__repository__", "location": {"name": "firm"}},
        "assetChecksOrError": listed,
    }


def served_nodes() -> list[dict[str, Any]]:
    """Every asset of the code location with its checks, shaped as the webserver serves them."""
    graph = defs.resolve_asset_graph()
    return [
        node(key.to_user_string(), *sorted(check.name for check in graph.get(key).check_keys))
        for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())
    ]


def test_node_selection_reads_assets_and_checks() -> None:
    nodes = [node("a", "rows", "schema"), node("b"), node("c/d", "rows")]
    assert node_selection(nodes) == Selection(
        assets=frozenset({("a",), ("b",), ("c", "d")}),
        checks=frozenset({(("a",), "rows"), (("a",), "schema"), (("c", "d"), "rows")}),
    )


def test_differences_name_both_sides() -> None:
    here = Selection(assets=frozenset({("a",), ("b",)}), checks=frozenset({(("a",), "rows")}))
    there = Selection(assets=frozenset({("a",), ("c",)}), checks=frozenset())
    assert here.differences(there) == (
        "only in this selection: [('b',), (('a',), 'rows')]; only in the other: [('c',)]"
    )


def test_main_job_selection_is_every_asset_but_the_inbox_group() -> None:
    graph = defs.resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    inbox = {key for key in keys if graph.get(key).group_name == INBOX_GROUP}
    assert {key.to_user_string() for key in inbox} == {"edit_inbox_requests", "gen_inbox_prompts"}
    main = job_selection("main")
    assert main.assets == {tuple(key.path) for key in keys - inbox}
    checks = graph.asset_check_keys
    assert main.checks == {(tuple(c.asset_key.path), c.name) for c in checks if c.asset_key not in inbox}
    assert len(main.checks) > 0


def test_the_launch_is_the_main_jobs_work() -> None:
    """From everything the webserver lists, the bench keeps the main job's assets, in order, and their
    checks: exactly the main job's selection, the inbox assets left out."""
    nodes = served_nodes()
    chosen = job_nodes(nodes, "main")
    assert node_selection(chosen) == job_selection("main")
    left_out = [n["assetKey"]["path"] for n in nodes if n not in chosen]
    assert left_out == [["edit_inbox_requests"], ["gen_inbox_prompts"]]
    assert chosen == [n for n in nodes if n["assetKey"]["path"] not in left_out]


def test_a_launch_missing_a_check_is_refused() -> None:
    """When the webserver does not list one of the job's checks, the launch would skip it: refused."""
    nodes = served_nodes()
    with_checks = next(i for i, n in enumerate(nodes) if n["assetChecksOrError"])
    dropped = nodes[with_checks]["assetChecksOrError"]["checks"].pop()["name"]
    with pytest.raises(
        ValueError, match=f"not job main's work: only in this selection: \\[\\]; .*'{dropped}'"
    ):
        job_nodes(nodes, "main")


def test_a_webserver_without_one_of_the_jobs_assets_is_refused() -> None:
    nodes = [n for n in served_nodes() if n["assetKey"]["path"] != ["bench_results"]]
    with pytest.raises(ValueError, match=r"only in the other: \[\('bench_results',\)"):
        job_nodes(nodes, "main")
