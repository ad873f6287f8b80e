#!/usr/bin/env bash
# The gradient exchange of a two-rank `tagfix train` (Gloo on the CPU): `--grad-sync overlap` (each
# bucket's all-reduce started during the backward pass, DDP's way) against `--grad-sync after-backward`
# (every bucket after it), in alternating rounds of the same run on the same machine.
#
#   scripts/bench-grad-overlap.sh                  # tiny model, RAM vocabulary x 51 descriptions
#   ROUNDS=5 STEPS=12 BUCKET_MB=25 scripts/bench-grad-overlap.sh
#
# Per run: the median over steps 3.. of the time each rank's step waited for the exchange after its
# backward pass (the debug line `gradient exchange: ... ms`), of images/s (metrics.jsonl), and, overlapped,
# how many buckets started while the backward pass was still computing. The RAM vocabulary makes the
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
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
set_dir="$OUT_DIR/set"
"$BIN" -q synth-images --out "$set_dir" --count 64 --size 64 --descriptions 51 --vocab ram > /dev/null
results="$OUT_DIR/results.jsonl"
: > "$results"
run() { # run MODE ROUND
  local out="$OUT_DIR/run-$1-$2"
  RUST_LOG=tagfix=debug "$BIN" train --model tiny --allow-random-encoder --data "$set_dir/train.json" \
    --images "$set_dir/images" --manifest "$set_dir/manifest.json" \
    --label-embed "$set_dir/label_embed.safetensors" --batch-size 4 --micro-batch-size 2 \
    --max-steps "$STEPS" --workers 1 --threads "$THREADS" --checkpoint-every off --seed 3 \
    --nproc-per-node 2 --bucket-cap-mb "$BUCKET_MB" --grad-sync "$1" --out "$out" > "$out.log" 2>&1
  python3 - "$out" "$1" "$2" >> "$results" <<'PY'
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
}))
PY
}
for r in $(seq 1 "$ROUNDS"); do
  run overlap "$r"
  run after-backward "$r"
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| mode | round | exchange wait after backward, ms (median) | images/s (median) | buckets overlapped |")
print("| --- | ---: | ---: | ---: | --- |")
for r in rows:
    print(f"| {r['mode']} | {r['round']} | {r['exchange_wait_ms']:.1f} | {r['images_per_s']:.2f} | {', '.join(r['overlapped']) or '-'} |")
by = {m: [r for r in rows if r["mode"] == m] for m in ("overlap", "after-backward")}
w = {m: statistics.median(r["exchange_wait_ms"] for r in v) for m, v in by.items()}
i = {m: statistics.median(r["images_per_s"] for r in v) for m, v in by.items()}
print(f"\nmedian of rounds: exchange wait {w['overlap']:.1f} ms (overlap) vs {w['after-backward']:.1f} ms "
      f"(after-backward), ratio {w['overlap'] / w['after-backward']:.2f}; images/s {i['overlap']:.2f} vs "
      f"{i['after-backward']:.2f}, ratio {i['overlap'] / i['after-backward']:.2f}")
PY
