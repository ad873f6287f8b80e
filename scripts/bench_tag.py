#!/usr/bin/env python3
"""Python side of the tagging benchmark (scripts/bench-tag.sh): RAM's inference transform
(`ram/transform.py`: RGB, Resize((S, S)) bilinear on the PIL image, ToTensor, ImageNet Normalize) and
the RAM++ tag branch (`generate_tag` up to the sigmoid) through the functional restatement that ships
with the RAM++ reference (`../shared/ram/reference/functional_reference.py`), on the weights and
config.json `examples/step_time.rs --export` wrote, over the same image files `tagfix tag` reads.

    python scripts/bench_tag.py --dir EXPORT --reference ../shared/ram/reference --images DIR \
        --threads 2 --batch 8 --device cpu

Prints one JSON line: images, seconds (decode + transform + forward, model loading excluded),
images per second.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def transform(path, size):
    img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(((x - MEAN) / STD).transpose(2, 0, 1).copy())


def tag_probabilities(fr, W, image, cfg):
    nc, des = cfg["num_class"], cfg["des_per_class"]
    image_embeds = fr.linear(fr.swin(image, W, cfg), W, "image_proj")
    cls = image_embeds[:, 0, :]
    B = image_embeds.shape[0]
    E = W["label_embed"]
    cls_n = cls / cls.norm(dim=-1, keepdim=True)
    w = (W["reweight_scale"].exp() * cls_n @ E.t()).view(B, -1, des).softmax(dim=2)
    reweighted = (w.unsqueeze(-1) * E.view(nc, des, E.shape[1]).unsqueeze(0)).sum(dim=2)
    label_q = torch.relu(fr.linear(reweighted, W, "wordvec_proj"))
    logits = fr.linear(fr.tagging_head(label_q, image_embeds, W, cfg), W, "fc").squeeze(-1)
    return torch.sigmoid(logits)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    sys.path.insert(0, a.reference)
    import functional_reference as fr

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.set_default_device(dev)
    cfg = json.load(open(f"{a.dir}/config.json"))
    W = load_file(f"{a.dir}/weights.safetensors", device=a.device)
    size = cfg["image_size"]
    paths = sorted(os.path.join(a.images, n) for n in os.listdir(a.images)
                   if n.lower().endswith((".jpg", ".jpeg", ".png")))
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), a.batch):
            x = torch.stack([transform(p, size) for p in paths[i:i + a.batch]]).to(dev)
            tag_probabilities(fr, W, x, cfg).cpu()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(json.dumps({
        "impl": "Python: PIL transform + functional RAM++ (torch %s)" % torch.__version__,
        "config": cfg.get("variant"), "num_class": cfg["num_class"], "des_per_class": cfg["des_per_class"],
        "device": str(dev), "threads": torch.get_num_threads(), "batch": a.batch,
        "images": len(paths), "seconds": dt, "images_per_s": len(paths) / dt,
    }))


if __name__ == "__main__":
    main()
