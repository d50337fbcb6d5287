"""Answer parsing is linear: every parser on pathological answers of 10 KB and 100 KB.

The answers are one pattern repeated ("3/5 ", "[", '{"a":', "Score: 3/5 ", "\\boxed{3} ", ...), the
inputs that made reading quadratic or recursive before (10 KB of "3/5 " took 6.6 s). Each figure is
the best of five parses against a 1.5 KB prompt. Prints one line per (parser, pattern) over 10 ms and
then `PARSE worst_100kb_ms=<ms> worst_ratio=<100 KB time / 10 KB time>`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    from parse_timing import PROMPT, best_seconds

    from firm_assets.curation.parsers import (
        CHECKLIST_JSON,
        EXECUTION_JSON,
        INSTRUCTION_FOLLOWING,
        PLAN_THEN_SCORE,
        QUALITY_JSON,
    )

    patterns = ["3/5 ", "[", '{"a":', "Score: 3/5 ", "\\boxed{3} ", "{[", '{"\\"', "{}", "1. q | yes\n", " x"]
    worst_ms, worst_ratio = 0.0, 0.0
    for pattern in patterns:
        for parser in (EXECUTION_JSON, PLAN_THEN_SCORE, INSTRUCTION_FOLLOWING, QUALITY_JSON, CHECKLIST_JSON):
            small = best_seconds(parser, (pattern * 10_000)[:10_000], PROMPT, repeats=5) * 1000
            large = best_seconds(parser, (pattern * 100_000)[:100_000], PROMPT, repeats=5) * 1000
            worst_ms, worst_ratio = max(worst_ms, large), max(worst_ratio, large / max(small, 0.05))
            if large > 10:
                print(f"{parser.id:24} {pattern!r:14} 10KB {small:7.2f} ms  100KB {large:7.2f} ms")
    print(f"PARSE worst_100kb_ms={worst_ms:.1f} worst_ratio={worst_ratio:.1f}")


if __name__ == "__main__":
    main()
