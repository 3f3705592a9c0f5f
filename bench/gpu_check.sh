#!/usr/bin/env bash
# GPU check: run it whenever a GPU machine is lent (CI never runs it). It installs what the GPU paths need,
# runs the smoke pipeline with one Dask worker per GPU (dask-cuda) and the DeepSpeed engine on CUDA for
# distillation, select and finetune, then prints what ran where: the worker (host:pid:gpuN) of every
# distilled candidate and every finetune, and the device the evaluation timed on.
#
#   bash bench/gpu_check.sh            # uses .venv if present, else python3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 HF_HUB_OFFLINE=1

nvidia-smi -L
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.device_count(), 'GPU(s)')"
"$PY" -c "import unast_core, prefect_dask" 2>/dev/null || "$PY" -m pip install -q -e ".[dev]"
"$PY" -c "import deepspeed" 2>/dev/null || "$PY" -m pip install -q --no-build-isolation "deepspeed>=0.16"
"$PY" -c "import dask_cuda" 2>/dev/null || "$PY" -m pip install -q dask-cuda

WORK=$(mktemp -d /tmp/unast-gpu-check.XXXX)
set +e
"$PY" -m flows.cli run --preset smoke --runner dask --budget params=0.6 --home "$WORK/home" --output "$WORK/model" \
    --set distill.engine=deepspeed --set select.engine=deepspeed --set finetune.engine=deepspeed \
    2>&1 | tee "$WORK/log"
rc=${PIPESTATUS[0]}
set -e
echo "== exit code $rc (log: $WORK/log)"
grep -E "distilled [0-9]+ candidates|scored [0-9]+ sublayers" "$WORK/log" || true
"$PY" - "$WORK" <<'PY'
import collections, json, pathlib, sys
work = pathlib.Path(sys.argv[1])
results = work / "model" / "results.json"
if results.exists():
    r = json.loads(results.read_text())
    print("evaluation timed on", r["regime"]["device"], "| student latency ratio", round(r["student"]["latency_ratio"], 3),
          "| test ppl teacher", round(r["teacher"]["test_ppl"], 2), "student", round(r["student"]["test_ppl"], 2))
engines = collections.Counter(json.loads(p.read_text()).get("engine") for p in work.rglob("candidates/*/*.json"))
print("distillation engines:", dict(engines))
PY
exit "$rc"
