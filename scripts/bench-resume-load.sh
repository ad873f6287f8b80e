#!/usr/bin/env bash
# Host memory of loading a checkpoint for `--resume`: the optimizer's moments streamed from the file one
# tensor at a time (now) against tch's reader, which held the whole file and every tensor at once
# (before), each in its own process (examples/bench_resume_load.rs). Builds a one-step run of PRESET on
# synthetic 224 px images in the RAM vocabulary (51 descriptions per tag) under DIR (default: a temporary
# folder, removed afterwards), then loads its checkpoint ROUNDS times each way, alternating.
#
#   scripts/bench-resume-load.sh                    # swin_b_224, 2 rounds (≈ 2.65 GB checkpoint)
#   PRESET=swin_l_224 ROUNDS=3 scripts/bench-resume-load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PRESET=${PRESET:-swin_b_224}
ROUNDS=${ROUNDS:-2}
cargo build --release --all-features --quiet --bin tagfix --example bench_resume_load
bin=${CARGO_TARGET_DIR:-target}/release
tags="${TAGFIX_SHARED:-../shared}/ram/data/ram_tag_list.txt"
if [ -z "${DIR:-}" ]; then
  DIR=$(mktemp -d)
  trap 'rm -rf "$DIR"' EXIT
fi
echo "command: scripts/bench-resume-load.sh (PRESET=$PRESET ROUNDS=$ROUNDS), $(date -u +%FT%TZ), $(nproc) cores"
"$bin/tagfix" synth-images --out "$DIR/set" --count 8 --size 224 --descriptions 51 --vocab "$tags" > /dev/null
"$bin/tagfix" train --model "$PRESET" --data "$DIR/set/train.json" --images "$DIR/set/images" \
  --manifest "$DIR/set/manifest.json" --label-embed "$DIR/set/label_embed.safetensors" --allow-random-encoder \
  --batch-size 2 --max-steps 1 --workers 1 --out "$DIR/run" -q > /dev/null
checkpoint=$(ls -d "$DIR"/run/checkpoints/step-*)
du -b "$checkpoint"/*.safetensors
for _ in $(seq "$ROUNDS"); do
  for mode in whole streamed; do
    "$bin/examples/bench_resume_load" "$checkpoint" "$PRESET" "$mode"
  done
done
