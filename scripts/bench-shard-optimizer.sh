#!/usr/bin/env bash
# Memory of each rank of a two-rank `tagfix train` (Gloo on the CPU) with the optimizer state whole on
# every rank against sharded (`--shard-optimizer`, ZeRO stage 1), in alternating rounds of the same
# build on the same machine.
#
#   scripts/bench-shard-optimizer.sh            # tiny model, RAM vocabulary x 51 descriptions
#   ROUNDS=5 STEPS=12 scripts/bench-shard-optimizer.sh
#
# Per run and rank: the largest resident set (VmRSS of /proc/PID/status, sampled every 50 ms) while
# steps are being taken (before metrics.jsonl holds the last step; on the CPU the final checkpoint's
# host copy comes after and would hide the difference), the peak including that checkpoint (VmHWM at
# the last sample), and the run's median images/s over steps 3.. (metrics.jsonl). The RAM vocabulary
# makes the label embedding (4585 x 51 rows) a trained parameter of 120M values: AdamW's two moments of
# it take 0.96 GB, which sharding leaves on one rank. Results: $OUT_DIR/results.jsonl and a table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-10}
OUT_DIR=${OUT_DIR:-out/bench-shard-optimizer}
BIN=${TAGFIX_BIN:-target/release/tagfix}
if [ -z "${TAGFIX_BIN:-}" ]; then
  scripts/setup.sh >/dev/null
  cargo build --release --all-features --quiet
fi
rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
echo "command: ROUNDS=$ROUNDS STEPS=$STEPS scripts/bench-shard-optimizer.sh, $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes'), $(date -u +%FT%TZ), $(nproc) cores"
set_dir="$OUT_DIR/set"
"$BIN" -q synth-images --out "$set_dir" --count 64 --size 64 --descriptions 51 --vocab ram > /dev/null
results="$OUT_DIR/results.jsonl"
: > "$results"
run() { # run MODE ROUND [FLAGS...]
  local mode=$1 round=$2
  shift 2
  local out="$OUT_DIR/run-$mode-$round"
  python3 - "$out" "$mode" "$round" "$STEPS" "$BIN" train --model tiny --allow-random-encoder \
    --data "$set_dir/train.json" --images "$set_dir/images" --manifest "$set_dir/manifest.json" \
    --label-embed "$set_dir/label_embed.safetensors" --batch-size 4 --micro-batch-size 2 \
    --max-steps "$STEPS" --workers 1 --threads 1 --checkpoint-every off --seed 3 \
    --nproc-per-node 2 --out "$out" "$@" >> "$results" <<'PY'
import json, os, statistics, subprocess, sys, time
out, mode, rnd, steps, *cmd = sys.argv[1:]
steps = int(steps)
log = open(out + ".log", "w")
launcher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

def status(pid):
    fields = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024  # MiB
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    rank = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)
    return rank, fields

def steps_done():
    try:
        return sum(1 for _ in open(out + "/metrics.jsonl"))
    except OSError:
        return 0

during, peak = {}, {}
while launcher.poll() is None:
    training = steps_done() < steps
    try:
        children = open(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read().split()
    except OSError:
        children = []
    for pid in children:
        s = status(pid)
        if not s or s[0] is None or "VmRSS" not in s[1]:
            continue
        rank, f = s
        if training:
            during[rank] = max(during.get(rank, 0), f["VmRSS"])
        peak[rank] = max(peak.get(rank, 0), f.get("VmHWM", 0))
    time.sleep(0.05)
log.close()
if launcher.returncode != 0:
    sys.exit(f"{mode} round {rnd}: exit {launcher.returncode}, see {out}.log")
recs = [json.loads(l) for l in open(out + "/metrics.jsonl")][2:]
print(json.dumps({
    "mode": mode, "round": int(rnd),
    "images_per_s": statistics.median(r["images_per_s"] for r in recs),
    "rss_during_steps_mib": {r: round(v) for r, v in sorted(during.items())},
    "peak_rss_mib": {r: round(v) for r, v in sorted(peak.items())},
}))
PY
}
for r in $(seq 1 "$ROUNDS"); do
  run whole "$r"
  run sharded "$r" --shard-optimizer
done
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| mode | round | images/s (median) | RSS during steps, rank 0 / rank 1, MiB | peak RSS with the final checkpoint, rank 0 / rank 1, MiB |")
print("| --- | ---: | ---: | ---: | ---: |")
for r in rows:
    d, p = r["rss_during_steps_mib"], r["peak_rss_mib"]
    print(f"| {r['mode']} | {r['round']} | {r['images_per_s']:.2f} | {d.get('0')} / {d.get('1')} | {p.get('0')} / {p.get('1')} |")
med = lambda m, f: statistics.median(f(r) for r in rows if r["mode"] == m)
print("\nmedian of rounds:")
for m in ("whole", "sharded"):
    print(f"- {m}: images/s {med(m, lambda r: r['images_per_s']):.2f}; during steps rank 0 {med(m, lambda r: r['rss_during_steps_mib']['0']):.0f} MiB, "
          f"rank 1 {med(m, lambda r: r['rss_during_steps_mib']['1']):.0f} MiB, sum {med(m, lambda r: sum(r['rss_during_steps_mib'].values())):.0f} MiB; "
          f"peak rank 0 {med(m, lambda r: r['peak_rss_mib']['0']):.0f} MiB, rank 1 {med(m, lambda r: r['peak_rss_mib']['1']):.0f} MiB")
PY
