"""`firm serve`: the reward server on one critic, as one uvicorn process (one model load).

How long the critic took to load is remembered under FIRM_HOME (`serving/load_seconds.json`, per
critic), so a restarted server tells waiting clients, in Retry-After, how long its load is expected
to take (`--expected-load-s` overrides it; ServerSettings' default before any load was measured)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from firm_assets.serving.settings import ServerSettings

# `firm serve` options that set a ServerSettings field: their type, default and help come from the
# field, so the command and the settings cannot disagree
SETTINGS_OPTIONS = {
    "--max-batch": "max_batch",
    "--max-wait-ms": "max_wait_ms",
    "--batch-wait-fraction": "batch_wait_fraction",
    "--max-items": "max_items",
    "--max-request-pixels": "max_request_pixels",
    "--expected-load-s": "expected_load_s",
    "--queue-size": "queue_size",
    "--timeout-s": "request_timeout_s",
    "--token-env": "token_env",
}


def _settings_option(serve_parser: argparse.ArgumentParser, flag: str, name: str) -> None:
    """One option for a ServerSettings field; unset, the field's default applies (for
    `expected_load_s`, the critic's last measured load first)."""
    field = ServerSettings.model_fields[name]
    default = "unset" if field.default is None else field.default
    if name == "expected_load_s":
        default = f"the last measured load of this critic, else {field.default:g}"
    kind = field.annotation if field.annotation in (int, float) else str
    metavar = flag.removeprefix("--").replace("-", "_").upper()
    help_text = f"{field.description} (default: {default})"
    serve_parser.add_argument(flag, dest=name, type=kind, metavar=metavar, help=help_text)


def add_serve_parser(commands: Any) -> None:
    """Declares the `firm serve` options."""
    serve_parser = commands.add_parser(
        "serve", help="serve a critic's scores and rewards over HTTP (JSON, batched across requests)"
    )
    serve_parser.add_argument("--critic", required=True, help="models:/<name>/<version> or a critic folder")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    for flag, name in SETTINGS_OPTIONS.items():
        _settings_option(serve_parser, flag, name)
    serve_parser.add_argument(
        "--no-cross-request-batching",
        action="store_true",
        help="one critic batch per request (the benchmark's baseline)",
    )
    serve_parser.add_argument(
        "--max-new-tokens", type=int, help="answer length cap per critic question (default: the scorer's)"
    )
    serve_parser.add_argument("--device", default="cpu")
    serve_parser.add_argument("--dtype", default="float32")
    serve_parser.set_defaults(func=serve)


def server_settings(args: argparse.Namespace, times: Path) -> ServerSettings:
    """The settings `firm serve`'s options ask for: what an option leaves unset is the field's default,
    except the expected load time, which is this critic's last measured one when there is one."""
    chosen = {name: getattr(args, name) for name in SETTINGS_OPTIONS.values()}
    if chosen["expected_load_s"] is None:
        chosen["expected_load_s"] = remembered_load_s(times, args.critic)
    return ServerSettings(
        **{name: value for name, value in chosen.items() if value is not None},
        cross_request_batching=not args.no_cross_request_batching,
    )


def serve(args: argparse.Namespace) -> int:
    """`firm serve`: loads the critic and runs the reward server until stopped."""
    import uvicorn
    from pydantic import ValidationError

    from firm_assets.critics.scoring import CriticScorer
    from firm_assets.serving.app import create_app

    times = load_times_file()
    try:
        settings = server_settings(args, times)
        # Each item asks the critic two questions, so a full server batch is one backend forward.
        load = {"device": args.device, "dtype": args.dtype, "batch_size": 2 * settings.max_batch}
        if args.max_new_tokens is not None:
            load["max_new_tokens"] = args.max_new_tokens
        app = create_app(
            settings,
            lambda: CriticScorer.load(args.critic, **load),
            on_loaded=lambda seconds: remember_load_s(times, args.critic, seconds),
        )
    except (ValidationError, ValueError) as error:
        print(f"firm serve: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0


def load_times_file() -> Path:
    """Where past critic load times are kept, so a restart's Retry-After is a measured guess."""
    from resources.home import firm_home

    return firm_home() / "serving" / "load_seconds.json"


def remembered_load_s(path: Path, critic: str) -> float | None:
    """The last measured load time of this critic (None: never measured, or an unreadable file)."""
    try:
        return float(json.loads(path.read_text())[critic])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_load_s(path: Path, critic: str, seconds: float) -> None:
    """Records how long a critic took to load, for the next start's estimate."""
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**known, critic: round(seconds, 2)}))
    tmp.replace(path)
