#!/usr/bin/env bash
# Benchmark: does the online teacher starve the training step? Trains the tiny RAM++ on the synthetic set
# with (a) the precomputed teacher file written by `tagfix teacher` (the baseline: reading rows costs
# nothing) and (b) `--teacher online` (the tiny CLIP towers through ONNX Runtime in the data loader), same
# seed, same steps, same machine, same run; reports the step throughput and how long each step waited for
# data (metrics.jsonl `images_per_s`, `data_wait_s`), and `tagfix teacher`'s own throughput.
#   scripts/bench-teacher.sh [STEPS] [IMAGES]
# The towers are the random-weight fixtures (models/clip-tiny-vision, models/clip-tiny): the figures
# measure the pipeline, not a real ViT-B/16 (which costs far more per image).
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-60}"
count="${2:-256}"
scripts/setup.sh
cargo build --release --all-features --quiet
bin=target/release/tagfix
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
$bin --quiet synth-images --out "$work/s" --count "$count" --size 64 --seed 1 >/dev/null
s=$(date +%s.%N)
$bin --quiet teacher --data "$work/s/train.json" --images "$work/s/images" \
  --image-model models/clip-tiny-vision --text-model models/clip-tiny --threads 1 --out "$work/teacher.safetensors" >/dev/null
e=$(date +%s.%N)
echo "tagfix teacher: $count images + captions in $(echo "$e - $s" | bc) s (1 ONNX Runtime thread)"

common=(--quiet train --model tiny --data "$work/s/train.json" --images "$work/s/images" --manifest "$work/s/manifest.json"
  --label-embed "$work/s/label_embed.safetensors" --allow-random-encoder --batch-size 8 --max-steps "$steps"
  --threads 1 --workers 1 --seed 3 --checkpoint-every off --lr 2e-3 --set warmup_steps=5)
$bin "${common[@]}" --teacher "$work/teacher.safetensors" --out "$work/file" >/dev/null
$bin "${common[@]}" --teacher online --teacher-image-model models/clip-tiny-vision \
  --teacher-text-model models/clip-tiny --out "$work/online" >/dev/null

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
print(f"{'teacher':<8} {'steps':>5} {'images/s (median)':>18} {'data_wait_s mean':>17} {'data_wait_s max':>16} {'dis first→last':>18}")
for name in ("file", "online"):
    rows = [json.loads(l) for l in open(f"{work}/{name}/metrics.jsonl")]
    rows = rows[5:]  # skip the warm-up steps (thread pools, first ORT runs)
    ips = statistics.median(r["images_per_s"] for r in rows)
    waits = [r["data_wait_s"] for r in rows]
    dis = [r["loss"]["dis"]["raw"] for r in rows]
    print(f"{name:<8} {len(rows):>5} {ips:>18.1f} {statistics.mean(waits):>17.4f} {max(waits):>16.4f} {dis[0]:>8.3f} → {dis[-1]:.3f}")
PY
