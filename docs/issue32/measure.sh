#!/bin/bash
# Issue 32's measurements, each resumable (evaluations are cached under their out_dir):
#   docs/issue32/measure.sh            (from the repository root; ~15 min on the 2-core CPU)
# For both shipped models: the coverage of the answer's image tokens by every ranking signal
# (4 grid tasks), and Table 2/3 rows of A-VL with each signal beside Full, SnapKV and H2O
# (6 tasks), N samples each with bootstrap intervals, and A-VL S=45 without the core tier per
# signal (3 tasks); then docs/issue32/summarize.py writes
# the tables and figure under docs/figures/signals/.
set -eu
N=${N:-128}; OUT=${OUT:-runs/issue32}; PY=${PYTHON:-.venv/bin/python}
GRID=(synth-docvqa synth-textvqa synth-ocr synth-docvqa-2x2)
METHODS="['Full','A-VL','A-VL signal=window','A-VL signal=colsum','A-VL signal=attn_vnorm','A-VL signal=key_norm','SnapKV ratio=0.5','H2O ratio=0.5 (per head)']"
mkdir -p "$OUT"
run() { echo "[$(date -u +%T)] $*" >> "$OUT/measure.log"; "$@" >> "$OUT/measure.log" 2>&1; }
for model in avl-tiny avl-tiny-guided; do
  for task in "${GRID[@]}"; do
    run $PY -m avl_lab analyze coverage model=$model data=$task data.limit=$N batch_size=16 \
        out_dir=$OUT/$model/coverage/$task
  done
  run $PY -m avl_lab figures table model=$model data.limit=$N batch_size=16 progress=false \
      "tasks=[synth-docvqa,synth-textvqa,synth-ocr,synth-caption,easy-vqa,synth-docvqa-2x2]" \
      "methods=$METHODS" out_dir=$OUT/$model/table
  # the prefill ranking alone: S=45 with no core tier (C = S, no decode re-ranking)
  for signal in last_token window colsum attn_vnorm key_norm; do
    for task in synth-docvqa synth-textvqa synth-ocr; do
      run $PY -m avl_lab evaluate model=$model data=$task data.limit=$N batch_size=16 progress=false \
          generation.max_new_tokens=32 policy=avl policy.S=45 policy.signal=$signal \
          out_dir=$OUT/$model/no_core/$signal/$task
    done
  done
done
run $PY docs/issue32/summarize.py "$OUT" docs/figures/signals
