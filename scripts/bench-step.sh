#!/usr/bin/env bash
# RAM++ forward + backward step time: tagfix (Rust, libtorch through tch) side by side with the Python
# functional RAM++ (../shared/ram/reference/functional_reference.py, which reproduces the public
# implementation bit for bit) on the same weights, batch, device and thread count, in one run.
#
#   scripts/bench-step.sh                          # CPU, 2 threads, the cases below
#   DEVICE=cuda TORCH_PYTHON=python3 CASES="swin_l_224:4585:51:26" STEPS=10 scripts/bench-step.sh
#
# CASES: space-separated config:classes:descriptions:batch (config tiny or a preset name; classes and
# descriptions apply to tiny). Rounds alternate Rust and Python ROUNDS times. Results: one JSON line per
# measurement in $OUT_DIR/results.jsonl and a table on stdout with the ratio Rust / Python (< 1 = faster).
# The Python side needs an importable torch 2.11: TORCH_PYTHON, else .venv-bench (created from PyPI,
# ~2.6 GB with the CUDA wheels torch's Linux build requires, on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
THREADS=${THREADS:-2}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-2}
PRECISION=${PRECISION:-f32}
CASES=${CASES:-"tiny:10:3:2 tiny:4585:51:4"}
OUT_DIR=${OUT_DIR:-out/bench-step}
REF=${TAGFIX_REFERENCE:-${TAGFIX_SHARED:-../shared}/ram/reference}
BIN=${STEP_TIME_BIN:-target/release/examples/step_time}
PY=${TORCH_PYTHON:-.venv-bench/bin/python}

if [ ! -f "$REF/functional_reference.py" ]; then
  echo "bench-step: $REF/functional_reference.py not found (set TAGFIX_SHARED or TAGFIX_REFERENCE)" >&2
  exit 2
fi
# The stamp names the packages: .venv-bench may exist already without torch (scripts/bench-embed.sh).
pkgs=(torch==2.11.0 safetensors==0.8.0 numpy==2.4.6)
stamp=".venv-bench/.tagfix-step-$(echo "${pkgs[*]}" | sha256sum | cut -c1-16)"
if [ -z "${TORCH_PYTHON:-}" ] && [ ! -f "$stamp" ]; then
  [ -x "$PY" ] || python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q "${pkgs[@]}"
  rm -f .venv-bench/.tagfix-step-*
  touch "$stamp"
fi
if [ -z "${STEP_TIME_BIN:-}" ]; then
  scripts/setup.sh >/dev/null
  cargo build --release --features train --example step_time --quiet
fi
mkdir -p "$OUT_DIR"
results="$OUT_DIR/results.jsonl"
: > "$results"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
# Runs "$@" (which prints one JSON line); with GPU_MEMORY=1 adds the peak GPU memory nvidia-smi saw meanwhile
# (sampled every 50 ms; the whole process: CUDA context, caching allocator and all).
measure() {
  if [ "${GPU_MEMORY:-0}" = 1 ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT_DIR/mem.csv" &
    local smi=$! line
    line=$("$@")
    kill "$smi"; wait "$smi" 2>/dev/null || true
    echo "$line" | sed "s/}\$/,\"peak_gpu_mib\":$(sort -n "$OUT_DIR/mem.csv" | tail -1)}/"
  else
    "$@"
  fi
}
for case in $CASES; do
  IFS=: read -r config classes des batch <<< "$case"
  export_dir=$(mktemp -d)
  for round in $(seq "$ROUNDS"); do
    measure "$BIN" --config "$config" --classes "$classes" --des "$des" --batch "$batch" --steps "$STEPS" \
      --warmup "$WARMUP" --threads "$THREADS" --device "$DEVICE" --precision "$PRECISION" \
      --export "$export_dir" | sed "s/^{/{\"round\":$round,\"case\":\"$case\",/" >> "$results"
    measure "$PY" scripts/bench_step.py --dir "$export_dir" --reference "$REF" --steps "$STEPS" --warmup "$WARMUP" \
      --threads "$THREADS" --device "$DEVICE" --precision "$PRECISION" \
      | sed "s/^{/{\"round\":$round,\"case\":\"$case\",/" >> "$results"
  done
  rm -rf "$export_dir"
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'case':24} {'round':>5} {'device':>8} {'prec':>5} {'rust ms':>9} {'python ms':>10} {'ratio':>6} "
      f"{'rust MiB':>9} {'py MiB':>9}  losses rust | python")
for case in dict.fromkeys(r["case"] for r in rows):
    for rnd in sorted({r["round"] for r in rows if r["case"] == case}):
        rs = [r for r in rows if r["case"] == case and r["round"] == rnd]
        rust = next(r for r in rs if r["impl"].startswith("tagfix"))
        py = next(r for r in rs if not r["impl"].startswith("tagfix"))
        ratio = rust["median_s"] / py["median_s"]
        print(f"{case:24} {rnd:>5} {rust['device']:>8} {rust['precision']:>5} {1e3*rust['median_s']:9.2f} "
              f"{1e3*py['median_s']:10.2f} {ratio:6.3f} "
              f"{rust.get('peak_gpu_mib', '-'):>9} {py.get('peak_gpu_mib', '-'):>9}  "
              f"{rust['loss_tag']:.4f}/{rust['loss_dis']:.4f}/{rust['loss_alignment']:.4f} | "
              f"{py['loss_tag']:.4f}/{py['loss_dis']:.4f}/{py['loss_alignment']:.4f}")
PY
