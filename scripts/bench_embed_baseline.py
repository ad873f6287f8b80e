#!/usr/bin/env python3
"""Python baseline for scripts/bench-embed.sh: the same MiniLM ONNX model and tokenizer.json, the same
texts ("a photo of a {tag}." over the vocabulary, RAM's name processing), the same thread count.

What a Python user would write: tokenizers with batch-longest padding and truncation at 128, batches of
--batch-size texts in vocabulary order, onnxruntime on CPU, mean pooling over the attention mask, L2.
Prints one JSON line with the timings; writes the embeddings to --out (.npy) for the agreement check.
"""
import argparse
import json
import time

t_start = time.perf_counter()
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.vocab, encoding="utf-8") as f:
        tags = f.read().splitlines()
    texts = ["a photo of a {}.".format(t.replace("_", " ").replace("/", " or ").lower()) for t in tags]

    tok = Tokenizer.from_file(f"{a.model_dir}/tokenizer.json")
    tok.enable_truncation(128)
    tok.enable_padding()  # pad to the longest text of each batch
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(f"{a.model_dir}/model.onnx", so, providers=["CPUExecutionProvider"])
    t_ready = time.perf_counter()

    out = []
    for i in range(0, len(texts), a.batch_size):
        enc = tok.encode_batch(texts[i : i + a.batch_size])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        hidden = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        out.append(pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None))
    emb = np.concatenate(out).astype(np.float32)
    t_done = time.perf_counter()
    np.save(a.out, emb)
    print(json.dumps({"texts": len(texts), "load_s": t_ready - t_start, "encode_s": t_done - t_ready, "total_s": time.perf_counter() - t_start}))


if __name__ == "__main__":
    main()
