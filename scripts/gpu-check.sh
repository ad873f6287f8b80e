#!/usr/bin/env bash
# GPU check of the RAM++ model and the training loop (feature `train`), in two steps:
#   scripts/gpu-check.sh prepare   # here: CUDA-linked binaries + parity fixtures + the Python reference
#                                  # + `bundle` -> target/gpu-check/ (carry that folder to the GPU machine)
#   scripts/gpu-check.sh run [PART...]  # on the GPU machine, from the repository root; results in $OUT
#                                  # PART: parity step train cpu loop dist upload (default: all seven)
# The GPU machine needs the NVIDIA driver and torch 2.11 (+cu130) for Python with its libraries
# (TORCH_LIB, default /opt/torch/.venv/.../torch/lib; TORCH_PYTHON, default python3). Nothing is built there.
# `run`, in a few minutes of GPU time:
#   1. parity on CUDA for both reference fixtures (same tolerances as on the CPU);
#   2. forward + backward step time and peak GPU memory of full-size RAM++ (Swin-B/L, 4585 classes x 51
#      descriptions, micro-batch 26), f32 and bf16, side by side with the Python functional RAM++ on the same
#      weights and batch (scripts/bench-step.sh);
#   3. `tagfix train --device cuda --precision bf16` on a synthetic 224 px set: batch 52 as 2 x 26, images/s
#      with data loading, the health summary;
#   4. the CPU step-time comparison of the tiny configuration (2 threads) on that machine's idle processor;
#   5. (`loop`) the loop's later features on CUDA: RandomAugment and validation in the loop (images/s), the
#      online teacher (ONNX Runtime on the CPU in the loader; data wait), and `tagfix repair --train-device
#      cuda` on the embedded default. Needs target/gpu-check/bundle.tar.xz (ONNX Runtime, the MiniLM model,
#      the CLIP test towers, the base embeddings and the RAM tag list; 43 MB compressed). Everything together
#      exceeds the device tool's 64 MiB carry: carry target/gpu-check/bin + target/gpu-check/ref for parts
#      1-4, target/gpu-check/bin + target/gpu-check/bundle.tar.xz for `run loop`.
#      A CPU dry run of part 5 (no GPU): LOOP_DEVICE=cpu LOOP_PRECISION=f32 TRAIN_MODEL=tiny LOOP_STEPS=2
#      ONLINE_STEPS=2 scripts/gpu-check.sh run loop
#   6. (`dist`, issue 13) data-parallel overhead: the same `tagfix train` as part 3 as a plain process and
#      as a world of one rank over NCCL (torchrun's variables set by hand), images/s side by side (target:
#      overhead <= 3 %); with >= 2 GPUs also `--nproc-per-node 2` at twice the global batch (scaling
#      efficiency = images/s / (2 x one GPU), target >= 0.9). Needs the Trainer's distributed loop and the
#      NCCL build (`tagfix doctor` line `nccl`); only parts 1-4 carry, as for part 3.
#   7. (`upload`, issue 14) the batch upload, f32 from pageable memory against uint8 through pinned memory
#      normalised on the device (examples/bench_upload.rs: time per micro-batch of 26 and 52, bytes, and the
#      two tensors equal bit for bit on CUDA), and `tagfix train --micro-batch-size auto` for Swin-L 224 bf16
#      at batch 52 (the size chosen, its prediction, and the number recorded in config.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/gpu-check

case "${1:-}" in
prepare)
  ref="${TAGFIX_SHARED:-../shared}/ram/reference"
  export TAGFIX_LINK_CUDA=1
  cargo build --release --features train --bin tagfix --example step_time
  tests=$(cargo test --release --features train --test ram_plus_parity --no-run --message-format=json 2>/dev/null \
          | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
  rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/ref"
  objcopy --strip-debug target/release/tagfix "$dest/bin/tagfix"
  objcopy --strip-debug target/release/examples/step_time "$dest/bin/step_time"
  objcopy --strip-debug "$(echo "$tests" | grep /deps/ | head -1)" "$dest/bin/ram_plus_parity"
  cp "$ref/functional_reference.py" "$dest/ref/"
  scripts/gpu-check.sh bundle
  for d in tiny tiny_224_w7; do
    mkdir -p "$dest/ref/$d"
    cp "$ref/$d"/{config.json,weights.safetensors,inputs.safetensors,outputs.safetensors,grads.safetensors,generate_tag.json} "$dest/ref/$d/"
  done
  # Part `upload` (issue 14): the batch-upload benchmark, CUDA-linked.
  cargo build --release --features train --example bench_upload
  objcopy --strip-debug target/release/examples/bench_upload "$dest/bin/bench_upload"
  # Relink the ordinary binaries without the CUDA libraries.
  unset TAGFIX_LINK_CUDA
  cargo build --release --features train --bin tagfix --example step_time --quiet
  du -sh "$dest"
  ;;
bundle)
  # What part 5 reads, dereferenced (the setup links into .venv) and compressed to fit the carry limit.
  b=$(mktemp -d)
  mkdir -p "$b/models" "$dest"
  cp -L .deps/libonnxruntime.so "$b/"
  cp -rL models/minilm models/clip-tiny models/clip-tiny-vision models/clip-bpe "$b/models/"
  cp "${TAGFIX_SHARED:-../shared}/reference/minilm_ram_single_template.safetensors" "$b/base.safetensors"
  cp "${TAGFIX_SHARED:-../shared}/ram/data/ram_tag_list.txt" "$b/"
  tar -C "$b" -cJf "$dest/bundle.tar.xz" .
  rm -rf "$b"
  du -sh "$dest/bundle.tar.xz"
  ;;
run)
  shift
  parts=" ${*:-parity step train cpu loop dist upload} "
  want() { [[ "$parts" == *" $1 "* ]]; }
  : "${OUT:=$dest/out}"
  mkdir -p "$OUT"
  export LD_LIBRARY_PATH="${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt" || true
  if want parity; then
  echo "== 1. parity on CUDA"
  for d in tiny tiny_224_w7; do
    TAGFIX_TEST_DEVICE=cuda TAGFIX_PARITY_DIR="$PWD/$dest/ref/$d" "$dest/bin/ram_plus_parity" --nocapture 2>&1 \
      | tee "$OUT/parity_$d.txt" | grep -E "test result|max|FAILED|panicked" || true
  done
  fi
  if want step; then
  echo "== 2. full-size step time, Rust vs Python"
  for precision in ${PRECISIONS:-f32 bf16}; do
    DEVICE=cuda PRECISION=$precision THREADS=${THREADS:-8} STEPS=${STEPS:-10} WARMUP=3 ROUNDS=1 \
      CASES="${CASES:-swin_b_224:0:0:26 swin_l_224:0:0:26 swin_l_384:0:0:26}" GPU_MEMORY=1 \
      STEP_TIME_BIN="$dest/bin/step_time" TAGFIX_REFERENCE="$dest/ref" TORCH_PYTHON="${TORCH_PYTHON:-python3}" \
      OUT_DIR="$OUT/step_$precision" scripts/bench-step.sh 2>&1 | tee "$OUT/step_$precision.txt" || true
  done
  fi
  if want train; then
  echo "== 3. tagfix train on CUDA (bf16, batch 52 = 2 x 26)"
  synth=$(mktemp -d)
  "$dest/bin/tagfix" synth-images --out "$synth" --count 520 --size 224 --descriptions 51 > "$OUT/synth.txt"
  "$dest/bin/tagfix" train --model "${TRAIN_MODEL:-swin_l_224}" --data "$synth/train.json" --images "$synth/images" \
    --manifest "$synth/manifest.json" --label-embed "$synth/label_embed.safetensors" \
    --teacher "$synth/teacher.safetensors" --allow-random-encoder --device cuda --precision bf16 \
    --batch-size 52 --micro-batch-size 26 --max-steps "${TRAIN_STEPS:-20}" --workers 12 --checkpoint-every off \
    --out "$OUT/run" --json > "$OUT/train_summary.json" 2> "$OUT/train.log" || { tail -20 "$OUT/train.log"; true; }
  tail -5 "$OUT/train.log"
  python3 - "$OUT/run/metrics.jsonl" <<'PY' || true
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
late = recs[len(recs) // 2:]
ips = sorted(r["images_per_s"] for r in late)[len(late) // 2]
wait = sum(r["data_wait_s"] for r in late) / len(late)
print(f"train: {len(recs)} steps; median images/s over the second half {ips:.1f}; mean data wait {wait:.3f} s/step")
print("first/last tag loss", recs[0]["loss"]["tag"]["raw"], recs[-1]["loss"]["tag"]["raw"])
PY
  rm -f "$OUT/run/checkpoints" -r
  fi
  if want cpu; then
  echo "== 4. CPU step time on this machine's processor (tiny configuration, 2 threads), Rust vs Python"
  DEVICE=cpu THREADS=2 STEPS=30 ROUNDS=2 CASES="${CPU_CASES:-tiny:10:3:2 tiny:10:3:8}" \
    STEP_TIME_BIN="$dest/bin/step_time" TAGFIX_REFERENCE="$dest/ref" TORCH_PYTHON="${TORCH_PYTHON:-python3}" \
    OUT_DIR="$OUT/step_cpu" scripts/bench-step.sh 2>&1 | tee "$OUT/step_cpu.txt" || true
  fi
  if want loop; then
  echo "== 5. RandomAugment + validation, the online teacher, repair on CUDA"
  b=$(mktemp -d)
  tar -C "$b" -xJf "$dest/bundle.tar.xz"
  export ORT_DYLIB_PATH="$b/libonnxruntime.so" TAGFIX_MODELS="$b/models" TAGFIX_RAM_DATA="$b"
  t="$dest/bin/tagfix"
  s=$(mktemp -d)
  "$t" synth-images --out "$s/train" --count 520 --size 224 --descriptions 51 > /dev/null
  "$t" synth-images --out "$s/val" --count 104 --size 224 --descriptions 51 --seed 9 > /dev/null
  common=(--data "$s/train/train.json" --images "$s/train/images" --manifest "$s/train/manifest.json"
    --label-embed "$s/train/label_embed.safetensors" --allow-random-encoder --device "${LOOP_DEVICE:-cuda}"
    --precision "${LOOP_PRECISION:-bf16}"
    --batch-size 52 --micro-batch-size 26 --workers 14 --checkpoint-every off)
  "$t" train --model "${TRAIN_MODEL:-swin_l_224}" "${common[@]}" --teacher "$s/train/teacher.safetensors" \
    --max-steps "${LOOP_STEPS:-20}" --val-data "$s/val/train.json" --val-images "$s/val/images" --val-every 10 \
    --out "$OUT/run_ra" > "$OUT/run_ra.txt" 2> "$OUT/run_ra.log" || tail -20 "$OUT/run_ra.log"
  cat "$OUT/run_ra.txt"
  printf '[online_teacher]\nimage_model = "clip-tiny-vision"\ntext_model = "clip-tiny"\nthreads = 8\nbatch_size = 26\n' \
    > "$s/online.toml"
  "$t" train --config "$s/online.toml" --model "${TRAIN_MODEL:-swin_l_224}" "${common[@]}" --teacher online \
    --max-steps "${ONLINE_STEPS:-10}" --out "$OUT/run_online" > "$OUT/run_online.txt" 2> "$OUT/run_online.log" \
    || tail -20 "$OUT/run_online.log"
  cat "$OUT/run_online.txt"
  for r in run_ra run_online; do
    [ -f "$OUT/$r/metrics.jsonl" ] || continue
    python3 - "$OUT/$r/metrics.jsonl" "$r" <<'PY' || true
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
late = recs[len(recs) // 2:]
ips = sorted(r["images_per_s"] for r in late)[len(late) // 2]
wait = sum(r["data_wait_s"] for r in late) / len(late)
print(f"{sys.argv[2]}: {len(recs)} steps; median images/s over the second half {ips:.1f}; mean data wait {wait:.3f} s/step")
PY
    rm -rf "$OUT/$r/checkpoints"
  done
  "$t" repair --train-device "${LOOP_DEVICE:-cuda}" --base "$b/base.safetensors" --out "$OUT/repair" > /dev/null 2> "$OUT/repair.log" \
    || tail -20 "$OUT/repair.log"
  grep -A4 "## Trained" "$OUT/repair/REPORT.md" || true
  rm -rf "$OUT/repair/train/checkpoints" "$OUT/repair/image-set" "$b" "$s"
  fi
  if want dist; then
  echo "== 6. data-parallel overhead: plain loop vs one rank over NCCL (vs two ranks when there are 2 GPUs)"
  t="$dest/bin/tagfix"
  "$t" -q doctor --require nccl > "$OUT/dist_doctor.txt" || { cat "$OUT/dist_doctor.txt"; echo "dist: no NCCL in this build"; }
  s=$(mktemp -d)
  "$t" synth-images --out "$s" --count 1040 --size 224 --descriptions 51 > /dev/null
  steps="${DIST_STEPS:-20}"
  # dist_run NAME BATCH [ENV...] -- [FLAGS...]: one training run; its median images/s over the second half.
  dist_run() {
    local name="$1" batch="$2"; shift 2
    local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
    env "${envs[@]}" "$t" train --model "${TRAIN_MODEL:-swin_l_224}" --data "$s/train.json" --images "$s/images" \
      --manifest "$s/manifest.json" --label-embed "$s/label_embed.safetensors" --teacher "$s/teacher.safetensors" \
      --allow-random-encoder --device cuda --precision bf16 --batch-size "$batch" --micro-batch-size 26 \
      --max-steps "$steps" --workers 12 --checkpoint-every off --out "$OUT/$name" "$@" \
      > "$OUT/$name.txt" 2> "$OUT/$name.log" || { tail -20 "$OUT/$name.log"; return 0; }
    python3 - "$OUT/$name/metrics.jsonl" "$name" <<'PY' || true
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
late = recs[len(recs) // 2:]
print(sys.argv[2], sorted(r["images_per_s"] for r in late)[len(late) // 2])
PY
    rm -rf "$OUT/$name/checkpoints"
  }
  {
    dist_run dist_plain 52 --
    dist_run dist_nccl1 52 RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
      MASTER_PORT=29517 -- --dist-backend nccl
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then
      dist_run dist_nccl2 104 -- --nproc-per-node 2 --dist-backend nccl
    fi
  } | tee "$OUT/dist_ips.txt"
  python3 - "$OUT/dist_ips.txt" <<'PY' || true
import sys
ips = dict((k, float(v)) for k, v in (l.split() for l in open(sys.argv[1]) if l.strip()))
if "dist_plain" in ips and "dist_nccl1" in ips:
    print(f"dist: plain {ips['dist_plain']:.1f} images/s, 1 rank over NCCL {ips['dist_nccl1']:.1f}: "
          f"overhead {100 * (1 - ips['dist_nccl1'] / ips['dist_plain']):.1f} % (target <= 3 %)")
if "dist_nccl2" in ips and "dist_plain" in ips:
    print(f"dist: 2 ranks {ips['dist_nccl2']:.1f} images/s: scaling efficiency "
          f"{ips['dist_nccl2'] / (2 * ips['dist_plain']):.3f} (target >= 0.9)")
PY
  rm -rf "$s"
  fi
  # ---- part `upload` (issue 14: uint8 pinned non-blocking upload, --micro-batch-size auto) ----
  if want upload; then
  echo "== upload: f32 pageable vs uint8 pinned + device normalisation; --micro-batch-size auto"
  for m in 26 52; do
    "$dest/bin/bench_upload" "$m" 224 10 cuda 2>&1 | tee "$OUT/upload_$m.txt" || true
  done
  t="$dest/bin/tagfix"
  s=$(mktemp -d)
  "$t" synth-images --out "$s" --count 260 --size 224 --descriptions 51 > /dev/null
  "$t" train --model "${TRAIN_MODEL:-swin_l_224}" --data "$s/train.json" --images "$s/images" \
    --manifest "$s/manifest.json" --label-embed "$s/label_embed.safetensors" --teacher "$s/teacher.safetensors" \
    --allow-random-encoder --device cuda --precision bf16 --batch-size 52 --micro-batch-size auto \
    --max-steps "${AUTO_STEPS:-6}" --workers 12 --checkpoint-every off --out "$OUT/auto" \
    > "$OUT/auto.txt" 2> "$OUT/auto.log" || tail -20 "$OUT/auto.log"
  grep -h "micro_batch_size auto" "$OUT/auto.log" || true
  grep -h "^micro_batch_size" "$OUT/auto/config.toml" || true
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> "$OUT/auto.txt" || true
  rm -rf "$OUT/auto/checkpoints" "$s"
  fi
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
