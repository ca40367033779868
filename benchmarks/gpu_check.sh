#!/usr/bin/env bash
# GPU checks for a machine with one CUDA GPU: DDP and FSDP on 1 GPU, and bf16-mixed precision
# with the soft loss computed in float32. Run from the repository root after `make venv`.
# Prints one line per check and exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
KD=.venv/bin/kd-train
OUT=$(mktemp -d)
common=(stage=distill trainer.max_epochs=2 teacher.max_epochs=2 logger=none "paths.teacher_cache=$OUT/teachers")

.venv/bin/python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY

$KD "${common[@]}" trainer=gpu "hydra.run.dir=$OUT/gpu"
$KD "${common[@]}" trainer=ddp trainer.accelerator=gpu trainer.devices=1 "hydra.run.dir=$OUT/ddp"
$KD "${common[@]}" trainer=fsdp trainer.devices=1 "hydra.run.dir=$OUT/fsdp"
for run in gpu ddp fsdp; do
  .venv/bin/python -c "import json,sys; m=json.load(open('$OUT/$run/metrics.json')); print('$run', 'test/acc', round(m['test']['test/acc'], 4), 'teacher', round(m['teacher']['test/acc'], 4))"
done

# The GPU-only tests (bf16 soft loss in float32 on CUDA, FSDP with a frozen teacher).
.venv/bin/python -m pytest -q -m gpu tests
echo "gpu checks passed; outputs in $OUT"
