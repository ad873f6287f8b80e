#!/usr/bin/env python3
"""Python side of the step-time benchmark (scripts/bench-step.sh): RAM++ forward + backward through the
functional restatement of `RAM_plus.forward` that ships with the RAM++ reference
(`../shared/ram/reference/functional_reference.py`, which reproduces the public implementation's losses,
logits and gradients bit for bit), on the weights, inputs and configuration that `examples/step_time.rs`
exported, so both sides time the same computation.

    python scripts/bench_step.py --dir EXPORT --reference ../shared/ram/reference \
        --steps 50 --warmup 5 --threads 2 --device cpu [--precision bf16]

Prints one JSON line with the median step time and the losses (which should equal the Rust side's).
"""
import argparse
import contextlib
import json
import sys
import time

import torch
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--reference", required=True, help="folder holding functional_reference.py")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    sys.path.insert(0, a.reference)
    import functional_reference as fr

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.set_default_device(dev)  # the reference builds masks, indices and targets with default tensors
    cfg = json.load(open(f"{a.dir}/config.json"))
    W = load_file(f"{a.dir}/weights.safetensors", device=a.device)
    inp = load_file(f"{a.dir}/inputs.safetensors", device=a.device)
    buffers = ("relative_position_index", "attn_mask")
    params = {k: v.requires_grad_(True) for k, v in W.items()
              if v.is_floating_point() and not k.endswith(buffers)}
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "bf16" \
        else contextlib.nullcontext
    times, out = [], None
    for i in range(a.warmup + a.steps):
        for p in params.values():
            p.grad = None
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            out = fr.forward(W, inp, cfg)
        total = out["loss_tag"] + out["loss_dis"] + out["loss_alignment"]
        total.backward()
        total.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
    times.sort()
    median = times[len(times) // 2]
    batch = inp["image"].shape[0]
    print(json.dumps({
        "impl": "Python functional RAM++ (torch %s)" % torch.__version__,
        "config": cfg.get("variant"), "num_class": cfg["num_class"], "des_per_class": cfg["des_per_class"],
        "batch": batch, "device": str(dev), "threads": torch.get_num_threads(), "precision": a.precision,
        "steps": a.steps, "median_s": median, "min_s": times[0], "images_per_s": batch / median,
        "loss_tag": out["loss_tag"].item(), "loss_dis": out["loss_dis"].item(),
        "loss_alignment": out["loss_alignment"].item(),
    }))


if __name__ == "__main__":
    main()
