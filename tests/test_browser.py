"""The Dagster UI in a real browser: `dagster dev` on loopback, headless Chromium (the system's, never
a downloaded build) driven by Playwright. It opens the asset graph, materializes one asset from its
page by clicking the UI's own Materialize button, waits for the run to succeed, reads the rows from
the warehouse and keeps a screenshot of the finished run."""

import re
import shutil
import time
from pathlib import Path

import pytest
from dagster_dev import DagsterDev, step_processes

from warehouse.connection import Warehouse

RUNS = "{ runsOrError { ... on Runs { results { runId } } } }"
ASSET = "gen_prompts"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "Chromium is not installed: the browser test drives the system's Chromium "
        "(`apt-get install -y chromium`, which .ci/run does when it is missing)."
    )


def _wait_for_run(dev: DagsterDev, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = dev.graphql(RUNS)["runsOrError"]["results"]
        if runs:
            return runs[0]["runId"]
        time.sleep(0.5)
    raise AssertionError("clicking Materialize launched no run")


def test_materialize_an_asset_from_the_ui(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = _chromium()
    home = tmp_path / "home"
    dev = DagsterDev(home, tmp_path / "dagster-dev.log")
    screenshot = tmp_path / "run.png"
    try:
        dev.wait_ready()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)

            page.goto(f"{dev.url}/asset-groups")
            expect(page.get_by_text("Global asset lineage")).to_be_visible()
            for group in ("edit", "gen", "critics", "bench"):
                expect(page.get_by_text(group, exact=True).first).to_be_visible()

            page.goto(f"{dev.url}/assets/{ASSET}")
            page.locator("button").filter(has_text=re.compile(r"^\s*Materialize\s*$")).first.click()
            run_id = _wait_for_run(dev, timeout_s=30)
            assert dev.wait_run(run_id, timeout_s=120) == "SUCCESS"

            page.goto(f"{dev.url}/runs/{run_id}")
            expect(page.get_by_text("Success").first).to_be_visible()
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        dev.stop()
    print(f"screenshot of the finished run: {screenshot}")
    assert screenshot.stat().st_size > 10_000

    rows = Warehouse(home / "warehouse.duckdb", read_only=True).rows(
        f"SELECT count(*) FROM asset_rows.{ASSET} WHERE _dagster_run_id = ?", [run_id]
    )
    assert rows[0][0] == 10  # the ten demo prompts
    # the asset and its check ran in one process: the code location's in-process executor
    assert step_processes(home / "dagster", run_id) == 1
