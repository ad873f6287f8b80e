#!/usr/bin/env python3
"""Generate the CLIP-architecture test fixture: a random-weight CLIP text tower with the real vocabulary.

    .venv-fixtures/bin/python scripts/gen_clip_tiny.py [--out models/clip-tiny] [--reference-tokens FILE]

Writes OUT/model.onnx (~6.5 MB), OUT/descriptor.toml and OUT/expected.json. No PyTorch needed: the graph is
built with the `onnx` package and numpy weights drawn from a fixed seed, so every run writes the same bytes
(scripts/setup.sh runs it; nothing binary is committed).

The graph follows the OpenAI / open_clip text tower (open_clip `TextTransformer`, `CLIP.encode_text`):
token embedding [49408, W] + positional embedding [77, W] (sliced to the input length), pre-LN residual
blocks with causal multi-head attention and a QuickGELU MLP, ln_final, pooling at the end-of-text token
(argmax of the ids) and the text projection [W, 512].
Input  `input_ids`   int64 [batch, seq] (seq dynamic, <= 77)
Output `text_embeds` float32 [batch, 512] (not normalised, as `encode_text`).

expected.json holds, for a few reference texts (ids from ../shared/reference/clip_tokens when given), the
outputs of an independent numpy forward pass at the full 77-token width; the script checks the ONNX graph
against it with onnx's reference evaluator, at 77 tokens and cut to the longest text.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB = 49408
CONTEXT = 77
WIDTH = 32
HEADS = 2
LAYERS = 1
EMBED = 512
SEED = 20240531
EOT = 49407


def weights(rng):
    w = {
        "token_embedding.weight": rng.normal(0, 0.02, (VOCAB, WIDTH)),
        "positional_embedding": rng.normal(0, 0.01, (CONTEXT, WIDTH)),
    }
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        w[p + "ln_1.weight"] = 1 + rng.normal(0, 0.1, WIDTH)
        w[p + "ln_1.bias"] = rng.normal(0, 0.1, WIDTH)
        w[p + "attn.in_proj_weight"] = rng.normal(0, WIDTH**-0.5, (3 * WIDTH, WIDTH))
        w[p + "attn.in_proj_bias"] = rng.normal(0, 0.02, 3 * WIDTH)
        w[p + "attn.out_proj.weight"] = rng.normal(0, WIDTH**-0.5, (WIDTH, WIDTH))
        w[p + "attn.out_proj.bias"] = rng.normal(0, 0.02, WIDTH)
        w[p + "ln_2.weight"] = 1 + rng.normal(0, 0.1, WIDTH)
        w[p + "ln_2.bias"] = rng.normal(0, 0.1, WIDTH)
        w[p + "mlp.c_fc.weight"] = rng.normal(0, WIDTH**-0.5, (4 * WIDTH, WIDTH))
        w[p + "mlp.c_fc.bias"] = rng.normal(0, 0.02, 4 * WIDTH)
        w[p + "mlp.c_proj.weight"] = rng.normal(0, (4 * WIDTH) ** -0.5, (WIDTH, 4 * WIDTH))
        w[p + "mlp.c_proj.bias"] = rng.normal(0, 0.02, WIDTH)
    w["ln_final.weight"] = 1 + rng.normal(0, 0.1, WIDTH)
    w["ln_final.bias"] = rng.normal(0, 0.1, WIDTH)
    w["text_projection"] = rng.normal(0, WIDTH**-0.5, (WIDTH, EMBED))
    return {k: v.astype(np.float32) for k, v in w.items()}


def causal_mask(n):
    m = np.zeros((n, n), np.float32)
    m[np.triu_indices(n, 1)] = -np.inf
    return m


# ---------------------------------------------------------------- numpy forward (the reference semantics)
def layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def forward_numpy(w, ids):
    b, s = ids.shape
    x = w["token_embedding.weight"][ids] + w["positional_embedding"][:s]
    mask = causal_mask(s)
    dh = WIDTH // HEADS
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        split = lambda t: t.reshape(b, s, HEADS, dh).transpose(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + mask
        scores = scores - scores.max(-1, keepdims=True)
        att = np.exp(scores)
        att = att / att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, s, WIDTH)
        x = x + ctx @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
        h = h * (1 / (1 + np.exp(-1.702 * h)))
        x = x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
    x = layer_norm(x, w["ln_final.weight"], w["ln_final.bias"])
    pooled = x[np.arange(b), ids.argmax(-1)]
    return pooled @ w["text_projection"]


# ---------------------------------------------------------------- ONNX graph
def build_graph(w):
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    for k, v in w.items():
        if k.endswith("in_proj_weight") or k.endswith(".weight") and ("proj" in k or "c_fc" in k):
            const(k + ".T", v.T.copy())  # MatMul wants [in, out]
        const(k, v)
    const("causal_mask", causal_mask(CONTEXT))
    i1 = const("i64_1", np.array([1], np.int64))
    i2 = const("i64_2", np.array([2], np.int64))
    z1 = const("i64_0", np.array([0], np.int64))
    z2 = const("i64_00", np.array([0, 0], np.int64))
    axes01 = const("axes_01", np.array([0, 1], np.int64))
    scale = const("attn_scale", np.array(1 / np.sqrt(WIDTH // HEADS), np.float32))
    quick = const("quick_gelu", np.array(1.702, np.float32))
    heads_shape = const("heads_shape", np.array([0, 0, HEADS, WIDTH // HEADS], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, WIDTH], np.int64))

    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Slice", [shape, i1, i2], "seq_len")  # [S]
    seq2 = node("Concat", [seq, seq], "seq_len_2", axis=0)  # [S, S]
    pos = node("Slice", ["positional_embedding", z1, seq, z1], "pos_sliced")
    mask = node("Slice", ["causal_mask", z2, seq2, axes01], "mask_sliced")
    tok = node("Gather", ["token_embedding.weight", "input_ids"], "tok_emb", axis=0)
    x = node("Add", [tok, pos], "x0")

    def linear(inp, prefix, out):
        mm = node("MatMul", [inp, prefix + ".weight.T"], out + "_mm")
        return node("Add", [mm, prefix + ".bias"], out)

    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        h = node("LayerNormalization", [x, p + "ln_1.weight", p + "ln_1.bias"], p + "ln_1", axis=-1, epsilon=1e-5)
        qkv = node("MatMul", [h, p + "attn.in_proj_weight.T"], p + "qkv_mm")
        qkv = node("Add", [qkv, p + "attn.in_proj_bias"], p + "qkv")
        nodes.append(helper.make_node("Split", [qkv], [p + "q", p + "k", p + "v"], name=p + "split", axis=-1, num_outputs=3))
        heads = {}
        for t in "qkv":
            r = node("Reshape", [p + t, heads_shape], p + t + "_heads")
            perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
            heads[t] = node("Transpose", [r], p + t + "_t", perm=perm)
        s = node("MatMul", [heads["q"], heads["k"]], p + "scores_raw")
        s = node("Mul", [s, scale], p + "scores_scaled")
        s = node("Add", [s, mask], p + "scores")
        a = node("Softmax", [s], p + "attn_probs", axis=-1)
        c = node("MatMul", [a, heads["v"]], p + "ctx_heads")
        c = node("Transpose", [c], p + "ctx_t", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, merge_shape], p + "ctx")
        o = linear(c, p + "attn.out_proj", p + "attn_out")
        x = node("Add", [x, o], p + "x_attn")
        h = node("LayerNormalization", [x, p + "ln_2.weight", p + "ln_2.bias"], p + "ln_2", axis=-1, epsilon=1e-5)
        h = linear(h, p + "mlp.c_fc", p + "fc")
        g = node("Mul", [h, quick], p + "gelu_in")
        g = node("Sigmoid", [g], p + "gelu_sig")
        h = node("Mul", [h, g], p + "gelu")
        h = linear(h, p + "mlp.c_proj", p + "mlp_out")
        x = node("Add", [x, h], p + "x_mlp")
    x = node("LayerNormalization", [x, "ln_final.weight", "ln_final.bias"], "ln_final", axis=-1, epsilon=1e-5)
    eot = node("ArgMax", ["input_ids"], "eot_index", axis=-1, keepdims=1)  # [B, 1]
    pooled = node("GatherND", [x, eot], "pooled", batch_dims=1)  # [B, W]
    node("MatMul", [pooled, "text_projection"], "text_embeds")

    graph = helper.make_graph(
        nodes,
        "clip_text_tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", EMBED])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tagfix gen_clip_tiny.py")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


DESCRIPTOR = """# Random-weight CLIP text tower with the real CLIP vocabulary: a TEST FIXTURE, not a model.
# Generated by scripts/gen_clip_tiny.py (width {width}, {layers} layer, {heads} heads, seed {seed}).
name = "clip-tiny (random weights, test fixture)"
onnx = "model.onnx"
max_length = 77
dynamic_sequence = true

[tokenizer]
kind = "clip-bpe"
file = "{bpe}"

[inputs]
input_ids = "input_ids"

[output]
name = "text_embeds"
pooling = "pooled"
normalize = true
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/clip-tiny")
    ap.add_argument("--bpe", default="../clip-bpe/bpe_simple_vocab_16e6.txt.gz", help="tokenizer path relative to --out")
    ap.add_argument("--reference-tokens", help="clip_tokens jsonl to take expected-output texts from")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    w = weights(np.random.RandomState(SEED))
    model = build_graph(w)

    # Texts for expected.json: reference rows when available, else fixed ids.
    samples = []
    if args.reference_tokens and os.path.exists(args.reference_tokens):
        with open(args.reference_tokens) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for r in rows[:: max(1, len(rows) // 6)][:6]:
            samples.append({"text": r["text"], "ids": r["ids"]})
    if not samples:
        samples = [{"text": None, "ids": [49406, 320, 1125, 539, 320, 1929, 269, EOT]}]
    full = np.zeros((len(samples), CONTEXT), np.int64)
    for i, s in enumerate(samples):
        full[i, : len(s["ids"])] = s["ids"]
    expected = forward_numpy(w, full)

    # The graph must compute the numpy forward, at 77 tokens and cut to the longest text.
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(model)
    longest = max(len(s["ids"]) for s in samples)
    for ids in (full, full[:, :longest]):
        got = ev.run(None, {"input_ids": ids})[0]
        err = np.abs(got - expected).max()
        if err > 1e-4:
            sys.exit(f"ONNX graph differs from the numpy forward by {err} at width {ids.shape[1]}")

    path = os.path.join(args.out, "model.onnx")
    onnx.save(model, path)
    with open(os.path.join(args.out, "descriptor.toml"), "w") as f:
        f.write(DESCRIPTOR.format(width=WIDTH, layers=LAYERS, heads=HEADS, seed=SEED, bpe=args.bpe))
    for s, e in zip(samples, expected):
        s["text_embeds"] = [float(v) for v in e]
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump({"note": "numpy forward of model.onnx's weights at 77 tokens", "samples": samples}, f)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB), descriptor.toml, expected.json", file=sys.stderr)


if __name__ == "__main__":
    main()
