"""Loading the code location (what `dagster dev` and every run worker do) imports no model stack and
prints no Dagster BetaWarning."""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Imported inside the assets and resources that run models, never by loading the definitions.
HEAVY = ("torch", "transformers", "diffusers", "vllm", "peft", "accelerate", "scipy", "matplotlib")
PROBE = f"""
import json, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import firm_assets.definitions
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
print(json.dumps({{"heavy": heavy, "warnings": [f"{{w.category.__name__}}: {{w.message}}" for w in caught]}}))
"""


def load_once() -> tuple[float, dict[str, list[str]]]:
    """Seconds a fresh interpreter takes to import the definitions, the heavy modules it pulled in and
    every warning raised while importing (each shown, none filtered by "once")."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    )
    return time.perf_counter() - start, json.loads(done.stdout.splitlines()[-1])


def test_loading_definitions_imports_no_model_stack() -> None:
    timings = []
    for _ in range(3):
        seconds, loaded = load_once()
        assert loaded["heavy"] == [], f"loading firm_assets.definitions imported {loaded['heavy']}"
        noisy = [w for w in loaded["warnings"] if w.startswith(("BetaWarning", "DeprecationWarning"))]
        assert noisy == [], f"loading firm_assets.definitions warned {noisy}"
        timings.append(seconds)
    print(f"code location load: median {statistics.median(timings):.2f}s of {len(timings)} fresh processes")
