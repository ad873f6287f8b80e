#!/usr/bin/env python3
"""Generate the CLIP image-tower test fixture: a random-weight tiny CLIP ViT image encoder.

    .venv-fixtures/bin/python scripts/gen_clip_tiny_vision.py [--out models/clip-tiny-vision]

Writes OUT/model.onnx (~1 MB), OUT/descriptor.toml and OUT/expected.json. No PyTorch needed: the graph is
built with the `onnx` package and numpy weights drawn from a fixed seed, so every run writes the same bytes
(scripts/setup.sh runs it; nothing binary is committed).

The graph follows the OpenAI / open_clip image tower (open_clip `VisionTransformer`, `CLIP.encode_image`,
ViT-B/32 layout at a small width): patch embedding as a convolution without bias (`conv1`, kernel = stride
= patch), class token (`class_embedding`) prepended, positional embedding [1 + grid², W], `ln_pre`,
pre-LN residual blocks with (non-causal) multi-head attention and a QuickGELU MLP, `ln_post` on the class
token and the projection `proj` [W, 512].
Input  `pixel_values` float32 [batch, 3, 224, 224] (CLIP-normalised RGB)
Output `image_embeds` float32 [batch, 512] (not normalised, as `encode_image`).

expected.json holds, for two deterministic input tensors (pixel_values[b, c, y, x] =
sin(0.05·(x + 1)·(c + 1) + 0.031·y·(b + 1)) · 1.5, computable anywhere without files), the output of an
independent numpy forward pass; the script checks the ONNX graph against it with onnx's reference
evaluator before writing anything.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 224
PATCH = 32
GRID = SIZE // PATCH
WIDTH = 64
HEADS = 2
LAYERS = 1
EMBED = 512
SEED = 20240601
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def weights(rng):
    w = {
        "conv1.weight": rng.normal(0, (3 * PATCH * PATCH) ** -0.5, (WIDTH, 3, PATCH, PATCH)),
        "class_embedding": rng.normal(0, WIDTH**-0.5, WIDTH),
        "positional_embedding": rng.normal(0, WIDTH**-0.5, (GRID * GRID + 1, WIDTH)),
        "ln_pre.weight": 1 + rng.normal(0, 0.1, WIDTH),
        "ln_pre.bias": rng.normal(0, 0.1, WIDTH),
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
    w["ln_post.weight"] = 1 + rng.normal(0, 0.1, WIDTH)
    w["ln_post.bias"] = rng.normal(0, 0.1, WIDTH)
    w["proj"] = rng.normal(0, WIDTH**-0.5, (WIDTH, EMBED))
    return {k: v.astype(np.float32) for k, v in w.items()}


def sample_pixels(batch):
    """The deterministic test inputs (documented above; the Rust test builds the same)."""
    b, c, y, x = np.meshgrid(np.arange(batch), np.arange(3), np.arange(SIZE), np.arange(SIZE), indexing="ij")
    return (np.sin(0.05 * (x + 1) * (c + 1) + 0.031 * y * (b + 1)) * 1.5).astype(np.float32)


# ---------------------------------------------------------------- numpy forward (the reference semantics)
def layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def forward_numpy(w, pixels):
    b = pixels.shape[0]
    # conv1 with kernel = stride = PATCH is a matmul over non-overlapping patches.
    patches = pixels.reshape(b, 3, GRID, PATCH, GRID, PATCH).transpose(0, 2, 4, 1, 3, 5).reshape(b, GRID * GRID, -1)
    x = patches.astype(np.float64) @ w["conv1.weight"].reshape(WIDTH, -1).T.astype(np.float64)
    cls = np.broadcast_to(w["class_embedding"], (b, 1, WIDTH))
    x = np.concatenate([cls, x], axis=1) + w["positional_embedding"]
    x = layer_norm(x, w["ln_pre.weight"], w["ln_pre.bias"])
    s = x.shape[1]
    dh = WIDTH // HEADS
    for i in range(LAYERS):
        p = f"transformer.resblocks.{i}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        qkv = h @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        split = lambda t: t.reshape(b, s, HEADS, dh).transpose(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
        scores = scores - scores.max(-1, keepdims=True)
        att = np.exp(scores)
        att = att / att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, s, WIDTH)
        x = x + ctx @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        h = h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
        h = h * (1 / (1 + np.exp(-1.702 * h)))
        x = x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]
    pooled = layer_norm(x[:, 0], w["ln_post.weight"], w["ln_post.bias"])
    return pooled @ w["proj"]


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
    const("class_embedding_3d", w["class_embedding"].reshape(1, 1, WIDTH))
    i0 = const("i64_0", np.array([0], np.int64))
    i1 = const("i64_1", np.array([1], np.int64))
    tail = const("cls_tail", np.array([1, WIDTH], np.int64))
    scale = const("attn_scale", np.array(1 / np.sqrt(WIDTH // HEADS), np.float32))
    quick = const("quick_gelu", np.array(1.702, np.float32))
    heads_shape = const("heads_shape", np.array([0, 0, HEADS, WIDTH // HEADS], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, WIDTH], np.int64))
    flat_shape = const("flat_shape", np.array([0, WIDTH, GRID * GRID], np.int64))

    x = node("Conv", ["pixel_values", "conv1.weight"], "conv1", kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    x = node("Reshape", [x, flat_shape], "patches_flat")  # [B, W, G*G]
    x = node("Transpose", [x], "patches", perm=[0, 2, 1])  # [B, G*G, W]
    shape = node("Shape", ["pixel_values"], "pixel_shape")
    batch = node("Slice", [shape, i0, i1], "batch")  # [B]
    cls_shape = node("Concat", [batch, tail], "cls_shape", axis=0)  # [B, 1, W]
    cls = node("Expand", ["class_embedding_3d", cls_shape], "cls_tokens")
    x = node("Concat", [cls, x], "tokens", axis=1)
    x = node("Add", [x, "positional_embedding"], "x_pos")
    x = node("LayerNormalization", [x, "ln_pre.weight", "ln_pre.bias"], "ln_pre", axis=-1, epsilon=1e-5)

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
        s = node("Mul", [s, scale], p + "scores")
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
    cls_out = node("Gather", [x, "i64_0"], "cls_out", axis=1)  # [B, 1, W]
    cls_out = node("Squeeze", [cls_out, "i64_1"], "cls_squeezed")  # [B, W]
    pooled = node("LayerNormalization", [cls_out, "ln_post.weight", "ln_post.bias"], "ln_post", axis=-1, epsilon=1e-5)
    node("MatMul", [pooled, "proj"], "image_embeds")

    graph = helper.make_graph(
        nodes,
        "clip_vision_tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", EMBED])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tagfix gen_clip_tiny_vision.py")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


DESCRIPTOR = """# Random-weight tiny CLIP ViT image tower: a TEST FIXTURE, not a model.
# Generated by scripts/gen_clip_tiny_vision.py (patch {patch}, width {width}, {layers} layer, {heads} heads, seed {seed}).
kind = "clip-image"
name = "clip-tiny-vision (random weights, test fixture)"
onnx = "model.onnx"

[input]
name = "pixel_values"
size = {size}
resize = "shortest-side"
mean = {mean}
std = {std}

[output]
name = "image_embeds"
normalize = false
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/clip-tiny-vision")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    w = weights(np.random.RandomState(SEED))
    model = build_graph(w)
    pixels = sample_pixels(2)
    expected = forward_numpy(w, pixels)

    from onnx.reference import ReferenceEvaluator

    got = ReferenceEvaluator(model).run(None, {"pixel_values": pixels})[0]
    err = np.abs(got - expected).max()
    if err > 1e-4:
        sys.exit(f"ONNX graph differs from the numpy forward by {err}")

    path = os.path.join(args.out, "model.onnx")
    onnx.save(model, path)
    with open(os.path.join(args.out, "descriptor.toml"), "w") as f:
        f.write(
            DESCRIPTOR.format(
                patch=PATCH, width=WIDTH, layers=LAYERS, heads=HEADS, seed=SEED, size=SIZE,
                mean=json.dumps(CLIP_MEAN), std=json.dumps(CLIP_STD),
            )
        )
    with open(os.path.join(args.out, "expected.json"), "w") as f:
        json.dump(
            {
                "note": "numpy forward of model.onnx's weights on pixel_values[b,c,y,x] = "
                "sin(0.05*(x+1)*(c+1) + 0.031*y*(b+1)) * 1.5",
                "max_abs_error_reference_evaluator": float(err),
                "image_embeds": [[float(v) for v in row] for row in expected],
            },
            f,
        )
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB), descriptor.toml, expected.json (max error {err:.2e})", file=sys.stderr)


if __name__ == "__main__":
    main()
