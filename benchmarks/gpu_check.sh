#!/usr/bin/env bash
# GPU checks for a machine with one CUDA GPU: distillation with bf16-mixed precision (the soft
# loss computed in float32), DDP on 1 GPU and FSDP on 1 GPU, each with the test/acc of the
# student and the teacher from its metrics.json; then the GPU-only tests (pytest -m gpu).
# Prints one line per check and exits non-zero on the first failure (with the end of its log).
#
# It needs no venv and no network: everything runs as `PYTHONPATH=src $PY -m lightning_kd.train`,
# where PY is .venv/bin/python if it exists, else python3 (override: PY=... bash benchmarks/...).
# That python must already have torch (CUDA build), lightning, torchmetrics, scikit-learn, numpy,
# tqdm, PyYAML and packaging; pytest too for the last check, which is skipped without it.
# If it lacks hydra-core or omegaconf, the wheels in benchmarks/wheels/ (git-ignored) are
# installed offline into a temporary folder put on PYTHONPATH; nothing is installed system-wide.
#
# Filling benchmarks/wheels/ (on a machine with network access; all three are pure-python,
# about 400 KB together; the versions are those of the project's .venv, and hydra-core 1.3.x
# needs antlr4-python3-runtime 4.9.*):
#   python3 -m pip download --no-deps --only-binary=:all: -d benchmarks/wheels \
#       hydra-core==1.3.8 omegaconf==2.3.1
#   python3 -m pip wheel --no-deps -w benchmarks/wheels antlr4-python3-runtime==4.9.3
# (antlr4-python3-runtime 4.9.3 is published as an sdist only: `pip wheel` builds its
# py3-none-any wheel, which installs offline without setuptools.) Every *.whl in the folder is
# installed, with --no-deps: keep one version of each. For a python without PyYAML or packaging,
# add their wheels for that python, e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d benchmarks/wheels PyYAML
#
# On a GPU machine without network access (a python with CUDA torch, lightning, torchmetrics,
# PyYAML and pytest, but no hydra-core/omegaconf/antlr4), copy the working tree together with
# the git-ignored benchmarks/wheels/ and run `bash benchmarks/gpu_check.sh`.
# The whole script keeps within GPU_CHECK_BUDGET seconds (default 540): each step has its own
# timeout, cut to what is left of the budget. When $OUT names a folder, the three metrics.json
# files and the log of a failed step are also copied there (for a runner that returns a folder).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${PY:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=benchmarks/wheels
WORK=$(mktemp -d)   # not $OUT: that folder, when set, receives only the results
BACK=${OUT:-}       # that folder, if any
deadline=$((SECONDS + ${GPU_CHECK_BUDGET:-540}))
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1

# step NAME LIMIT_S CMD...: run CMD with its output in $WORK/NAME.log, under a timeout of
# LIMIT_S seconds or what is left of the budget, whichever is less; on failure print one line
# and the end of the log, and exit with the command's status.
step() {
  local name=$1 limit=$2 left rc=0
  shift 2
  left=$((deadline - SECONDS))
  if ((left < limit)); then limit=$left; fi
  if ((limit < 5)); then
    echo "FAIL $name: the ${GPU_CHECK_BUDGET:-540} s budget is spent"
    exit 1
  fi
  step_start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
  if ((rc != 0)); then
    if ((rc == 124 || rc == 137)); then
      echo "FAIL $name: timed out after $limit s; last lines of $WORK/$name.log:"
    else
      echo "FAIL $name: exit status $rc; last lines of $WORK/$name.log:"
    fi
    tail -n 40 "$WORK/$name.log" | sed 's/^/    /'
    if [[ -n $BACK && -d $BACK ]]; then cp "$WORK/$name.log" "$BACK/" || true; fi
    exit "$rc"
  fi
}

# 1. hydra-core and omegaconf: present, or installed offline from benchmarks/wheels.
if "$PY" -c "import hydra, omegaconf" >/dev/null 2>&1; then
  echo "ok   hydra: $("$PY" -c 'import hydra, omegaconf; print("hydra-core", hydra.__version__, "omegaconf", omegaconf.__version__)') already installed ($PY)"
else
  shopt -s nullglob
  wheels=("$WHEELS"/*.whl)
  shopt -u nullglob
  if ((${#wheels[@]} == 0)); then
    echo "FAIL hydra: $PY has no hydra-core/omegaconf and $WHEELS/ holds no wheels (see this script's header)"
    exit 1
  fi
  step hydra-install 60 "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$WORK/site" "${wheels[@]}"
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  step hydra-import 30 "$PY" -c "import hydra, omegaconf"
  echo "ok   hydra: installed offline from $WHEELS into $WORK/site: $(cd "$WHEELS" && echo *.whl)"
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

# 2. A CUDA GPU that torch sees.
step cuda 60 "$PY" -c '
import torch, lightning
assert torch.cuda.is_available(), "no CUDA GPU visible"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| lightning", lightning.__version__)
'
echo "ok   cuda: $(tail -n 1 "$WORK/cuda.log")"

# 3. Distillation runs. The teacher is trained in the first run and cached for the others
#    where its recipe matches.
common=(stage=distill trainer.max_epochs=2 teacher.train.max_epochs=2 logger=none
        "paths.trained_teachers=$WORK/teachers")
distill() {
  local run=$1 what=$2
  shift 2
  step "$run" 150 "$PY" -m lightning_kd.train "${common[@]}" "$@" "hydra.run.dir=$WORK/$run"
  local acc
  acc=$("$PY" -c "import json; m = json.load(open('$WORK/$run/metrics.json')); print('student test/acc', round(m['test']['test/acc'], 4), '| teacher test/acc', round(m['teacher']['test/acc'], 4))" 2>&1) || {
    echo "FAIL $run: no test/acc of student and teacher in $WORK/$run/metrics.json: $acc"
    exit 1
  }
  echo "ok   $run ($what, $((SECONDS - step_start)) s): $acc"
  if [[ -n $BACK && -d $BACK ]]; then cp "$WORK/$run/metrics.json" "$BACK/$run-metrics.json" || true; fi
}
distill gpu "1 GPU, bf16-mixed" trainer=gpu
distill ddp "DDP, 1 GPU" trainer=ddp trainer.accelerator=gpu trainer.devices=1
distill fsdp "FSDP, 1 GPU, bf16-mixed, cached teacher outputs, export" trainer=fsdp trainer.devices=1 \
  distill/teacher_outputs=cached
ls "$WORK/fsdp/export/student.pt2" "$WORK/fsdp/teacher_outputs"/teacher-*/logits.npy >/dev/null || {
  echo "FAIL fsdp: no export or no cached teacher outputs in $WORK/fsdp"
  exit 1
}

# 4. The GPU-only tests (bf16 soft loss in float32 on CUDA, DDP and FSDP with a frozen teacher, the tiny
#    GPT-2 pair through CausalLMDistillationModule in bf16-mixed under DDP and FSDP).
if "$PY" -c "import pytest" >/dev/null 2>&1; then
  step pytest-gpu 180 "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
  echo "ok   pytest -m gpu ($((SECONDS - step_start)) s): $(tail -n 1 "$WORK/pytest-gpu.log")"
else
  echo "skip pytest -m gpu: $PY has no pytest"
fi
echo "gpu checks passed in $SECONDS s; outputs in $WORK"
