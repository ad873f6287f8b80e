"""Pieces shared by the CLIP test-fixture generators (scripts/gen_clip_tiny.py, the text tower, and
scripts/gen_clip_tiny_vision.py, the image tower): random weights of a pre-LN residual attention block
(open_clip `ResidualAttentionBlock`: ln_1, multi-head attention with in_proj/out_proj, ln_2, QuickGELU
MLP c_fc/c_proj), its independent numpy forward, and an ONNX graph builder emitting the same block.
Weight names equal open_clip's state-dict keys.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

# descriptor.toml of an image tower (also written by scripts/export_clip_image_onnx.py).
IMAGE_DESCRIPTOR = """{header}
kind = "clip-image"
name = "{name}"
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


def image_descriptor(header, name, size, mean, std):
    return IMAGE_DESCRIPTOR.format(header=header, name=name, size=size, mean=json.dumps(list(mean)), std=json.dumps(list(std)))


def resblock_weights(rng, w, prefix, width):
    """Adds one block's weights to `w` (fixed draw order: the fixtures' bytes depend on it)."""
    p = prefix
    w[p + "ln_1.weight"] = 1 + rng.normal(0, 0.1, width)
    w[p + "ln_1.bias"] = rng.normal(0, 0.1, width)
    w[p + "attn.in_proj_weight"] = rng.normal(0, width**-0.5, (3 * width, width))
    w[p + "attn.in_proj_bias"] = rng.normal(0, 0.02, 3 * width)
    w[p + "attn.out_proj.weight"] = rng.normal(0, width**-0.5, (width, width))
    w[p + "attn.out_proj.bias"] = rng.normal(0, 0.02, width)
    w[p + "ln_2.weight"] = 1 + rng.normal(0, 0.1, width)
    w[p + "ln_2.bias"] = rng.normal(0, 0.1, width)
    w[p + "mlp.c_fc.weight"] = rng.normal(0, width**-0.5, (4 * width, width))
    w[p + "mlp.c_fc.bias"] = rng.normal(0, 0.02, 4 * width)
    w[p + "mlp.c_proj.weight"] = rng.normal(0, (4 * width) ** -0.5, (width, 4 * width))
    w[p + "mlp.c_proj.bias"] = rng.normal(0, 0.02, width)


# ---------------------------------------------------------------- numpy forward (the reference semantics)
def layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def resblock_numpy(w, p, x, heads, mask=None):
    """One block on x [b, s, width]; `mask` is added to the attention scores (causal for text)."""
    b, s, width = x.shape
    dh = width // heads
    h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
    qkv = h @ w[p + "attn.in_proj_weight"].T + w[p + "attn.in_proj_bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    split = lambda t: t.reshape(b, s, heads, dh).transpose(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    if mask is not None:
        scores = scores + mask
    scores = scores - scores.max(-1, keepdims=True)
    att = np.exp(scores)
    att = att / att.sum(-1, keepdims=True)
    ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, s, width)
    x = x + ctx @ w[p + "attn.out_proj.weight"].T + w[p + "attn.out_proj.bias"]
    h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
    h = h @ w[p + "mlp.c_fc.weight"].T + w[p + "mlp.c_fc.bias"]
    h = h * (1 / (1 + np.exp(-1.702 * h)))
    return x + h @ w[p + "mlp.c_proj.weight"].T + w[p + "mlp.c_proj.bias"]


# ---------------------------------------------------------------- ONNX graph
class Graph:
    """Collects nodes and initializers; every node is named after its single output."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def weights(self, w):
        """Every weight, plus a transposed copy of the linear weights (MatMul wants [in, out])."""
        for k, v in w.items():
            if k.endswith("in_proj_weight") or k.endswith(".weight") and ("proj" in k or "c_fc" in k):
                self.const(k + ".T", v.T.copy())
            self.const(k, v)

    def block_constants(self, width, heads):
        self.const("attn_scale", np.array(1 / np.sqrt(width // heads), np.float32))
        self.const("quick_gelu", np.array(1.702, np.float32))
        self.const("heads_shape", np.array([0, 0, heads, width // heads], np.int64))
        self.const("merge_shape", np.array([0, 0, width], np.int64))

    def layer_norm(self, x, prefix, out):
        return self.node("LayerNormalization", [x, prefix + "weight", prefix + "bias"], out, axis=-1, epsilon=1e-5)

    def linear(self, inp, prefix, out):
        mm = self.node("MatMul", [inp, prefix + ".weight.T"], out + "_mm")
        return self.node("Add", [mm, prefix + ".bias"], out)

    def resblock(self, x, p, mask=None):
        """One block (needs `block_constants`); returns its output name."""
        node = self.node
        h = self.layer_norm(x, p + "ln_1.", p + "ln_1")
        qkv = node("MatMul", [h, p + "attn.in_proj_weight.T"], p + "qkv_mm")
        qkv = node("Add", [qkv, p + "attn.in_proj_bias"], p + "qkv")
        self.nodes.append(helper.make_node("Split", [qkv], [p + "q", p + "k", p + "v"], name=p + "split", axis=-1, num_outputs=3))
        heads = {}
        for t in "qkv":
            r = node("Reshape", [p + t, "heads_shape"], p + t + "_heads")
            perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
            heads[t] = node("Transpose", [r], p + t + "_t", perm=perm)
        s = node("MatMul", [heads["q"], heads["k"]], p + "scores_raw")
        if mask is None:
            s = node("Mul", [s, "attn_scale"], p + "scores")
        else:
            s = node("Mul", [s, "attn_scale"], p + "scores_scaled")
            s = node("Add", [s, mask], p + "scores")
        a = node("Softmax", [s], p + "attn_probs", axis=-1)
        c = node("MatMul", [a, heads["v"]], p + "ctx_heads")
        c = node("Transpose", [c], p + "ctx_t", perm=[0, 2, 1, 3])
        c = node("Reshape", [c, "merge_shape"], p + "ctx")
        o = self.linear(c, p + "attn.out_proj", p + "attn_out")
        x = node("Add", [x, o], p + "x_attn")
        h = self.layer_norm(x, p + "ln_2.", p + "ln_2")
        h = self.linear(h, p + "mlp.c_fc", p + "fc")
        g = node("Mul", [h, "quick_gelu"], p + "gelu_in")
        g = node("Sigmoid", [g], p + "gelu_sig")
        h = node("Mul", [h, g], p + "gelu")
        h = self.linear(h, p + "mlp.c_proj", p + "mlp_out")
        return node("Add", [x, h], p + "x_mlp")

    def model(self, name, inputs, outputs, producer):
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name=producer)
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------- checking and writing a fixture
def check_graph(model, feeds, expected, tol=1e-4):
    """Runs the graph with onnx's reference evaluator on each feed dict and exits when an output
    differs from the numpy forward `expected` by more than `tol`. Returns the largest error."""
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(model)
    worst = 0.0
    for feed in feeds:
        got = ev.run(None, feed)[0]
        err = float(np.abs(got - expected).max())
        if err > tol:
            shapes = {k: list(v.shape) for k, v in feed.items()}
            sys.exit(f"ONNX graph differs from the numpy forward by {err} (inputs {shapes})")
        worst = max(worst, err)
    return worst


def write_fixture(out, model, descriptor, expected):
    """model.onnx, descriptor.toml and expected.json (the numpy forward) into `out`."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.onnx")
    onnx.save(model, path)
    with open(os.path.join(out, "descriptor.toml"), "w") as f:
        f.write(descriptor)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB), descriptor.toml, expected.json", file=sys.stderr)
