"""Answer parsing is linear: every parser on pathological answers of 10 KB and 100 KB.

The answers are one pattern repeated ("3/5 ", "[", '{"a":', "Score: 3/5 ", "\\boxed{3} ", ...), the
inputs that made reading quadratic or recursive before (10 KB of "3/5 " took 6.6 s). Each figure is
the best of five parses against a 1.5 KB prompt. Prints one line per (parser, pattern) over 10 ms and
then `PARSE worst_100kb_ms=<ms> worst_ratio=<100 KB time / 10 KB time>`.
"""

import contextlib
import time


def best_ms(parser, text: str, prompt: str, repeats: int = 5) -> float:
    from firm_assets.curation.parsers import ParseError

    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        with contextlib.suppress(ParseError):
            parser.parse(text, prompt)
        best = min(best, time.process_time() - started)
    return best * 1000


def main() -> None:
    from firm_assets.curation.parsers import (
        CHECKLIST_JSON,
        EXECUTION_JSON,
        INSTRUCTION_FOLLOWING,
        PLAN_THEN_SCORE,
        QUALITY_JSON,
    )

    prompt = "Edit instruction: make the mug blue.\n" * 40
    patterns = ["3/5 ", "[", '{"a":', "Score: 3/5 ", "\\boxed{3} ", "{[", '{"\\"', "{}", "1. q | yes\n", " x"]
    parsers = (EXECUTION_JSON, PLAN_THEN_SCORE, INSTRUCTION_FOLLOWING, QUALITY_JSON, CHECKLIST_JSON)
    worst_ms, worst_ratio = 0.0, 0.0
    for pattern in patterns:
        for parser in parsers:
            small = best_ms(parser, (pattern * 10_000)[:10_000], prompt)
            large = best_ms(parser, (pattern * 100_000)[:100_000], prompt)
            worst_ms, worst_ratio = max(worst_ms, large), max(worst_ratio, large / max(small, 0.05))
            if large > 10:
                print(f"{parser.id:24} {pattern!r:14} 10KB {small:7.2f} ms  100KB {large:7.2f} ms")
    print(f"PARSE worst_100kb_ms={worst_ms:.1f} worst_ratio={worst_ratio:.1f}")


if __name__ == "__main__":
    main()
