#!/usr/bin/env bash
# The one script to run on a machine with an accelerator, well under 10 minutes:
#
#   bash bench/device_check.sh [--smoke] [--out DIR] [--data_dir DIR]
#
# 1. The machine: nvidia-smi, the CPU, Python and TensorFlow, the devices TensorFlow sees. Without
#    TensorFlow it installs the project from $WHEELHOUSE (pip --no-index --find-links: wheels
#    carried to a machine that reaches no package index) or stops with one line saying so.
# 2. The suite's checks of the step's paths against the float64 reference
#    (tests/test_fast_paths.py, tests/test_meta_gradient.py), on whatever device TensorFlow uses.
# 3. bench/meta_step.py on every configuration and order, one JSON line each, the device named.
# 4. A short main.py run of each Omniglot usage line (the table's rows), its seconds per iteration.
#
# Everything goes under DIR (default: $OUT if set, else logs/device_check): machine.txt,
# tests.txt, bench.jsonl, main_<row>.log and summary.md. --smoke is the CPU form CI runs
# (tests/test_device_check.py): no test step, two configurations with 2 timed steps each, two usage
# lines of 2 iterations, no autotuning, so that the script works the first time an accelerator
# is there.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
OUTDIR="${OUT:-logs/device_check}"
DATA_DIR="./data"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUTDIR="$2"; shift ;;
    --data_dir) DATA_DIR="$2"; shift ;;
    *) echo "error: unknown argument $1: use --smoke, --out DIR, --data_dir DIR" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUTDIR"
PY="${PYTHON:-python3}"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
[ "$SMOKE" = 1 ] && export MAML_TF_AUTOTUNE=0   # the CPU form: no timing of the step's paths
start=$(date +%s)
say() { echo "$*" | tee -a "$OUTDIR/summary.md"; }
: > "$OUTDIR/summary.md"

# 1. The machine -------------------------------------------------------------------------------
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu 2> /dev/null | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-300
  "$PY" --version
} > "$OUTDIR/machine.txt" 2>&1
if ! "$PY" -c "import tensorflow" 2> /dev/null; then
  if [ -n "${WHEELHOUSE:-}" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELHOUSE" -e . >> "$OUTDIR/machine.txt" 2>&1
  fi
  if ! "$PY" -c "import tensorflow" 2> /dev/null; then
    say "error: TensorFlow is not installed here and cannot be: set WHEELHOUSE to a folder of wheels (tensorflow and its CUDA libraries) and run again"
    exit 3
  fi
fi
"$PY" - >> "$OUTDIR/machine.txt" 2>&1 <<'PY'
import tensorflow as tf
print("tensorflow", tf.__version__, "built with CUDA:", tf.test.is_built_with_cuda())
print("devices:", [d.name for d in tf.config.list_physical_devices()])
for g in tf.config.list_physical_devices("GPU"):
    print("gpu:", tf.config.experimental.get_device_details(g))
PY
DEVICE=$("$PY" -c "import tensorflow as tf; g=tf.config.list_physical_devices('GPU'); print(tf.config.experimental.get_device_details(g[0]).get('device_name', 'GPU') if g else 'CPU only')" 2> /dev/null)
say "# Device check: $DEVICE"
say ""
say "Machine: $OUTDIR/machine.txt"

# 2. The suite's path checks ---------------------------------------------------------------------
if [ "$SMOKE" = 0 ]; then
  "$PY" -m pytest -q tests/test_fast_paths.py tests/test_meta_gradient.py > "$OUTDIR/tests.txt" 2>&1
  say "Tests (fast paths, meta-gradient against float64): $(tail -n 1 "$OUTDIR/tests.txt")"
fi

# 3. The step on every configuration -------------------------------------------------------------
: > "$OUTDIR/bench.jsonl"
if [ "$SMOKE" = 1 ]; then
  CONFIGS="sinusoid omniglot5w1s"; ITERS="--iters 2 --warmup 1 --no_peak"
else
  CONFIGS="sinusoid omniglot5w1s omniglot20w1s omniglot5w5s omniglot20w5s mini5w1s mini5w5s"; ITERS=""
fi
for c in $CONFIGS; do
  for order in "" "--first_order"; do
    if ! "$PY" bench/meta_step.py --config "$c" $order $ITERS >> "$OUTDIR/bench.jsonl" 2>> "$OUTDIR/bench.err"; then
      say "bench: $c $order failed (see $OUTDIR/bench.err)"
    fi
  done
done
"$PY" - "$OUTDIR/bench.jsonl" >> "$OUTDIR/summary.md" <<'PY'
import json, sys
print("\n| config | order | path | s / step | % of float32 peak |\n|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    pct = r.get("percent_of_peak")
    print(f"| {r['config']} | {'1st' if r['first_order'] else '2nd'} | {r['tasks']}{'+xla' if r['xla'] else ''} "
          f"| {r['sec_per_iter_median']:.4g} | {'-' if pct is None else pct} |")
PY

# 4. Each Omniglot usage line, briefly -----------------------------------------------------------
if [ ! -d "$DATA_DIR/omniglot_resized" ]; then
  say "main.py: no $DATA_DIR/omniglot_resized (python data/prepare_omniglot.py first, or --data_dir): skipped"
else
  N=$([ "$SMOKE" = 1 ] && echo 2 || echo 200)
  O5="--datasource=omniglot --meta_batch_size=32 --update_lr=0.4 --num_updates=1"
  O20="--datasource=omniglot --meta_batch_size=16 --num_classes=20 --update_lr=0.1 --num_updates=5"
  say ""
  say "| usage line | iterations | seconds | s / iteration |"
  say "|---|---|---|---|"
  ROWS=("omniglot5w1s:$O5 --update_batch_size=1" "omniglot20w1s:$O20 --update_batch_size=1")
  [ "$SMOKE" = 0 ] && ROWS+=("omniglot5w5s:$O5 --update_batch_size=5" "omniglot20w5s:$O20 --update_batch_size=5")
  for row in "${ROWS[@]}"; do
    name="${row%%:*}"; flags="${row#*:}"
    t0=$(date +%s.%N)
    if "$PY" main.py $flags --metatrain_iterations="$N" --data_dir="$DATA_DIR" \
        --logdir="$OUTDIR/logs/$name" --save_interval=100000 > "$OUTDIR/main_$name.log" 2>&1; then
      t1=$(date +%s.%N)
      say "| $name | $N | $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") | $(grep -oE '[0-9.]+ (s/it|it/s)' "$OUTDIR/main_$name.log" | tail -n 1) |"
    else
      say "| $name | $N | failed: $OUTDIR/main_$name.log | |"
    fi
  done
fi
say ""
say "Done in $(( $(date +%s) - start )) s."
