"""`firm serve`: the reward server on one critic, as one uvicorn process (one model load)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_serve_parser(commands: Any) -> None:
    serve_parser = commands.add_parser(
        "serve", help="serve a critic's scores and rewards over HTTP (JSON, batched across requests)"
    )
    serve_parser.add_argument("--critic", required=True, help="models:/<name>/<version> or a critic folder")
    serve_parser.add_argument("--host", default="127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=8000)
    serve_parser.add_argument("--max-batch", type=int, default=32, help="items per critic batch at most")
    serve_parser.add_argument("--max-wait-ms", type=float, default=10.0, help="wait for a fuller batch")
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
    import uvicorn
    from pydantic import ValidationError

    from firm_assets.critics.scoring import CriticScorer
    from firm_assets.serving.app import create_app
    from firm_assets.serving.settings import ServerSettings

    try:
        settings = ServerSettings(
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            queue_size=args.queue_size,
            request_timeout_s=args.timeout_s,
            token_env=args.token_env,
            cross_request_batching=not args.no_cross_request_batching,
        )
        # Each item asks the critic two questions, so a full server batch is one backend forward.
        load = {"device": args.device, "dtype": args.dtype, "batch_size": 2 * args.max_batch}
        if args.max_new_tokens is not None:
            load["max_new_tokens"] = args.max_new_tokens
        app = create_app(settings, lambda: CriticScorer.load(args.critic, **load))
    except (ValidationError, ValueError) as error:
        print(f"firm serve: {error}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0
