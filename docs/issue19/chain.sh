#!/bin/bash
# issue 19: the two trainings one after the other (both resumable), at nice 19.
# Re-running it resumes whatever is unfinished (each run resumes from its last.ckpt).
cd "$(dirname "$0")/../.."
PY=${PY:-/work/main/.venv/bin/python}
COMMON="init_from=avl-tiny-guided reinit_decoder=true read_attention_weight=0 slot_attention_weight=0 scene_loss_weight=0 glyph_loss_weight=1 lr=1e-3 warmup_steps=50 max_minutes=900"
mkdir -p runs/train
echo "main start $(date -u)"
nice -n 19 $PY -m avl_lab.train $COMMON 'task_weights=[0.3,0.2,0.25,0.1,0.15]' max_steps=5000 eval_every_steps=500 out_dir=runs/train/avl-tiny-unguided >> runs/train/avl-tiny-unguided.log 2>&1
echo "main done rc=$? $(date -u)"
nice -n 19 $PY -m avl_lab.train $COMMON 'tasks=[synth-docvqa-2x2]' 'task_weights=[1]' max_steps=2000 eval_every_steps=250 out_dir=runs/train/avl-tiny-2x2 >> runs/train/avl-tiny-2x2.log 2>&1
echo "2x2 done rc=$? $(date -u)"
