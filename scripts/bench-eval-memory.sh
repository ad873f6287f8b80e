#!/usr/bin/env bash
# Peak memory of `tagfix eval --scores` on a large safetensors score file (the kind `tag --scores`
# writes for a big image set) with two tagfix binaries, alternating, ROUNDS times each.
#   scripts/bench-eval-memory.sh BEFORE_BIN AFTER_BIN [IMAGES=50000] [ROUNDS=3]
# The file: IMAGES rows × 4585 slots (the RAM vocabulary) of f32 scores, written by python3's standard
# library; the benchmark: 10 of its images and 3 tags. Prints wall seconds and peak RSS (GNU time).
set -euo pipefail
before="$1" after="$2" images="${3:-50000}" rounds="${4:-3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$images" <<'PY'
import json, struct, sys
work, n, slots = sys.argv[1], int(sys.argv[2]), 4585
ids = [f"img{i:07d}.jpg" for i in range(n)]
meta = {"__metadata__": {"image_ids": json.dumps(ids)},
        "scores": {"dtype": "F32", "shape": [n, slots], "data_offsets": [0, n * slots * 4]}}
header = json.dumps(meta).encode()
header += b" " * (-len(header) % 8)
rows = [struct.pack(f"<{slots}f", *[((i * 7 + s * 13) % 1000) / 1000 for s in range(slots)]) for i in range(16)]
with open(f"{work}/scores.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
    for i in range(n):
        f.write(rows[i % 16])
with open(f"{work}/tags.txt", "w") as f:
    f.write("".join(f"tag{s}\n" for s in range(slots)))
import os
os.makedirs(f"{work}/bench", exist_ok=True)
with open(f"{work}/bench/b_taglist.txt", "w") as f:
    f.write("tag1\ntag2\ntag3\n")
with open(f"{work}/bench/b_annots.txt", "w") as f:
    f.write("".join(f"img{i * (n // 10):07d},tag{1 + i % 3}\n" for i in range(10)))
PY
ls -l "$work/scores.safetensors" | awk '{printf "score file: %.0f MB\n", $5 / 1e6}'
run() {
  /usr/bin/time -f '%e %M' "$1" eval --scores "$work/scores.safetensors" --benchmark "$work/bench" \
    --vocab "$work/tags.txt" --threshold 0.5 --format json > /dev/null 2> "$work/time" || {
    cat "$work/time" >&2
    return 1
  }
  tail -1 "$work/time"
}
printf 'round\tbinary\twall_s\tpeak_rss_mb\n'
for r in $(seq 1 "$rounds"); do
  for which in before after; do
    bin=$before
    [ "$which" = after ] && bin=$after
    read -r wall kb < <(run "$bin")
    printf '%s\t%s\t%s\t%.0f\n' "$r" "$which" "$wall" "$((kb / 1024))"
  done
done
