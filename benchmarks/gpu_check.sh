#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with a CUDA GPU:
#   1. environment (nvidia-smi, torch, CUDA),
#   2. build the CUDA core-attention op (JIT, cached),
#   3. the CUDA tests (pytest -m cuda: op vs reference on every kernel path, dispatch, the
#      engine's decode through the kernel), each listed with its result or skip reason,
#   4. benchmarks with --device cuda at real 7B sizes, bf16:
#        core_attention.py  (one layer's decode attention, LLaVA-1.5 / 1.6 shapes),
#        decode_step.py     (one decode step through real LLaVA-1.6-7B layers),
#        engine_generate.py (whole generate: prefill, decode, peak memory, every layout and
#                            policy, hidden 4096 / 32 heads / MLP 11008, 4 layers, batch 1 and 8),
#        decode_crossover.py (decode-step time vs rows held, 1k-32k, 7B layers, batch 1 and 8),
#   5. markdown tables (one file per step and gpu_check.md with all of them) and summary.json
#      (every step's command, exit status and seconds, which core_attention implementation ran
#      how often, and engine_generate's results).
# After each step it prints whether the kernel ran ("kernel: cuda op ran N calls") or the
# reference instead ("kernel: NOT run, reference fallback N calls"), from the counts the op
# writes to $AVL_LAB_OP_LOG (see avl_lab/ext/op.py).
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--which-python] [DIR]
#   DIR        where the results go (default: $OUT, else ./gpu_check_out)
#   --dry-run  the same steps on the CPU with tiny sizes (proves the script without a GPU);
#              the CUDA tests are then all skipped and the op build reports why not.
#   --which-python  print the interpreter the steps would use, and stop.
# Environment: PYTHON (default: .venv/bin/python when there is one, else python), GPU_CHECK_ROUNDS (engine_generate rounds, default 5).
# Exit status: 0 if every step succeeded, 1 otherwise (all steps run regardless).
set -u

DRY=0
WHICH=0
DIR=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --which-python) WHICH=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
    *) DIR="$arg" ;;
  esac
done
DIR="${DIR:-${OUT:-gpu_check_out}}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# The project's virtual environment when there is one (`make install` puts torch there), else
# python from PATH; PYTHON overrides both.
if [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python}"; fi
ROUNDS="${GPU_CHECK_ROUNDS:-5}"
if [ "$WHICH" = 1 ]; then echo "$PY"; exit 0; fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
cd "$ROOT" || exit 1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
STEPS="$DIR/steps.tsv"
: > "$STEPS"

if [ "$DRY" = 1 ]; then
  DEV=(--device cpu)
  OP_ARGS=(--shapes llava15 --batch 1 --dtypes fp32 --rounds 1 --budget-gib 0.02)
  STEP_ARGS=(--tiny --shape llava16 --layers 1 --batch 1 --rounds 1)
  GEN_ARGS=(--layouts llava15 --batch 1 --layers 4 --hidden 64 --heads 4 --mlp 128 --new 2 --rounds 1)
  CROSS_ARGS=(--tiny --rows 128 256 --batch 1 --steps 1 --rounds 1)
  BUILD_KIND=cpu
else
  DEV=(--device cuda)
  OP_ARGS=()
  STEP_ARGS=(--layers 4 --batch 1 8)
  GEN_ARGS=(--dtype bf16 --hidden 4096 --heads 32 --mlp 11008 --layers 4 --batch 1 8 --new 32
            --rounds "$ROUNDS")
  CROSS_ARGS=(--rounds 3)
  BUILD_KIND=cuda
fi

# kernel_line NAME: which core_attention implementation the step ran, from DIR/NAME.ops.json.
kernel_line() {
  "$PY" - "$DIR/$1.ops.json" "$BUILD_KIND" <<'PYEOF'
import json, pathlib, sys

path, kind = pathlib.Path(sys.argv[1]), sys.argv[2]
ops = json.loads(path.read_text()) if path.exists() else {}
fell, ref = ops.get("fallback", 0), ops.get("ref", 0)
extra = f" (reference asked for {ref} calls)" if ref else ""
if ops.get(kind):
    note = f"; reference fallback {fell} calls" if fell else ""
    print(f"kernel: {kind} op ran {ops[kind]} calls{note}{extra}")
elif fell:
    print(f"kernel: NOT run, reference fallback {fell} calls{extra}")
else:
    print(f"kernel: not called{extra}")
PYEOF
}

# step NAME CMD...: run CMD, output to DIR/NAME.md, record "NAME<TAB>rc<TAB>seconds<TAB>cmd",
# then say whether the kernel ran (the op counts its calls into DIR/NAME.ops.json).
step() {
  local name="$1"; shift
  local t0 t1 rc
  echo "== $name: $*"
  rm -f "$DIR/$name.ops.json"
  t0=$(date +%s%N)
  AVL_LAB_OP_LOG="$DIR/$name.ops.json" "$@" > "$DIR/$name.md" 2>&1
  rc=$?
  t1=$(date +%s%N)
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( (t1 - t0) / 1000000 ))" "$*" >> "$STEPS"
  echo "   $(kernel_line "$name")"
  [ "$rc" = 0 ] || { echo "   failed (exit $rc), last lines:"; tail -n 5 "$DIR/$name.md"; }
}

step env bash -c "nvidia-smi || echo 'nvidia-smi: not available'; $PY -c \
'import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())'"

if [ "$DRY" = 1 ]; then  # show the CUDA build's verdict without failing the dry run
  step build_op "$PY" -c "from avl_lab.ext import build; \
print('cuda op:', build.toolchain_problem('cuda') or 'would build'); \
print('cpu op:', build.toolchain_problem('cpu') or 'toolchain present')"
else
  step build_op "$PY" -c "from avl_lab.ext import build; m = build.load('$BUILD_KIND'); print('built', m.__file__)"
fi
# -v: every CUDA test by name with its result or skip reason (a dry run skips all); a wide
# COLUMNS so that pytest does not cut the reasons off.
step cuda_tests env COLUMNS=250 "$PY" -m pytest -v -rs -p no:cacheprovider -m cuda \
  tests/test_ext_core_attention.py tests/test_ext_dispatch.py tests/test_ext_cuda.py
step core_attention "$PY" benchmarks/core_attention.py "${DEV[@]}" "${OP_ARGS[@]}"
step decode_step "$PY" benchmarks/decode_step.py "${DEV[@]}" "${STEP_ARGS[@]}"
step engine_generate "$PY" benchmarks/engine_generate.py "${DEV[@]}" "${GEN_ARGS[@]}" \
  --json "$DIR/engine_generate.json"
step decode_crossover "$PY" benchmarks/decode_crossover.py "${DEV[@]}" "${CROSS_ARGS[@]}" \
  --json "$DIR/decode_crossover.json" --plot "$DIR/decode_crossover.png"

"$PY" - "$DIR" "$DRY" <<'EOF'
import json, pathlib, sys

out, dry = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, ms, cmd = line.split("\t", 3)
    ops = out / f"{name}.ops.json"  # core_attention calls per implementation (avl_lab.ext.op)
    steps.append({"step": name, "exit": int(rc), "seconds": round(int(ms) / 1e3, 1), "command": cmd,
                  "output": f"{name}.md", "ops": json.loads(ops.read_text()) if ops.exists() else {}})
gen = out / "engine_generate.json"
summary = {"dry_run": dry, "ok": all(s["exit"] == 0 for s in steps), "steps": steps,
           "engine_generate": json.loads(gen.read_text()) if gen.exists() else None}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
md = ["# GPU check" + (" (dry run: CPU, tiny sizes)" if dry else ""), "",
      "| step | exit | seconds | core_attention calls |", "|---|---|---|---|"]
md += [f"| {s['step']} | {s['exit']} | {s['seconds']} | "
       f"{', '.join(f'{k} {v}' for k, v in sorted(s['ops'].items())) or '-'} |" for s in steps]
for s in steps:
    md += ["", f"## {s['step']}", "", f"`{s['command']}`", "", (out / s["output"]).read_text().rstrip()]
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print(f"{'all steps passed' if summary['ok'] else 'SOME STEPS FAILED'}; results in {out}")
sys.exit(0 if summary["ok"] else 1)
EOF
