"""`firm serve`'s options and the server settings they make: each option sets its ServerSettings
field, an option left out is the field's default (the expected load time: the critic's last measured
load first), and a value the settings refuse is refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from firm_assets.serving.command import (
    SETTINGS_OPTIONS,
    add_serve_parser,
    remember_load_s,
    server_settings,
)
from firm_assets.serving.settings import ServerSettings


def parse(*options: str) -> argparse.Namespace:
    """The options as the `firm` command line parses them."""
    parser = argparse.ArgumentParser(prog="firm")
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", "--critic", "models:/firm_edit_critic/1", *options])


def test_every_option_sets_its_field(tmp_path: Path) -> None:
    args = parse(
        *("--max-batch", "8", "--max-wait-ms", "250", "--batch-wait-fraction", "0.5"),
        *("--max-items", "3", "--max-request-pixels", "4096", "--expected-load-s", "7.5"),
        *("--queue-size", "9", "--timeout-s", "30", "--token-env", "FIRM_TOKEN"),
        "--no-cross-request-batching",
    )
    settings = server_settings(args, tmp_path / "load_seconds.json")
    assert type(settings.max_batch) is int and type(settings.max_wait_ms) is float
    assert settings.model_dump(include=set(SETTINGS_OPTIONS.values()) | {"cross_request_batching"}) == {
        "max_batch": 8,
        "max_wait_ms": 250.0,
        "batch_wait_fraction": 0.5,
        "max_items": 3,
        "max_request_pixels": 4096,
        "expected_load_s": 7.5,
        "queue_size": 9,
        "request_timeout_s": 30.0,
        "token_env": "FIRM_TOKEN",
        "cross_request_batching": False,
    }


def test_options_left_out_are_the_settings_defaults(tmp_path: Path) -> None:
    assert server_settings(parse(), tmp_path / "load_seconds.json") == ServerSettings()


def test_the_expected_load_is_the_critics_last_measured_one_unless_given(tmp_path: Path) -> None:
    times = tmp_path / "load_seconds.json"
    remember_load_s(times, "models:/firm_edit_critic/1", 12.34)
    remember_load_s(times, "models:/firm_gen_critic/1", 99.0)
    assert server_settings(parse(), times).expected_load_s == 12.34
    assert server_settings(parse("--expected-load-s", "3"), times).expected_load_s == 3.0


def test_help_shows_each_fields_description_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--timeout-s TIMEOUT_S Queue wait plus scoring; beyond it: 504 (default: 120.0)" in text
    assert "(default: the last measured load of this critic, else 60)" in text
    for flag, name in SETTINGS_OPTIONS.items():
        assert flag in text and ServerSettings.model_fields[name].description in text


def test_a_value_the_settings_refuse_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # argparse: the field is an int
        parse("--max-batch", "1.5")
    with pytest.raises(ValidationError, match="max_items"):
        server_settings(parse("--max-items", "100000"), tmp_path / "load_seconds.json")
    with pytest.raises(ValidationError, match="expected_load_s"):  # 0 is refused, not taken as unset
        server_settings(parse("--expected-load-s", "0"), tmp_path / "load_seconds.json")
