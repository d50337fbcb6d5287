#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU: it checks that the GPU profile works end to
# end on small real models and appends what it measured to docs/gpu.md. Within 10 minutes:
#   1. preflight (seconds): an NVIDIA GPU (nvidia-smi, then torch.cuda), vLLM importable, and every
#      model below present locally (pinned offline by resources.weights); else a clear error, exit 1;
#   2. the `main` job on the `gpu-small` profile in a fresh FIRM_HOME: curation with vLLM and
#      diffusers (one model on the GPU at a time), then the critics' SFT, a few bf16 steps of full
#      fine-tuning on the small VLM (the critic assets' own training path, figures from MLflow),
#      then the RL smoke run: both policies two DiffusionNFT steps at 512 px on the tiny pipelines
#      (bf16, micro-batches, gradient checkpointing), rewarded by that critic;
#   3. bench/vllm_backend.py: P5, the product's VllmBackend against a bare vLLM LLM.chat.
# Models (hub ids already in the local Hugging Face cache, or local folders):
#   FIRM_GPU_VL_MODEL   captioner, judge, critic base, P5   default Qwen/Qwen3-VL-2B-Instruct
#   FIRM_GPU_LLM_MODEL  planner (thinking off)              default Qwen/Qwen3-0.6B
#   FIRM_GPU_EDITOR     image editor                        default timbrooks/instruct-pix2pix
#   FIRM_GPU_GENERATOR  text-to-image generator             default stabilityai/sd-turbo
# Fetch the defaults first where the hub is reachable, e.g. `hf download Qwen/Qwen3-0.6B`.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export FIRM_GPU_VL_MODEL="${FIRM_GPU_VL_MODEL:-Qwen/Qwen3-VL-2B-Instruct}"
export FIRM_GPU_LLM_MODEL="${FIRM_GPU_LLM_MODEL:-Qwen/Qwen3-0.6B}"
export FIRM_GPU_EDITOR="${FIRM_GPU_EDITOR:-timbrooks/instruct-pix2pix}"
export FIRM_GPU_GENERATOR="${FIRM_GPU_GENERATOR:-stabilityai/sd-turbo}"
MAIN_TIMEOUT_S="${MAIN_TIMEOUT_S:-400}"
BENCH_TIMEOUT_S="${BENCH_TIMEOUT_S:-150}"
REPORT="$ROOT/docs/gpu.md"
STARTED=$SECONDS

fail() {
    echo "gpu_check: FAILED: $*" >&2
    exit 1
}

# 1. Preflight: each probe under `timeout`, so a wedged driver cannot hang the check.
command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU: nvidia-smi is not on the PATH"
GPU="$(timeout 20 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
[ -n "$GPU" ] || fail "no NVIDIA GPU: nvidia-smi found no device (or did not answer within 20 s)"
timeout 60 "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || fail "no usable GPU: torch.cuda.is_available() is false (driver/CUDA build mismatch?) or timed out"
timeout 60 "$PYTHON" -c "import vllm" >/dev/null 2>&1 \
    || fail "vLLM is not installed (or its import timed out): pip install -e '.[gpu]'"
PINNED="$(HF_HUB_OFFLINE=1 timeout 60 "$PYTHON" - <<'EOF'
import os
import sys

from resources.weights import weights_identity

for name in ("FIRM_GPU_VL_MODEL", "FIRM_GPU_LLM_MODEL", "FIRM_GPU_EDITOR", "FIRM_GPU_GENERATOR"):
    model = os.environ[name]
    try:
        print(f"{name}={model}@{weights_identity(model)}")
    except ValueError as error:
        sys.exit(f"{name}={model} is not present locally: {error}")
EOF
)" || fail "a model is not present locally (see above); download it or point the variable at a folder"
echo "gpu_check: $GPU"
echo "$PINNED"

# 2. The main job on gpu-small, in a fresh FIRM_HOME so every stage really runs.
export FIRM_HOME="${FIRM_HOME:-$(mktemp -d -t firm-gpu-check.XXXXXX)}"
export FIRM_PROFILE=gpu-small HF_HUB_OFFLINE=1
echo "gpu_check: main job on gpu-small (FIRM_HOME=$FIRM_HOME, at most ${MAIN_TIMEOUT_S}s)"
MAIN_START=$SECONDS
timeout "$MAIN_TIMEOUT_S" "$PYTHON" -m firm_assets.cli run main 2>&1 | tee "$FIRM_HOME/main.log"
MAIN_RC=${PIPESTATUS[0]}
MAIN_S=$((SECONDS - MAIN_START))
CRITICS="$(timeout 60 "$PYTHON" - <<'EOF'
import mlflow

from resources.tracking import default_tracking_uri

client = mlflow.MlflowClient(default_tracking_uri())
experiments = [e.experiment_id for e in client.search_experiments()]
for run in client.search_runs(experiments) if experiments else []:
    info, data = run.info, run.data
    seconds = (info.end_time - info.start_time) / 1000 if info.end_time else None
    metrics = " ".join(f"{key}={value:.4g}" for key, value in sorted(data.metrics.items()))
    print(f"- {info.run_name}: {info.status}, {seconds} s; {metrics}")
EOF
)"

# 3. P5: the product's vLLM backend against bare vLLM.
echo "gpu_check: bench/vllm_backend.py (at most ${BENCH_TIMEOUT_S}s)"
timeout "$BENCH_TIMEOUT_S" "$PYTHON" bench/vllm_backend.py --model "$FIRM_GPU_VL_MODEL" 2>&1 \
    | tee "$FIRM_HOME/bench.log"
BENCH_RC=${PIPESTATUS[0]}
P5="$(grep '^P5 ' "$FIRM_HOME/bench.log" | tail -n 1)"

TOTAL_S=$((SECONDS - STARTED))
{
    echo
    echo "## $(date -u +%Y-%m-%d) scripts/gpu_check.sh on ${GPU}"
    echo
    echo "Pinned models:"
    echo
    echo "$PINNED" | sed 's/^/- /'
    echo
    echo "- \`main\` job on \`gpu-small\`: exit ${MAIN_RC} (124: timed out) in ${MAIN_S} s"
    echo "- ${P5:-P5 not measured (bench exit ${BENCH_RC}; 124: timed out)}"
    echo "- whole check: ${TOTAL_S} s"
    echo
    echo "MLflow runs of the main job (the critics' SFT and the 512 px RL smoke run among them):"
    echo
    echo "${CRITICS:-- none found}"
} >>"$REPORT"
echo "gpu_check: figures appended to $REPORT"
[ "$MAIN_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ] || fail "main exit $MAIN_RC, bench exit $BENCH_RC (logs in $FIRM_HOME)"
echo "gpu_check: OK in ${TOTAL_S} s"
