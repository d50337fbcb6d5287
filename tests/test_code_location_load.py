"""Loading the code location (what `dagster dev` and every run worker do) imports no model stack."""

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
import json, sys
import firm_assets.definitions
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def load_once() -> tuple[float, list[str]]:
    """Seconds a fresh interpreter takes to import the definitions, and the heavy modules it pulled in."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    )
    return time.perf_counter() - start, json.loads(done.stdout.splitlines()[-1])


def test_loading_definitions_imports_no_model_stack() -> None:
    timings = []
    for _ in range(3):
        seconds, heavy = load_once()
        assert heavy == [], f"loading firm_assets.definitions imported {heavy}"
        timings.append(seconds)
    print(f"code location load: median {statistics.median(timings):.2f}s of {len(timings)} fresh processes")
