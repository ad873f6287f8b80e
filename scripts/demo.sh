#!/usr/bin/env bash
# The main job on the embedded default: setup, build, then `tagfix repair` (diff -> embed -> check -> train).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Progress stays visible: the first build compiles libtorch's C++ wrapper and ONNX Runtime bindings.
cargo build --release --all-features
bin=target/release/tagfix
$bin vocab ram
# The whole repair on the embedded default: the `ram` vocabulary, a synthesized RAM-format training set
# with 144 absent slots plus 64 synthetic images tagged with RAM's colour and shape slots, diff -> embed
# (real MiniLM model through ONNX Runtime) -> check -> a short train of the small RAM++ (40 steps, CPU,
# libtorch) with the repaired embeddings, ending with out/repair/REPORT.md. The base file patched here is
# the MiniLM embedding of the whole vocabulary from the shared material (standing in for a model's
# original label-embedding file); pass --base for your own.
$bin repair --records 20000 --absent 144 --train-steps 40 --out out/repair
echo
echo "report: out/repair/REPORT.md"

