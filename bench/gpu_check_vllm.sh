#!/usr/bin/env bash
# GPU check of the nemotron-nas export (run it whenever a GPU machine with a package index is lent; CI never
# runs it): vLLM in its own venv (it pins its own CUDA torch), then bench/vllm_check.py.
#
#   bash bench/gpu_check_vllm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 HF_HUB_OFFLINE=1
nvidia-smi -L
VENV=${VLLM_VENV:-/tmp/unast-vllm-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import vllm" 2>/dev/null || "$VENV/bin/pip" install -q vllm
# unast without its pins on torch/transformers: vLLM brings its own
"$VENV/bin/python" -c "import unast_core" 2>/dev/null || "$VENV/bin/pip" install -q --no-deps -e . && \
    "$VENV/bin/pip" install -q gguf pydantic pyyaml
PYTHONPATH=. "$VENV/bin/python" bench/vllm_check.py
