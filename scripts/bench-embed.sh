#!/usr/bin/env bash
# Benchmark: `tagfix embed` vs the Python baseline (onnxruntime + tokenizers from PyPI), real MiniLM int8
# ONNX over all 4585 RAM tags, single template, same model, same thread count, same machine, same run.
#   scripts/bench-embed.sh [THREADS] [REPEATS]
# Installs the baseline's packages into .venv-bench (separate from .venv). Prints a table and checks that
# both produce the same embeddings (min cosine per row).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-$(nproc)}"
repeats="${2:-3}"
scripts/setup.sh
# The stamp names the packages (scripts/bench-step.sh installs other ones into the same venv).
pkgs=(onnxruntime==1.31.1 tokenizers==0.23.3 numpy==2.4.6)
stamp=".venv-bench/.tagfix-embed-$(echo "${pkgs[*]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bench: installing ${pkgs[*]} into .venv-bench" >&2
  [ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet --disable-pip-version-check "${pkgs[@]}"
  rm -f .venv-bench/.tagfix-embed-* .venv-bench/.ready-1
  touch "$stamp"
fi
cargo build --release --features embed --quiet
bin=target/release/tagfix
vocab="${TAGFIX_SHARED:-../shared}/ram/data/ram_tag_list.txt"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads=$threads, repeats=$repeats" >&2
rust_total=(); rust_encode=(); py_total=(); py_encode=()
for i in $(seq "$repeats"); do
  s=$(date +%s.%N)
  line=$($bin --quiet embed --vocab "$vocab" --model minilm --all --threads "$threads" --out "$work/rust.npy")
  e=$(date +%s.%N)
  rust_total+=("$(echo "$e - $s" | bc)")
  rust_encode+=("$(echo "$line" | sed -E 's/.* texts in ([0-9.]+) s.*/\1/')")
  json=$(.venv-bench/bin/python scripts/bench_embed_baseline.py --vocab "$vocab" --model-dir models/minilm --threads "$threads" --out "$work/py.npy")
  e2=$(date +%s.%N)
  py_total+=("$(echo "$e2 - $e" | bc)")
  py_encode+=("$(echo "$json" | .venv-bench/bin/python -c 'import json,sys; print(round(json.load(sys.stdin)["encode_s"], 3))')")
  echo "run $i: tagfix ${rust_total[-1]} s (encode ${rust_encode[-1]} s) | python ${py_total[-1]} s (encode ${py_encode[-1]} s)" >&2
done

.venv-bench/bin/python - "$work" "${rust_total[*]}" "${rust_encode[*]}" "${py_total[*]}" "${py_encode[*]}" <<'PY'
import sys, numpy as np
work, rt, re_, pt, pe = sys.argv[1], *[list(map(float, s.split())) for s in sys.argv[2:]]
a, b = np.load(f"{work}/rust.npy"), np.load(f"{work}/py.npy")
cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
med = lambda v: float(np.median(v))
print("| measure (median of %d) | tagfix embed | Python baseline | speed-up |" % len(rt))
print("| --- | --- | --- | --- |")
print("| end to end (process start to file written) | %.2f s | %.2f s | %.2fx |" % (med(rt), med(pt), med(pt) / med(rt)))
print("| encoding only (tokenize + inference + pooling) | %.2f s | %.2f s | %.2fx |" % (med(re_), med(pe), med(pe) / med(re_)))
print("agreement: min cosine tagfix vs Python over %d rows = %.7f" % (len(a), cos.min()))
PY
