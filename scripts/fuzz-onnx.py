#!/usr/bin/env python3
"""Mutates the graph of an ONNX text model and runs `tagfix embed` on each mutant.

ONNX Runtime is C++: some malformed graphs make it abort instead of returning an error, which would
end tagfix. tagfix opens every model in a helper process first (src/embed/isolate.rs), so each run
must end with exit 0 (the mutant still runs), or exit 2 with an error: either ONNX Runtime's own
("cannot load the ONNX model", "inference failed", ...) or "ONNX Runtime crashed opening this model"
(the helper caught a crash). Anything else (a signal, a panic's 101) is tagfix crashing: the script
saves the mutant and exits 1.

Mutations (1 to 3 per mutant, through the `onnx` package of .venv-fixtures): a node's op type, an
attribute's value, an initializer's dims or data type, a node input rewired or dropped, a node
replaced by a copy of another, a graph input's or output's shape.

  .venv-fixtures/bin/python scripts/fuzz-onnx.py --runs 400 --seed 1
"""
import argparse
import collections
import copy
import os
import random
import shutil
import subprocess
import sys
import tempfile

import onnx
from onnx import helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = ["Add", "MatMul", "Gather", "Reshape", "Transpose", "Softmax", "Concat", "Slice", "Where",
       "Expand", "Cast", "ReduceMean", "Unsqueeze", "Squeeze", "Shape", "Tile", "Gemm", "Split",
       "ArgMax", "TopK", "Range", "ConstantOfShape", "Einsum", "Pad", "Resize", "NonZero"]


def mutate(model, rng):
    g = model.graph
    k = rng.randrange(8)
    if k == 0 and g.node:
        rng.choice(g.node).op_type = rng.choice(OPS)
    elif k == 1 and g.node:
        node = rng.choice(g.node)
        if not node.attribute:
            node.attribute.append(helper.make_attribute(
                rng.choice(["axis", "perm", "keepdims", "to"]), rng.choice([0, -5, 9, [2, 0, 1]])))
            return
        a = rng.choice(node.attribute)
        if a.type == onnx.AttributeProto.INT:
            a.i = rng.choice([-1, 0, 1, 2, -2**31, 2**31 - 1, 2**62, 7, 100000])
        elif a.type == onnx.AttributeProto.INTS and a.ints:
            a.ints[rng.randrange(len(a.ints))] = rng.choice([-1, 0, 5, -9, 2**40])
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = rng.choice([0.0, -1.0, float("nan"), 1e38])
    elif k == 2 and g.initializer:
        t = rng.choice(g.initializer)
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2, -1, 3, 1 << 20])
    elif k == 3 and g.node:
        node = rng.choice(g.node)
        names = [t.name for t in g.initializer] + [o for n in g.node for o in n.output]
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(names + [""])
    elif k == 4 and g.node:
        node = rng.choice(g.node)
        if node.input:
            del node.input[-1]
    elif k == 5 and g.initializer:
        rng.choice(g.initializer).data_type = rng.choice([1, 2, 3, 6, 7, 9, 10, 11, 16])
    elif k == 6 and g.node:
        i, j = rng.randrange(len(g.node)), rng.randrange(len(g.node))
        g.node[i].CopyFrom(copy.deepcopy(g.node[j]))
    elif k == 7:
        tt = rng.choice(list(g.input) + list(g.output)).type.tensor_type
        if tt.shape.dim:
            rng.choice(tt.shape.dim).dim_value = rng.choice([0, 1, 5, 77, 1 << 30])
        else:
            tt.elem_type = rng.choice([1, 7, 6, 9])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", default=os.path.join(ROOT, "models/clip-tiny"))
    p.add_argument("--tagfix", default=os.path.join(ROOT, "target/release/tagfix"))
    p.add_argument("--keep", default="fuzz-onnx-crashes", help="folder for mutants that crash tagfix")
    a = p.parse_args()
    rng = random.Random(a.seed)
    base = onnx.load(os.path.join(a.model, "model.onnx"))
    bpe = os.path.realpath(os.path.join(a.model, "..", "clip-bpe"))
    descriptor = open(os.path.join(a.model, "descriptor.toml")).read().replace("../clip-bpe", bpe)
    outcomes = collections.Counter()
    crashes = 0
    with tempfile.TemporaryDirectory() as work:
        model_dir = os.path.join(work, "model")
        os.makedirs(model_dir)
        open(os.path.join(model_dir, "descriptor.toml"), "w").write(descriptor)
        vocab = os.path.join(work, "tags.txt")
        open(vocab, "w").write("cat\ndog\nred car\n")
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"))
        for run in range(a.runs):
            m = copy.deepcopy(base)
            for _ in range(rng.randint(1, 3)):
                mutate(m, rng)
            try:
                data = m.SerializeToString()
            except Exception:
                outcomes["not serialisable"] += 1
                continue
            onnx_path = os.path.join(model_dir, "model.onnx")
            open(onnx_path, "wb").write(data)
            out = os.path.join(work, "out.npy")
            r = subprocess.run([a.tagfix, "--quiet", "embed", "--vocab", vocab, "--model", model_dir,
                                "--all", "--out", out], env=env, capture_output=True, timeout=300)
            err = r.stderr.decode(errors="replace")
            if r.returncode == 0:
                outcomes["exit 0: ran"] += 1
            elif r.returncode == 2 and "ONNX Runtime crashed" in err:
                outcomes["exit 2: ONNX Runtime crashed in the helper"] += 1
            elif r.returncode == 2:
                outcomes["exit 2: an error"] += 1
            else:
                crashes += 1
                os.makedirs(a.keep, exist_ok=True)
                kept = os.path.join(a.keep, f"seed{a.seed}-run{run}-rc{r.returncode}.onnx")
                shutil.copy(onnx_path, kept)
                print(f"CRASH run {run}: exit {r.returncode}, kept {kept}\n{err[-500:]}", flush=True)
    for outcome, n in sorted(outcomes.items()):
        print(f"{n:6d}  {outcome}")
    print(f"{a.runs} mutants, seed {a.seed}: {crashes} crashed tagfix")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
