"""`firm serve`: the reward server on one critic, as one uvicorn process (one model load).

How long the critic took to load is remembered under FIRM_HOME (`serving/load_seconds.json`, per
critic), so a restarted server tells waiting clients, in Retry-After, how long its load is expected
to take (`--expected-load-s` overrides it; 60 s before any load was measured)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_EXPECTED_LOAD_S = 60.0


def add_serve_parser(commands: Any) -> None:
    """Declares the `firm serve` options."""
    serve_parser = commands.add_parser(
        "serve", help="serve a critic's scores and rewards over HTTP (JSON, batched across requests)"
    )
    serve_parser.add_argument("--critic", required=True, help="models:/<name>/<version> or a critic folder")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--max-batch", type=int, default=32, help="items per critic batch at most")
    serve_parser.add_argument(
        "--max-wait-ms", type=float, default=1000.0, help="longest wait for a fuller batch (cap)"
    )
    serve_parser.add_argument(
        "--batch-wait-fraction",
        type=float,
        default=0.1,
        help="an under-full batch waits this fraction of a batch's measured cost for more requests",
    )
    serve_parser.add_argument("--max-items", type=int, default=64, help="items per request at most")
    serve_parser.add_argument(
        "--max-request-pixels", type=int, default=64 * 2**20, help="decoded pixels per request at most"
    )
    serve_parser.add_argument(
        "--expected-load-s",
        type=float,
        help="seconds the critic takes to load, sent as Retry-After while it loads (default: the last "
        f"measured load of this critic, else {DEFAULT_EXPECTED_LOAD_S:g})",
    )
    serve_parser.add_argument("--queue-size", type=int, default=256, help="waiting requests before 429")
    serve_parser.add_argument("--timeout-s", type=float, default=120.0, help="per request, before 504")
    serve_parser.add_argument("--token-env", help="env var holding the bearer token (default: no auth)")
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


def serve(args: argparse.Namespace) -> int:
    """`firm serve`: loads the critic and runs the reward server until stopped."""
    import uvicorn
    from pydantic import ValidationError

    from firm_assets.critics.scoring import CriticScorer
    from firm_assets.serving.app import create_app
    from firm_assets.serving.settings import ServerSettings

    times = load_times_file()
    expected = args.expected_load_s or remembered_load_s(times, args.critic) or DEFAULT_EXPECTED_LOAD_S
    try:
        settings = ServerSettings(
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            batch_wait_fraction=args.batch_wait_fraction,
            max_items=args.max_items,
            max_request_pixels=args.max_request_pixels,
            expected_load_s=expected,
            queue_size=args.queue_size,
            request_timeout_s=args.timeout_s,
            token_env=args.token_env,
            cross_request_batching=not args.no_cross_request_batching,
        )
        # Each item asks the critic two questions, so a full server batch is one backend forward.
        load = {"device": args.device, "dtype": args.dtype, "batch_size": 2 * args.max_batch}
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
