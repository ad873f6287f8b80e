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

import numpy as np
from onnx import TensorProto, helper

from clip_tiny_common import Graph, check_graph, image_descriptor, layer_norm, resblock_numpy, resblock_weights, write_fixture

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
        resblock_weights(rng, w, f"transformer.resblocks.{i}.", WIDTH)
    w["ln_post.weight"] = 1 + rng.normal(0, 0.1, WIDTH)
    w["ln_post.bias"] = rng.normal(0, 0.1, WIDTH)
    w["proj"] = rng.normal(0, WIDTH**-0.5, (WIDTH, EMBED))
    return {k: v.astype(np.float32) for k, v in w.items()}


def sample_pixels(batch):
    """The deterministic test inputs (documented above; the Rust test builds the same)."""
    b, c, y, x = np.meshgrid(np.arange(batch), np.arange(3), np.arange(SIZE), np.arange(SIZE), indexing="ij")
    return (np.sin(0.05 * (x + 1) * (c + 1) + 0.031 * y * (b + 1)) * 1.5).astype(np.float32)


# ---------------------------------------------------------------- numpy forward (the reference semantics)
def forward_numpy(w, pixels):
    b = pixels.shape[0]
    # conv1 with kernel = stride = PATCH is a matmul over non-overlapping patches.
    patches = pixels.reshape(b, 3, GRID, PATCH, GRID, PATCH).transpose(0, 2, 4, 1, 3, 5).reshape(b, GRID * GRID, -1)
    x = patches.astype(np.float64) @ w["conv1.weight"].reshape(WIDTH, -1).T.astype(np.float64)
    cls = np.broadcast_to(w["class_embedding"], (b, 1, WIDTH))
    x = np.concatenate([cls, x], axis=1) + w["positional_embedding"]
    x = layer_norm(x, w["ln_pre.weight"], w["ln_pre.bias"])
    for i in range(LAYERS):
        x = resblock_numpy(w, f"transformer.resblocks.{i}.", x, HEADS)
    pooled = layer_norm(x[:, 0], w["ln_post.weight"], w["ln_post.bias"])
    return pooled @ w["proj"]


# ---------------------------------------------------------------- ONNX graph
def build_graph(w):
    g = Graph()
    g.weights(w)
    g.const("class_embedding_3d", w["class_embedding"].reshape(1, 1, WIDTH))
    i0 = g.const("i64_0", np.array([0], np.int64))
    i1 = g.const("i64_1", np.array([1], np.int64))
    tail = g.const("cls_tail", np.array([1, WIDTH], np.int64))
    flat_shape = g.const("flat_shape", np.array([0, WIDTH, GRID * GRID], np.int64))
    g.block_constants(WIDTH, HEADS)

    x = g.node("Conv", ["pixel_values", "conv1.weight"], "conv1", kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH])
    x = g.node("Reshape", [x, flat_shape], "patches_flat")  # [B, W, G*G]
    x = g.node("Transpose", [x], "patches", perm=[0, 2, 1])  # [B, G*G, W]
    shape = g.node("Shape", ["pixel_values"], "pixel_shape")
    batch = g.node("Slice", [shape, i0, i1], "batch")  # [B]
    cls_shape = g.node("Concat", [batch, tail], "cls_shape", axis=0)  # [B, 1, W]
    cls = g.node("Expand", ["class_embedding_3d", cls_shape], "cls_tokens")
    x = g.node("Concat", [cls, x], "tokens", axis=1)
    x = g.node("Add", [x, "positional_embedding"], "x_pos")
    x = g.layer_norm(x, "ln_pre.", "ln_pre")
    for i in range(LAYERS):
        x = g.resblock(x, f"transformer.resblocks.{i}.")
    cls_out = g.node("Gather", [x, i0], "cls_out", axis=1)  # [B, 1, W]
    cls_out = g.node("Squeeze", [cls_out, i1], "cls_squeezed")  # [B, W]
    pooled = g.layer_norm(cls_out, "ln_post.", "ln_post")
    g.node("MatMul", [pooled, "proj"], "image_embeds")
    return g.model(
        "clip_vision_tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", EMBED])],
        "tagfix gen_clip_tiny_vision.py",
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/clip-tiny-vision")
    args = ap.parse_args()
    w = weights(np.random.RandomState(SEED))
    model = build_graph(w)
    pixels = sample_pixels(2)
    expected = forward_numpy(w, pixels)
    err = check_graph(model, [{"pixel_values": pixels}], expected)
    header = (
        "# Random-weight tiny CLIP ViT image tower: a TEST FIXTURE, not a model.\n"
        f"# Generated by scripts/gen_clip_tiny_vision.py (patch {PATCH}, width {WIDTH}, {LAYERS} layer, {HEADS} heads, seed {SEED})."
    )
    write_fixture(
        args.out,
        model,
        image_descriptor(header, "clip-tiny-vision (random weights, test fixture)", SIZE, CLIP_MEAN, CLIP_STD),
        {
            "note": "numpy forward of model.onnx's weights on pixel_values[b,c,y,x] = "
            "sin(0.05*(x+1)*(c+1) + 0.031*y*(b+1)) * 1.5",
            "max_abs_error_reference_evaluator": err,
            "image_embeds": [[float(v) for v in row] for row in expected],
        },
    )


if __name__ == "__main__":
    main()
