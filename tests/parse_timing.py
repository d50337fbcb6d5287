"""How long a parser takes on long answers, for the linear-reading test and `bench/parse_time.py`:
the prompt they read against and the best-of-n CPU time of one parse."""

from __future__ import annotations

import contextlib
import time

from firm_assets.curation.parsers import ParseError, Parser

PROMPT = "Edit instruction: make the mug blue.\n" * 40  # about 1.5 KB, as a real rendered prompt


def best_seconds(parser: Parser, text: str, prompt: str, repeats: int) -> float:
    """The least process CPU time of `repeats` parses (a busy machine does not stretch it); a parse
    failure counts as a parse."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        with contextlib.suppress(ParseError):
            parser.parse(text, prompt)
        best = min(best, time.process_time() - started)
    return best
