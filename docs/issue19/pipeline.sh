#!/bin/bash
# issue 19, unattended and resumable: guided measurements (already running) -> main training ->
# premise training -> measurements of both new models. Re-run it to continue after a stop.
cd "$(dirname "$0")/../.."
while pgrep -f "runs/issue19/measure_guided.sh" > /dev/null; do sleep 30; done
echo "guided measurements done $(date -u)"
docs/issue19/chain.sh
echo "trainings done $(date -u)"
cp docs/issue19/measure.sh runs/issue19/measure_new.sh
[ -f runs/train/avl-tiny-unguided/export/model.safetensors ] && \
  runs/issue19/measure_new.sh runs/train/avl-tiny-unguided/export unguided
[ -f runs/train/avl-tiny-2x2/export/model.safetensors ] && \
  SKIP="fig pareto" runs/issue19/measure_new.sh runs/train/avl-tiny-2x2/export premise-2x2 synth-docvqa-2x2
echo "measurements done $(date -u)"
