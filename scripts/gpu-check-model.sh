#!/usr/bin/env bash
# GPU check of the RAM++ model (feature `train`), in two steps:
#   scripts/gpu-check-model.sh prepare   # here: CUDA-linked test binaries + parity fixtures -> target/gpu-check/
#   scripts/gpu-check-model.sh run       # on the GPU machine (torch 2.11.0+cu130 in /opt/torch/.venv), from the
#                                        # repository root with target/gpu-check carried over; results in $OUT
# `run` checks parity on CUDA for both reference fixtures (same tolerances as on the CPU; cuDNN off so
# the patch convolution is not TF32) and times full-size training steps (forward + backward, f32,
# training mode) with the peak GPU memory sampled by nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/gpu-check

case "${1:-}" in
prepare)
  shared="${TAGFIX_SHARED:-../shared}"
  out=$(TAGFIX_LINK_CUDA=1 cargo test --features train --test ram_plus_parity --test ram_plus_gpu --no-run \
        --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
  mkdir -p "$dest"
  for exe in $(echo "$out" | grep /deps/); do
    name=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
    objcopy --strip-debug "$exe" "$dest/$name"
  done
  for d in tiny tiny_224_w7; do
    mkdir -p "$dest/$d"
    cp "$shared/ram/reference/$d"/{config.json,weights.safetensors,inputs.safetensors,outputs.safetensors,grads.safetensors,generate_tag.json} "$dest/$d/"
  done
  # Relink the ordinary binaries without the CUDA libraries.
  cargo test --features train --test ram_plus_parity --test ram_plus_gpu --no-run >/dev/null 2>&1
  du -sh "$dest"
  ;;
run)
  : "${OUT:=$dest/out}"
  mkdir -p "$OUT"
  export LD_LIBRARY_PATH="${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  for d in tiny tiny_224_w7; do
    TAGFIX_TEST_DEVICE=cuda TAGFIX_PARITY_DIR="$PWD/$dest/$d" "$dest/ram_plus_parity" --nocapture 2>&1 | tee "$OUT/parity_$d.txt"
  done
  for spec in ${GPU_STEPS:-swin_l_224:52 swin_l_384:26}; do
    preset=${spec%%:*}; batch=${spec##*:}
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/mem_${preset}_$batch.csv" &
    smi=$!
    TAGFIX_TEST_DEVICE=cuda TAGFIX_GPU_PRESETS=$preset TAGFIX_GPU_BATCH=$batch "$dest/ram_plus_gpu" --ignored --nocapture \
      2>&1 | tee "$OUT/steps_${preset}_$batch.txt" || true
    kill "$smi"
    echo "$preset batch $batch: peak GPU memory $(sort -n "$OUT/mem_${preset}_$batch.csv" | tail -1) MiB" | tee -a "$OUT/summary.txt"
  done
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
