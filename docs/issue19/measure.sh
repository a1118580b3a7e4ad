#!/bin/bash
# Issue 19's measurements of one model, each resumable (evaluations are cached by out_dir):
#   docs/issue19/measure.sh MODEL NAME [TASKS]     (from the repository root)
# MODEL: a model name or export directory; NAME: the results folder runs/issue19/NAME.
# TASKS (default: the five embedded tasks) is a comma list for the quality and table cells;
# the premise variant uses synth-docvqa-2x2. SKIP="fig pareto" etc. skips parts (quality,
# table, baselines, analysis, fig, pareto).
set -u
MODEL=$1; NAME=$2; TASKS=${3:-synth-docvqa,synth-ocr,synth-textvqa,synth-caption,easy-vqa}
Q=${Q:-200}; N=${N:-32}; A=${A:-16}; NT=${NT:-24}  # sample counts, Pareto trials (smoke: 2 2 2 2)
OUT=runs/issue19/$NAME; PY="nice -n 19 /work/main/.venv/bin/python"; SKIP=${SKIP:-}
mkdir -p "$OUT"
IFS=, read -ra T <<< "$TASKS"
FIRST=${T[0]}
run() { echo "[$(date -u +%T)] $*" >> "$OUT/measure.log"; "$@" >> "$OUT/measure.log" 2>&1; }
skip() { [[ " $SKIP " == *" $1 "* ]]; }
# 1. quality under full, 200 samples per task
skip quality || for t in "${T[@]}"; do
  run $PY -m avl_lab evaluate model=$MODEL data=$t data.limit=$Q policy=full batch_size=16 \
      out_dir=$OUT/full200/$t --no-progress
done
# 2. Table 2/3 (the table's methods) + every other registered baseline at ratio 0.5
skip table || run $PY -m avl_lab figures table model=$MODEL "tasks=[$TASKS]" data.limit=$N batch_size=16 \
    out_dir=$OUT/table --no-progress
skip baselines || for p in streaming random snapkv pyramidkv adakv; do
  for t in "${T[@]}"; do
    run $PY -m avl_lab evaluate model=$MODEL data=$t data.limit=$N batch_size=16 \
        generation.max_new_tokens=32 policy=$p policy.ratio=0.5 out_dir=$OUT/baselines/$p/$t --no-progress
  done
done
# 3. coverage and drift (the fidelity issue's analyses) on the first task
skip analysis || for a in coverage drift; do
  run $PY -m avl_lab analyze $a model=$MODEL data=$FIRST data.limit=$A out_dir=$OUT/analysis
done
# 4. Figures 9 and 10 on the first task
if ! skip fig; then
  for f in fig9 fig10; do
    run $PY -m avl_lab figures $f model=$MODEL data=$FIRST data.limit=$A out_dir=$OUT/$f --no-progress
  done
fi
# 5. the docvqa_pareto front
if ! skip pareto; then
  run $PY -m avl_lab sweep --study docvqa_pareto --n-trials $NT model=$MODEL data=$FIRST --out $OUT/pareto --no-progress
  run $PY -m avl_lab sweep --study docvqa_pareto model=$MODEL data=$FIRST --out $OUT/pareto --report
fi
echo "[$(date -u +%T)] done" >> "$OUT/measure.log"
