#!/usr/bin/env bash
# The gradient exchange of a two-rank `tagfix train` (Gloo on the CPU): `--grad-sync overlap` (each
# bucket's all-reduce started during the backward pass, DDP's way) against `--grad-sync after-backward`
# (every bucket after it), in alternating rounds of the same run on the same machine. With BASE=REV,
# each round also runs the overlap of tagfix built at REV (scripts/base-build.sh), e.g. BASE=7525064:
# the overlap before the gradients became views of the buckets.
#
#   scripts/bench-grad-overlap.sh                  # tiny model, RAM vocabulary x 51 descriptions
#   ROUNDS=5 STEPS=12 BUCKET_MB=25 BASE=7525064 scripts/bench-grad-overlap.sh
#
# Per run: the median over steps 3.. of the time each rank's step waited for the exchange after its
# backward pass (the debug line `gradient exchange: ... ms`), of images/s (metrics.jsonl), overlapped,
# how many buckets started while the backward pass was still computing, and the peak RSS of the
# larger rank (/usr/bin/time's maximum over the launcher's children). The RAM vocabulary makes the
# label embedding (4585 x 51 rows) a trained parameter of 120M values: 0.48 GB of gradients a step.
# Results: $OUT_DIR/results.jsonl and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-10}
THREADS=${THREADS:-1}
BUCKET_MB=${BUCKET_MB:-25}
OUT_DIR=${OUT_DIR:-out/bench-grad-overlap}
BIN=${TAGFIX_BIN:-target/release/tagfix}
if [ -z "${TAGFIX_BIN:-}" ]; then
  scripts/setup.sh >/dev/null
  cargo build --release --all-features --quiet
fi
BASE_BIN=
if [ -n "${BASE:-}" ]; then
  # shellcheck source=scripts/base-build.sh
  . scripts/base-build.sh
  BASE_BIN=$(base_build "$BASE")
fi
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
echo "command: ROUNDS=$ROUNDS STEPS=$STEPS BUCKET_MB=$BUCKET_MB BASE=${BASE:-} scripts/bench-grad-overlap.sh, $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes'), $(date -u +%FT%TZ), $(nproc) cores"
set_dir="$OUT_DIR/set"
"$BIN" -q synth-images --out "$set_dir" --count 64 --size 64 --descriptions 51 --vocab ram > /dev/null
results="$OUT_DIR/results.jsonl"
: > "$results"
run() { # run LABEL BIN MODE ROUND
  local out="$OUT_DIR/run-$1-$4"
  RUST_LOG=tagfix=debug /usr/bin/time -f '%M' -o "$out.rss" "$2" train --model tiny --allow-random-encoder \
    --data "$set_dir/train.json" --images "$set_dir/images" --manifest "$set_dir/manifest.json" \
    --label-embed "$set_dir/label_embed.safetensors" --batch-size 4 --micro-batch-size 2 \
    --max-steps "$STEPS" --workers 1 --threads "$THREADS" --checkpoint-every off --seed 3 \
    --nproc-per-node 2 --bucket-cap-mb "$BUCKET_MB" --grad-sync "$3" --out "$out" > "$out.log" 2>&1
  python3 - "$out" "$1" "$4" >> "$results" <<'PY'
import json, re, statistics, sys
out, mode, rnd = sys.argv[1:]
waits, overlapped = [], []
per_rank = {}
for line in open(out + ".log"):
    m = re.match(r"\[rank (\d)\].*gradient exchange: (?:(\d+) of (\d+) buckets overlapped the backward pass, )?(?:after the backward pass, )?([0-9.]+) ms", line)
    if m:
        per_rank.setdefault(m[1], []).append((m[2], m[3], float(m[4])))
for rank, steps in per_rank.items():
    for o, n, ms in steps[2:]:
        waits.append(ms)
        if o is not None:
            overlapped.append(f"{o}/{n}")
recs = [json.loads(l) for l in open(out + "/metrics.jsonl")][2:]
print(json.dumps({
    "mode": mode, "round": int(rnd),
    "exchange_wait_ms": statistics.median(waits),
    "images_per_s": statistics.median(r["images_per_s"] for r in recs),
    "overlapped": sorted(set(overlapped)),
    "peak_rss_mib": int(open(out + ".rss").read().split()[-1]) / 1024,
}))
PY
}
modes=(overlap after-backward)
for r in $(seq 1 "$ROUNDS"); do
  [ -n "$BASE_BIN" ] && run "overlap@$BASE" "$BASE_BIN" overlap "$r"
  run overlap "$BIN" overlap "$r"
  run after-backward "$BIN" after-backward "$r"
done
[ -n "$BASE_BIN" ] && modes+=("overlap@$BASE")
python3 - "$results" "${modes[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
modes = sys.argv[2:]
print("| mode | round | exchange wait after backward, ms (median) | images/s (median) | buckets overlapped | peak RSS of a rank, MiB |")
print("| --- | ---: | ---: | ---: | --- | ---: |")
for r in rows:
    print(f"| {r['mode']} | {r['round']} | {r['exchange_wait_ms']:.1f} | {r['images_per_s']:.2f} | {', '.join(r['overlapped']) or '-'} | {r['peak_rss_mib']:.0f} |")
med = lambda m, k: statistics.median(r[k] for r in rows if r["mode"] == m)
print("\nmedian of rounds:")
for m in modes:
    print(f"- {m}: exchange wait {med(m, 'exchange_wait_ms'):.1f} ms ({med(m, 'exchange_wait_ms') / med('after-backward', 'exchange_wait_ms'):.2f} of after-backward), "
          f"images/s {med(m, 'images_per_s'):.2f}, peak RSS {med(m, 'peak_rss_mib'):.0f} MiB")
PY
