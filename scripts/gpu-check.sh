#!/usr/bin/env bash
# GPU check of the RAM++ model and the training loop (feature `train`), in two steps (docs/gpu-check.md
# lists the device calls in order for one session's device time; scripts/gpu-check-dry-run.sh runs the
# first two of them on the CPU):
#   scripts/gpu-check.sh prepare   # here: CUDA-linked binaries + parity fixtures + the Python reference
#                                  # + `bundle` -> target/gpu-check/ (carry that folder to the GPU machine)
#                                  # Needs torch's CUDA stack in .venv (its headers: the pip step of
#                                  # scripts/setup-gpu.sh, scripts/requirements-gpu.txt); build.rs names
#                                  # the missing headers otherwise.
#   scripts/gpu-check.sh run [PART...]  # on the GPU machine, from the repository root; results in $OUT
#                                  # PART: parity step train cpu loop dist upload speed embed casts ckpt
#                                  # loader oom ahead (default: the first seven; the rest are issue 14's, each
#                                  # run on its own)
# The GPU machine needs the NVIDIA driver and torch 2.11 (+cu130) for Python with its libraries
# (TORCH_LIB, default /opt/torch/.venv/.../torch/lib; TORCH_PYTHON, default python3). Nothing is built there.
# `run`, in a few minutes of GPU time:
#   1. parity on CUDA for both reference fixtures (same tolerances as on the CPU; PARITY_DEVICE=cpu for a
#      dry run), and the sharded AdamW update (`--shard-optimizer`) against the whole one, bit for bit;
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
#   6. (`dist`, issue 13) data-parallel scaling: the same `tagfix train` as part 3 as a plain process and,
#      with >= 2 GPUs, `--nproc-per-node 2` at twice the global batch, with f32 gradients exchanged during
#      the backward pass (the default) and after it (`--grad-sync after-backward`), and with bf16 gradients
#      (`--grad-comm bf16`), and with the optimizer state sharded (`--shard-optimizer`; its memory in
#      dist_memory.txt): scaling efficiency = images/s / (2 x one GPU), target >= 0.9. On one GPU it
#      says so and measures only the plain run: a world of one rank (torchrun's variables with
#      WORLD_SIZE=1) joins no process group, so it would time the plain loop again. Needs the NCCL build
#      (`tagfix doctor` line `nccl`); only parts 1-4 carry, as for part 3.
#   7. (`upload`, issue 14) the batch upload, f32 from pageable memory against uint8 through pinned memory
#      normalised on the device (examples/bench_upload.rs: time per micro-batch of 26 and 52, bytes, and the
#      two tensors equal bit for bit on CUDA), and `tagfix train --micro-batch-size auto` for Swin-L 224 bf16
#      at batch 52 (the size chosen, its prediction, and the number recorded in config.toml).
#      A CPU dry run: UPLOAD_DEVICE=cpu UPLOAD_BATCH=8 UPLOAD_SIZE=64 UPLOAD_WORKERS=1 TRAIN_MODEL=tiny
#      AUTO_STEPS=2 scripts/gpu-check.sh run upload
#   8. (`speed`, issue 14, < 5 minutes on an H200, most important first) images/s of the loop
#      (`tagfix train` on synthetic data in the RAM vocabulary: 4585 classes, like the step) against the
#      step alone (forward + backward, `step_time`):
#      Swin-L 224 bf16 at batch 52 as 2 x 26 and as 1 x 52 (and `--micro-batch-size auto` once the
#      trainer has it), Swin-B 224 and Swin-L 384 the same way, f32 without and with `--tf32` (once the
#      trainer has it); peak GPU memory of each run (nvidia-smi every 50 ms) and MFU from the FLOP model
#      (bin/flop_model, docs/PERFORMANCE.md; peaks PEAK_BF16/PEAK_TF32/PEAK_F32 TFLOP/s, default
#      H100/H200 SXM dense: 989/495/67). Results in $OUT/speed.md. Carry target/gpu-check/bin only.
#      A CPU dry run (no GPU): SPEED_DEVICE=cpu SPEED_MODELS=tiny SPEED_STEPS=2 SPEED_BATCH=4
#      scripts/gpu-check.sh run speed
#   9. (`embed`, issue 14) `tagfix embed --device cuda` vs `--device cpu` for the RAM vocabulary with
#      MiniLM and the CLIP-architecture fixture (models/clip-tiny): every row equal within cosine 1e-5,
#      both times recorded, after `tagfix doctor --require onnxruntime-cuda`. Needs onnxruntime-gpu,
#      which the GPU machine lacks and which cannot travel in one call: `prepare` writes its three
#      libraries (314 MB) as an xz archive cut into pieces under target/gpu-check/ort-gpu/ (see
#      docs/PERFORMANCE.md for the calls that move them; ORT_GPU_PARTS names where they were gathered),
#      linked there to the CUDA libraries of /opt/torch/.venv (`scripts/setup-gpu.sh ort-link`). Without
#      the pieces the part stops with a message saying so; without a GPU it must fail at the
#      `onnxruntime-cuda` line. Carry target/gpu-check/bin + target/gpu-check/bundle.tar.xz.
#      A CPU dry run (both sides on the CPU): EMBED_DEVICE=cpu scripts/gpu-check.sh run embed
#  10. (`casts`, issue 14, ~1 minute) bf16 weight casts once per step vs once per micro-batch: Swin-L 224,
#      one step of 2 x 26 forward + backward passes with autocast's cast cache kept for the step and
#      without (scripts/bench-casts.sh on bin/step_time). Carry target/gpu-check/bin only.
#      A CPU dry run: CASTS_DEVICE=cpu CASTS_CONFIG=tiny CASTS_BATCH=2 scripts/gpu-check.sh run casts
#  11. (`ckpt`, issue 14, ~1 minute) how long a checkpoint holds up training: Swin-L 224's parameters and
#      AdamW moments (~4 GB) saved inline (pageable copies, files written on the training thread) vs
#      copied to pinned memory and written by a background thread (bin/bench_checkpoint_save).
#      A CPU dry run: CKPT_DEVICE=cpu CKPT_PRESET=swin_b_224 scripts/gpu-check.sh run ckpt
#  12. (`loader`, issue 14, ~1 minute, CPU only) whether the host's cores feed the GPU: the training
#      loader's images/s at 224 px on all cores, micro-batch 26, micro-batches decoded one at a time vs
#      several at once (bin/bench_loader_pool, mixed image sizes), then one image's stages on one core
#      (bin/bench_loader), and decoding only the crop vs the whole JPEG on one core (bin/bench_crop_decode).
#      Results in $OUT/loader_pool.txt, $OUT/loader_core.txt and $OUT/loader_crop.txt; the target is
#      >= 320 images/s per GPU. Carry target/gpu-check/bin only.
#      A CPU dry run: LOADER_THREADS=2 LOADER_MICRO=4 LOADER_STEPS=2 LOADER_ROUNDS=1 scripts/gpu-check.sh run loader
#  13. (`oom`, ~1 minute) running out of device memory mid-run: Swin-L 224 bf16, step 1 of a batch of 520 in
#      micro-batches of 26, then `--resume` with one micro-batch of 520: exit 2 with "CUDA out of memory",
#      step 1's checkpoint named and a smaller --micro-batch-size suggested, no panic; then `auto` at that
#      batch (its prediction, and whether the trial pass stepped down). Results in $OUT/oom.txt. Carry
#      target/gpu-check/bin only. A CPU dry run (no device memory to exhaust: the host's, limited):
#      (ulimit -v 4000000; OOM_DEVICE=cpu OOM_MODEL=tiny OOM_SIZE=64 OOM_BATCH=1024 OOM_MICRO=8 OOM_WORKERS=1 \
#      RAYON_NUM_THREADS=1 MALLOC_ARENA_MAX=2 OMP_NUM_THREADS=1 scripts/gpu-check.sh run oom)
#  14. (`ahead`, ~1 minute) `tag` / `eval --checkpoint` scoring with the next batch decoded while this one
#      is scored vs one after the other: Swin-L 384 (4585 x 51, random weights) on CUDA, batch 32, 256
#      generated photo-like JPEGs decoded on all cores (scripts/bench-decode-ahead.sh on
#      bin/bench_decode_ahead, CUDA-linked). Results in $OUT/ahead.txt. Carry target/gpu-check/bin only.
#      A CPU dry run: AHEAD_DEVICE=cpu AHEAD_CONFIG=tiny AHEAD_IMAGES=16 AHEAD_BATCH=4 AHEAD_ROUNDS=1 scripts/gpu-check.sh run ahead
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${GPU_CHECK_DIR:-target/gpu-check}"  # GPU_CHECK_DIR: another prepared folder (CPU dry runs)

case "${1:-}" in
prepare)
  ref="${TAGFIX_SHARED:-../shared}/ram/reference"
  export TAGFIX_LINK_CUDA=1
  cargo build --release --features train --bin tagfix --example step_time --example flop_model
  tests=$(cargo test --release --features train --test ram_plus_parity --no-run --message-format=json 2>/dev/null \
          | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
  rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/ref"
  objcopy --strip-debug target/release/tagfix "$dest/bin/tagfix"
  objcopy --strip-debug target/release/examples/step_time "$dest/bin/step_time"
  objcopy --strip-debug target/release/examples/flop_model "$dest/bin/flop_model"
  objcopy --strip-debug "$(echo "$tests" | grep /deps/ | head -1)" "$dest/bin/ram_plus_parity"
  cp "$ref/functional_reference.py" "$dest/ref/"
  # Parts `speed`, `upload` and `dist` train on synthetic sets in the RAM vocabulary (the step's 4585 classes).
  cp "${TAGFIX_SHARED:-../shared}/ram/data/ram_tag_list.txt" "$dest/bin/"
  scripts/gpu-check.sh bundle
  scripts/gpu-check.sh ort-gpu
  for d in tiny tiny_224_w7; do
    mkdir -p "$dest/ref/$d"
    cp "$ref/$d"/{config.json,weights.safetensors,inputs.safetensors,outputs.safetensors,grads.safetensors,generate_tag.json} "$dest/ref/$d/"
  done
  # Part `upload` (issue 14): the batch-upload benchmark, CUDA-linked; part `ahead` the same.
  cargo build --release --features train --example bench_upload --example bench_checkpoint_save \
    --example bench_decode_ahead
  objcopy --strip-debug target/release/examples/bench_upload "$dest/bin/bench_upload"
  objcopy --strip-debug target/release/examples/bench_decode_ahead "$dest/bin/bench_decode_ahead"
  # Part `ckpt` (issue 14): the checkpoint-save benchmark, CUDA-linked.
  objcopy --strip-debug target/release/examples/bench_checkpoint_save "$dest/bin/bench_checkpoint_save"
  # Relink the ordinary binaries without the CUDA libraries.
  unset TAGFIX_LINK_CUDA
  cargo build --release --features train --bin tagfix --example step_time --quiet
  # Part `loader` (issue 14): CPU only.
  cargo build --release --features train --example bench_loader --example bench_loader_pool \
    --example bench_crop_decode --quiet
  for b in bench_loader bench_loader_pool bench_crop_decode; do objcopy --strip-debug "target/release/examples/$b" "$dest/bin/$b"; done
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
ort-gpu)
  # Part 8's onnxruntime-gpu (from PyPI, scripts/setup-gpu.sh ort-files), xz-compressed and cut into
  # pieces that each fit one call's carry beside nothing else, with the archive's sha256.
  o=$(mktemp -d)
  scripts/setup-gpu.sh ort-files "$o/ort-gpu"
  rm -rf "$dest/ort-gpu" && mkdir -p "$dest/ort-gpu"
  tar -C "$o" -cf - ort-gpu | xz -T0 -1 > "$o/ort-gpu.tar.xz"  # -1: CUDA code barely compresses further
  (cd "$o" && sha256sum ort-gpu.tar.xz) > "$dest/ort-gpu/SHA256SUMS"
  split -b 60M -d "$o/ort-gpu.tar.xz" "$dest/ort-gpu/ort-gpu.tar.xz.part"
  rm -rf "$o"
  ls -l "$dest/ort-gpu"
  ;;
run)
  shift
  parts=" ${*:-parity step train cpu loop dist upload} "
  want() { [[ "$parts" == *" $1 "* ]]; }
  : "${OUT:=$dest/out}"
  mkdir -p "$OUT"
  export LD_LIBRARY_PATH="${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt" || true
  # synth_ram DIR COUNT SIZE: a synthetic set tagged in the RAM vocabulary, so `tagfix train` builds the
  # 4585 classes x 51 descriptions that step_time and real training have (the generator's own eight tags
  # would give the head 8 queries instead of 4585: a cheaper step, a larger `auto` micro-batch). Part 3
  # keeps the eight tags its earlier figure was measured with.
  ram_vocab="${SYNTH_VOCAB:-$dest/bin/ram_tag_list.txt}"  # SYNTH_VOCAB: another tag list
  synth_ram() {
    local vocab=(--vocab "$ram_vocab")
    if [ ! -f "$ram_vocab" ]; then
      echo "$ram_vocab is missing (run prepare again): this set has 8 tags, not 4585;" \
        "its loop is not comparable with the step" | tee -a "$OUT/vocab_missing.txt" >&2
      vocab=()
    fi
    "$dest/bin/tagfix" synth-images --out "$1" --count "$2" --size "$3" --descriptions 51 "${vocab[@]}" > /dev/null
  }
  if want parity; then
  echo "== 1. parity on CUDA"
  for d in tiny tiny_224_w7; do
    TAGFIX_TEST_DEVICE="${PARITY_DEVICE:-cuda}" TAGFIX_PARITY_DIR="$(cd "$dest/ref/$d" && pwd)" \
      "$dest/bin/ram_plus_parity" --nocapture 2>&1 \
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
  echo "== 6. data-parallel scaling: plain loop vs two ranks over NCCL, f32 and bf16 gradients (needs 2 GPUs)"
  t="$dest/bin/tagfix"
  "$t" -q doctor --require nccl > "$OUT/dist_doctor.txt" || { cat "$OUT/dist_doctor.txt"; echo "dist: no NCCL in this build"; }
  s=$(mktemp -d)
  synth_ram "$s" 1040 224
  steps="${DIST_STEPS:-20}"
  # dist_run NAME BATCH [ENV...] -- [FLAGS...]: one training run; its median images/s over the second half,
  # and the most memory nvidia-smi saw in use on a GPU during the run (sampled every 200 ms; the caching
  # allocator's reserve: what decides whether a batch fits).
  dist_run() {
    local name="$1" batch="$2"; shift 2
    local envs=(); while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
    nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$name.mem" 2>/dev/null &
    local sampler=$!
    env "${envs[@]}" "$t" train --model "${TRAIN_MODEL:-swin_l_224}" --data "$s/train.json" --images "$s/images" \
      --manifest "$s/manifest.json" --label-embed "$s/label_embed.safetensors" --teacher "$s/teacher.safetensors" \
      --allow-random-encoder --device cuda --precision bf16 --batch-size "$batch" --micro-batch-size 26 \
      --max-steps "$steps" --workers 12 --checkpoint-every off --out "$OUT/$name" "$@" \
      > "$OUT/$name.txt" 2> "$OUT/$name.log" || { kill "$sampler" 2>/dev/null || true; tail -20 "$OUT/$name.log"; return 0; }
    kill "$sampler" 2>/dev/null || true
    python3 - "$OUT/$name/metrics.jsonl" "$name" "$OUT/$name.mem" "$OUT/dist_memory.txt" <<'PY' || true
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
late = recs[len(recs) // 2:]
print(sys.argv[2], sorted(r["images_per_s"] for r in late)[len(late) // 2])
used = [int(l.split(",")[1]) for l in open(sys.argv[3]) if l.count(",") == 1 and l.split(",")[1].strip().isdigit()]
if used:
    with open(sys.argv[4], "a") as f:
        print(f"{sys.argv[2]}: at most {max(used)} MiB in use on a GPU", file=f)
PY
    rm -rf "$OUT/$name/checkpoints"
  }
  {
    dist_run dist_plain 52 --
    if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -lt 2 ]; then
      echo "dist: one GPU here; the scaling runs need two (a world of one rank joins no group)" >&2
    else
      dist_run dist_nccl2 104 -- --nproc-per-node 2 --dist-backend nccl
      # The same exchange started only after the backward pass (--grad-sync after-backward): what the
      # overlap (the default, DDP's way) saves.
      dist_run dist_nccl2_after 104 -- --nproc-per-node 2 --dist-backend nccl --grad-sync after-backward
      # The gradients sent as bf16 (--grad-comm bf16): NCCL's bf16 sum, half the bytes.
      dist_run dist_nccl2_bf16 104 -- --nproc-per-node 2 --dist-backend nccl --grad-comm bf16
      # The optimizer state sharded over the two ranks (--shard-optimizer, ZeRO stage 1): the memory
      # freed (dist_memory.txt) and what the broadcast of the updated shares costs.
      dist_run dist_nccl2_sharded 104 -- --nproc-per-node 2 --dist-backend nccl --shard-optimizer
    fi
  } | tee "$OUT/dist_ips.txt"
  python3 - "$OUT/dist_ips.txt" <<'PY' || true
import sys
ips = dict((k, float(v)) for k, v in (l.split() for l in open(sys.argv[1]) if l.strip()))
if "dist_plain" in ips:
    print(f"dist: plain {ips['dist_plain']:.1f} images/s on one GPU")
if "dist_nccl2" in ips and "dist_plain" in ips:
    print(f"dist: 2 ranks {ips['dist_nccl2']:.1f} images/s: scaling efficiency "
          f"{ips['dist_nccl2'] / (2 * ips['dist_plain']):.3f} (target >= 0.9)")
if "dist_nccl2_after" in ips and "dist_plain" in ips:
    print(f"dist: 2 ranks, exchange after the backward pass, {ips['dist_nccl2_after']:.1f} images/s: scaling "
          f"efficiency {ips['dist_nccl2_after'] / (2 * ips['dist_plain']):.3f}")
if "dist_nccl2_bf16" in ips and "dist_plain" in ips:
    print(f"dist: 2 ranks, gradients sent as bf16, {ips['dist_nccl2_bf16']:.1f} images/s: scaling efficiency "
          f"{ips['dist_nccl2_bf16'] / (2 * ips['dist_plain']):.3f}")
if "dist_nccl2_sharded" in ips and "dist_plain" in ips:
    print(f"dist: 2 ranks, optimizer state sharded, {ips['dist_nccl2_sharded']:.1f} images/s: scaling "
          f"efficiency {ips['dist_nccl2_sharded'] / (2 * ips['dist_plain']):.3f}")
PY
  rm -rf "$s"
  fi
  # ---- part `upload` (issue 14: uint8 pinned non-blocking upload, --micro-batch-size auto) ----
  if want upload; then
  echo "== upload: f32 pageable vs uint8 pinned + device normalisation; --micro-batch-size auto"
  udev="${UPLOAD_DEVICE:-cuda}" ubatch="${UPLOAD_BATCH:-52}" usize="${UPLOAD_SIZE:-224}"
  for m in $((ubatch / 2)) "$ubatch"; do
    "$dest/bin/bench_upload" "$m" "$usize" 10 "$udev" 2>&1 | tee "$OUT/upload_$m.txt" || true
  done
  t="$dest/bin/tagfix"
  s=$(mktemp -d)
  synth_ram "$s" $((ubatch * 5)) "$usize"
  "$t" train --model "${TRAIN_MODEL:-swin_l_224}" --data "$s/train.json" --images "$s/images" \
    --manifest "$s/manifest.json" --label-embed "$s/label_embed.safetensors" --teacher "$s/teacher.safetensors" \
    --allow-random-encoder --device "$udev" --precision bf16 --batch-size "$ubatch" --micro-batch-size auto \
    --max-steps "${AUTO_STEPS:-6}" --workers "${UPLOAD_WORKERS:-12}" --checkpoint-every off --out "$OUT/auto" \
    > "$OUT/auto.txt" 2> "$OUT/auto.log" || tail -20 "$OUT/auto.log"
  grep -h "micro_batch_size auto" "$OUT/auto.log" || true
  grep -h "^micro_batch_size" "$OUT/auto/config.toml" || true
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv >> "$OUT/auto.txt" 2> /dev/null || true
  rm -rf "$OUT/auto/checkpoints" "$s"
  fi
  if want casts; then
  echo "== 10. (issue 14) bf16 weight casts once per step vs once per micro-batch"
  STEP_TIME_BIN="$dest/bin/step_time" DEVICE="${CASTS_DEVICE:-cuda}" CONFIG="${CASTS_CONFIG:-swin_l_224}" \
    BATCH="${CASTS_BATCH:-26}" ACCUMULATE=2 STEPS="${CASTS_STEPS:-5}" WARMUP=2 ROUNDS=2 THREADS=8 \
    bash scripts/bench-casts.sh 2>&1 | tee "$OUT/casts.txt" || true
  fi
  if want ckpt; then
  echo "== 11. (issue 14) checkpoint: inline vs pinned copy + background writer"
  c=$(mktemp -d)
  "$dest/bin/bench_checkpoint_save" "$c/run" "${CKPT_PRESET:-swin_l_224}" "${CKPT_ROUNDS:-2}" 8 \
    "${CKPT_DEVICE:-cuda}" 2>&1 | tee "$OUT/ckpt.txt" || true
  rm -rf "$c"
  fi
  if want loader; then
  echo "== 12. (issue 14) the loader on this machine's cores"
  BENCH_LOADER_POOL_BIN="$dest/bin/bench_loader_pool" scripts/bench-loader-pool.sh "${LOADER_THREADS:-0}" \
    "${LOADER_MICRO:-26}" "${LOADER_STEPS:-16}" "${LOADER_ROUNDS:-3}" 2>&1 | tee "$OUT/loader_pool.txt" || true
  BENCH_LOADER_BIN="$dest/bin/bench_loader" ROUNDS="${LOADER_ROUNDS:-3}" scripts/bench-loader.sh 2>&1 \
    | tee "$OUT/loader_core.txt" || true
  BENCH_CROP_DECODE_BIN="$dest/bin/bench_crop_decode" ROUNDS="${LOADER_ROUNDS:-3}" \
    scripts/bench-crop-decode.sh 2>&1 | tee "$OUT/loader_crop.txt" || true
  fi
  if want ahead; then
  echo "== 14. tag scoring: the next batch decoded while this one is scored"
  BENCH_BIN="$dest/bin/bench_decode_ahead" STEP_TIME_BIN="$dest/bin/step_time" TAGFIX_SHARED=/nonexistent \
    DEVICE="${AHEAD_DEVICE:-cuda}" THREADS=0 CONFIG="${AHEAD_CONFIG:-swin_l_384}" CLASSES=4585 DES=51 \
    BATCH="${AHEAD_BATCH:-32}" IMAGES="${AHEAD_IMAGES:-256}" ROUNDS="${AHEAD_ROUNDS:-3}" \
    bash scripts/bench-decode-ahead.sh 2>&1 | tee "$OUT/ahead.txt" || true
  fi
  if want tagcli; then
  echo "== 15. tagfix tag through the CLI on the device: two shards under torchrun's variables vs the CPU"
  # The tiny reference model over 24 generated images: the CPU run whole, then the device run as
  # ranks 0 and 1 of torchrun (LOCAL_RANK 0: the machine's one GPU) with --shard auto; the shards'
  # images must come back in the CPU run's order and every score agree.
  t="$dest/bin/tagfix"
  tc=$(mktemp -d)
  tiny="$dest/ref/tiny"
  python3 - "$tiny/config.json" "$tc" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
open(sys.argv[2] + "/tags.txt", "w").write("\n".join(c["tag_list"]) + "\n")
open(sys.argv[2] + "/th.txt", "w").write("\n".join(str(x) for x in c["class_threshold"]) + "\n")
PY
  "$t" synth-images --out "$tc/set" --count 24 --size 64 > /dev/null
  tag_args=(tag --checkpoint "$tiny/weights.safetensors" --model "$tiny/config.json" --vocab "$tc/tags.txt"
    --thresholds "$tc/th.txt" --images "$tc/set/images" --format json --top-k 10 --batch-size 8)
  "$t" "${tag_args[@]}" --device cpu --out "$tc/cpu.jsonl" > /dev/null 2> "$OUT/tagcli_cpu.log" \
    || echo "tagcli: the CPU run failed (exit $?)" | tee -a "$OUT/tagcli.txt"
  for rank in 0 1; do
    RANK=$rank WORLD_SIZE=2 LOCAL_RANK=0 RUST_LOG=info "$t" "${tag_args[@]}" --device "${TAGCLI_DEVICE:-cuda}" \
      --shard auto --out "$tc/device" >> "$OUT/tagcli.log" 2>&1 \
      || echo "tagcli: shard $rank failed (exit $?)" | tee -a "$OUT/tagcli.txt"
  done
  python3 - "$tc/cpu.jsonl" "$tc/device" <<'PY' | tee -a "$OUT/tagcli.txt"
import glob, json, sys
def rows(files):
    return [json.loads(line) for f in files for line in open(f) if line.strip()]
cpu = rows([sys.argv[1]])
dev = rows(sorted(glob.glob(sys.argv[2] + "/tags-*-of-00002.jsonl")))
order = [r["image"] for r in cpu] == [r["image"] for r in dev]
worst, n = 0.0, 0
for a, b in zip(cpu, dev):
    theirs = {t["slot"]: t["score"] for t in b["tags"]}
    for t in a["tags"]:
        worst = max(worst, abs(t["score"] - theirs.get(t["slot"], float("inf"))))
        n += 1
print(f"images: cpu {len(cpu)}, device shards {len(dev)}, same order: {order}")
print(f"max |score device - cpu|: {worst:.3g} over {n} scores")
print("agree" if order and cpu and n == 10 * len(cpu) and worst < 1e-4 else "DIFFER")
PY
  rm -rf "$tc"
  fi
  if want speed; then
  echo "== 8. (issue 14) throughput: the loop against the step, peak memory, MFU"
  t="$dest/bin/tagfix"
  dev="${SPEED_DEVICE:-cuda}"
  batch="${SPEED_BATCH:-52}"
  half=$((batch / 2))
  steps="${SPEED_STEPS:-20}"
  help="$("$t" train --help)"
  has_tf32=$(grep -q -- '--tf32' <<< "$help" && echo 1 || echo 0)
  has_auto=$(grep -A6 -- '--micro-batch-size' <<< "$help" | grep -q auto && echo 1 || echo 0)
  : > "$OUT/speed.tsv"
  synth_root=$(mktemp -d)
  # peak_of NAME CMD...: runs CMD; on a GPU, nvidia-smi samples the used memory every 50 ms meanwhile
  # (the whole device: CUDA context, caching allocator and all) and NAME's peak MiB goes to NAME.mib.
  peak_of() {
    local name="$1" smi=""
    shift
    if [ "$dev" = cuda ]; then
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$OUT/$name.mem" &
      smi=$!
    fi
    "$@" || echo "$name: failed (exit $?)" >&2
    if [ -n "$smi" ]; then
      kill "$smi"; wait "$smi" 2>/dev/null || true
      sort -n "$OUT/$name.mem" | tail -1 > "$OUT/$name.mib"
      rm -f "$OUT/$name.mem"
    fi
  }
  # record NAME MODEL MICRO PRECISION KIND IMAGES_PER_S: one row of $OUT/speed.tsv.
  record() {
    local mib="-"
    [ -f "$OUT/$1.mib" ] && mib=$(cat "$OUT/$1.mib")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" "$mib" >> "$OUT/speed.tsv"
  }
  synth_for() {  # synth_for SIZE: a synthetic set in the RAM vocabulary at that image size, made once.
    [ -d "$synth_root/$1" ] || synth_ram "$synth_root/$1" "$((batch * 10))" "$1"
  }
  size_of() { case "$1" in *_384) echo 384 ;; tiny) echo 64 ;; *) echo 224 ;; esac; }
  # loop NAME MODEL SIZE MICRO PRECISION [FLAGS...]: `tagfix train`; median images/s over the second half.
  loop() {
    local name="$1" model="$2" size="$3" micro="$4" precision="$5"
    shift 5
    synth_for "$size"
    local s="$synth_root/$size"
    peak_of "$name" "$t" train --model "$model" --data "$s/train.json" --images "$s/images" \
      --manifest "$s/manifest.json" --label-embed "$s/label_embed.safetensors" --teacher "$s/teacher.safetensors" \
      --allow-random-encoder --device "$dev" --precision "$precision" --batch-size "$batch" \
      --micro-batch-size "$micro" --max-steps "$steps" --workers "${SPEED_WORKERS:-12}" --checkpoint-every off \
      --out "$OUT/$name" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log"
    [ -f "$OUT/$name/metrics.jsonl" ] || { tail -5 "$OUT/$name.log"; return 0; }
    record "$name" "$model" "$micro" "$precision$([ "$*" = --tf32 ] && echo +tf32)" loop "$(python3 -c '
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
late = recs[len(recs) // 2:]
print(sorted(r["images_per_s"] for r in late)[len(late) // 2])' "$OUT/$name/metrics.jsonl")"
    grep -i "micro-batch" "$OUT/$name.log" | head -2 || true
    rm -rf "$OUT/$name/checkpoints"
  }
  # step NAME MODEL MICRO PRECISION: forward + backward alone (examples/step_time); images/s = micro / median.
  step() {
    local name="$1" model="$2" micro="$3" precision="$4" config=(--config "$2")
    [ "$model" = tiny ] && config=(--config tiny --classes 4585 --des 51)
    peak_of "$name" bash -c '"$@" > "$0"' "$OUT/$name.json" "$dest/bin/step_time" "${config[@]}" --batch "$micro" \
      --steps "${SPEED_STEP_STEPS:-10}" --warmup 3 --threads "${THREADS:-8}" --device "$dev" --precision "$precision"
    [ -s "$OUT/$name.json" ] || return 0
    record "$name" "$model" "$micro" "$precision" step \
      "$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["batch"] / r["median_s"])' "$OUT/$name.json")"
  }
  models="${SPEED_MODELS:-swin_l_224 swin_b_224 swin_l_384}"
  for model in $models; do
    size=$(size_of "$model")
    loop "loop_${model}_bf16_${half}" "$model" "$size" "$half" bf16
    step "step_${model}_bf16_${half}" "$model" "$half" bf16
    if [ "$model" = "${models%% *}" ]; then  # the first model also as one micro-batch of the whole batch
      loop "loop_${model}_bf16_${batch}" "$model" "$size" "$batch" bf16
      step "step_${model}_bf16_${batch}" "$model" "$batch" bf16
      if [ "$has_auto" = 1 ]; then
        loop "loop_${model}_bf16_auto" "$model" "$size" auto bf16
      else
        echo "speed: tagfix train has no --micro-batch-size auto yet: skipped"
      fi
    fi
  done
  first="${models%% *}"; size=$(size_of "$first")
  STEPS_F32="${SPEED_F32_STEPS:-10}"
  steps=$STEPS_F32 loop "loop_${first}_f32_${half}" "$first" "$size" "$half" f32
  if [ "$has_tf32" = 1 ]; then
    steps=$STEPS_F32 loop "loop_${first}_tf32_${half}" "$first" "$size" "$half" f32 --tf32
  else
    echo "speed: tagfix train has no --tf32 yet: skipped"
  fi
  # The table: images/s, the loop as a share of its step, peak memory and MFU against the precision's peak.
  {
    echo "| run | model | micro-batch | precision | what | images/s | loop / step | peak MiB | MFU |"
    echo "|---|---|---|---|---|---|---|---|---|"
    while IFS=$'\t' read -r name model micro precision kind ips mib; do
      ratio="-"
      stepname="step_${model}_bf16_${micro}"
      if [ "$kind" = loop ] && [ "$precision" = bf16 ]; then
        ratio=$(awk -F'\t' -v n="$stepname" -v i="$ips" '$1 == n { printf "%.1f %%", 100 * i / $6 }' "$OUT/speed.tsv")
      fi
      case "$precision" in bf16) peak="${PEAK_BF16:-989}" ;; f32+tf32) peak="${PEAK_TF32:-495}" ;; *) peak="${PEAK_F32:-67}" ;; esac
      mb="$micro"; [ "$micro" = auto ] && mb="$half"
      mfu=$("$dest/bin/flop_model" "$model" "$mb" "$ips" "$peak" | sed -n 's/.*MFU \([0-9.]*\) %.*/\1 %/p')
      printf '| %s | %s | %s | %s | %s | %.1f | %s | %s | %s |\n' "$name" "$model" "$micro" "$precision" "$kind" \
        "$ips" "${ratio:--}" "$mib" "${mfu:--}"
    done < "$OUT/speed.tsv"
  } | tee "$OUT/speed.md"
  rm -rf "$synth_root"
  fi
  if want embed; then
  echo "== 9. (issue 14) tagfix embed on CUDA vs the CPU: MiniLM and the CLIP fixture over the RAM vocabulary"
  t="$dest/bin/tagfix"
  b=$(mktemp -d)
  tar -C "$b" -xJf "$dest/bundle.tar.xz"
  export TAGFIX_MODELS="$b/models" TAGFIX_RAM_DATA="$b"
  edev="${EMBED_DEVICE:-cuda}"
  gpu_lib="$b/libonnxruntime.so"
  if [ "$edev" != cpu ]; then
    parts_dir="${ORT_GPU_PARTS:-$dest/ort-gpu}"
    if ! ls "$parts_dir"/ort-gpu.tar.xz.part* > /dev/null 2>&1; then
      echo "embed: onnxruntime-gpu is not on this machine: no $parts_dir/ort-gpu.tar.xz.part* (the pieces"
      echo "embed: \`prepare\` wrote; the GPU machine has no network and only torch's CUDA libraries)."
      echo "embed: stopped; see docs/PERFORMANCE.md for moving the pieces"
      rm -rf "$b"
      exit 1
    fi
    cat "$parts_dir"/ort-gpu.tar.xz.part* > "$b/ort-gpu.tar.xz"
    sums="$(cd "$parts_dir" && pwd)/SHA256SUMS"
    (cd "$b" && sha256sum --quiet -c "$sums") \
      || { echo "embed: the onnxruntime-gpu pieces do not add up to the archive prepare wrote"; exit 1; }
    tar -C "$b" -xJf "$b/ort-gpu.tar.xz" && rm "$b/ort-gpu.tar.xz"
    site="${TORCH_SITE:-/opt/torch/.venv/lib/python3.12/site-packages}"
    scripts/setup-gpu.sh ort-link "$b/ort-gpu" "$site"/nvidia/*/lib
    gpu_lib="$b/ort-gpu/libonnxruntime.so"
    ORT_DYLIB_PATH="$gpu_lib" "$t" -q doctor --require onnxruntime-cuda > "$OUT/embed_doctor.txt" \
      || { grep -A1 onnxruntime "$OUT/embed_doctor.txt"; echo "embed: the CUDA provider cannot run"; exit 1; }
    grep -A1 onnxruntime-cuda "$OUT/embed_doctor.txt"
  fi
  # The CPU rows come from the CPU build of ONNX Runtime (the bundle's), the device's from onnxruntime-gpu.
  for model in minilm clip-tiny; do
    for side in ref dev; do
      lib="$b/libonnxruntime.so" device=cpu
      [ "$side" = dev ] && lib="$gpu_lib" device="$edev"
      start=$(date +%s.%N)
      ORT_DYLIB_PATH="$lib" "$t" embed --model "$model" --vocab "$b/ram_tag_list.txt" --all --device "$device" \
        --batch-size "${EMBED_BATCH:-256}" --out "$OUT/embed_${model}_$side.safetensors" 2> "$OUT/embed_${model}_$side.log" \
        || { tail -5 "$OUT/embed_${model}_$side.log"; continue; }
      echo "embed: $model on $device ($(basename "$(dirname "$lib")")/libonnxruntime.so): $(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $start }") s" \
        "for the whole command (load + 4585 texts)"
    done
    python3 - "$OUT/embed_${model}_ref.safetensors" "$OUT/embed_${model}_dev.safetensors" "$model" <<'PY' || true
import json, math, struct, sys
def rows(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header["embeddings"]
    assert meta["dtype"] == "F32", meta
    r, d = meta["shape"]
    begin, end = meta["data_offsets"]
    v = struct.unpack(f"<{r * d}f", data[begin:end])
    return [v[i * d:(i + 1) * d] for i in range(r)]
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert len(a) == len(b), (len(a), len(b))
def cos(x, y):
    return sum(p * q for p, q in zip(x, y)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
worst = min((cos(x, y), i) for i, (x, y) in enumerate(zip(a, b)))
print(f"embed: {sys.argv[3]}: {len(a)} rows, lowest cosine CPU vs device {worst[0]:.8f} (row {worst[1]}): "
      + ("PASS (>= 1 - 1e-5)" if worst[0] >= 1 - 1e-5 else "FAIL (< 1 - 1e-5)"))
PY
  done | tee "$OUT/embed.txt"
  rm -rf "$b"
  fi
  if want oom; then
  echo "== 13. running out of device memory mid-run: an error that saves the steps, not a panic"
  t="$dest/bin/tagfix"
  s=$(mktemp -d)
  obatch="${OOM_BATCH:-520}"
  synth_ram "$s" "$obatch" "${OOM_SIZE:-224}"
  ocommon=(--data "$s/train.json" --images "$s/images" --manifest "$s/manifest.json"
    --label-embed "$s/label_embed.safetensors" --allow-random-encoder --workers "${OOM_WORKERS:-12}")
  # Step 1 in micro-batches of 26 (a checkpoint at its end), then a resume whose micro-batch is the whole
  # batch, far more than the card holds: step 2 must end with exit 2 naming step 1's checkpoint.
  "$t" train --model "${OOM_MODEL:-swin_l_224}" "${ocommon[@]}" --device "${OOM_DEVICE:-cuda}" --precision bf16 \
    --batch-size "$obatch" --micro-batch-size "${OOM_MICRO:-26}" --max-steps 1 --out "$OUT/oom" \
    > /dev/null 2> "$OUT/oom_first.log" || tail -5 "$OUT/oom_first.log"
  set +e
  "$t" train --resume "$OUT/oom" --micro-batch-size "$obatch" --max-steps 2 > /dev/null 2> "$OUT/oom.log"
  echo "exit status $? (expected 2)" | tee "$OUT/oom.txt"
  set -e
  grep -h "^error\|panicked" "$OUT/oom.log" | tee -a "$OUT/oom.txt" || true
  # `auto` on the same card: the prediction, and whether its trial pass had to step down.
  "$t" train --model "${OOM_MODEL:-swin_l_224}" "${ocommon[@]}" --device "${OOM_DEVICE:-cuda}" --precision bf16 \
    --batch-size "$obatch" --micro-batch-size auto --max-steps 1 --checkpoint-every off --out "$OUT/oom_auto" \
    > /dev/null 2> "$OUT/oom_auto.log" || tail -5 "$OUT/oom_auto.log"
  grep -h "micro_batch_size auto" "$OUT/oom_auto.log" | tee -a "$OUT/oom.txt" || true
  rm -rf "$s" "$OUT/oom/checkpoints" "$OUT/oom_auto/checkpoints"
  fi
  ;;
*)
  echo "usage: $0 prepare|bundle|ort-gpu|run [PART...]" >&2
  exit 2
  ;;
esac
