#!/usr/bin/env python3
"""BLIP's Solarize, Color, Contrast and Posterize on one image, at every magnitude 0-10.

The four operations of BLIP's `transform/randaugment.py` (salesforce/BLIP; RAM's
`ram/data/randaugment.py` is the same file) that RAM's training list leaves out, restated with
NumPy as BLIP computes them, with BLIP's magnitude -> argument mapping (MAX_LEVEL 10). The one
deviation is Posterize's mask, `np.uint8(255 << (8 - bits))`: NumPy 1.x (BLIP's era) wraps the
out-of-range value to 8 bits, NumPy 2 refuses it, so the wrap is written out.

  python scripts/blip_randaugment_reference.py IMAGE.rgb WIDTH HEIGHT OUT_DIR

reads WIDTH x HEIGHT RGB8 bytes and writes OUT_DIR/{solarize,color,contrast,posterize}{M}.rgb.
`tests/randaugment_blip.rs` compares tagfix's operations with these files.
"""
import os
import sys

import numpy as np

MAX_LEVEL = 10


def solarize(img, thresh):
    table = np.array([el if el < thresh else 255 - el for el in range(256)])
    return table.clip(0, 255).astype(np.uint8)[img]


def color(img, factor):
    m = np.float32([[0.886, -0.114, -0.114],
                    [-0.587, 0.413, -0.587],
                    [-0.299, -0.299, 0.701]]) * factor + np.float32([[0.114], [0.587], [0.299]])
    return np.matmul(img, m).clip(0, 255).astype(np.uint8)


def contrast(img, factor):
    mean = np.sum(np.mean(img, axis=(0, 1)) * np.array([0.114, 0.587, 0.299]))
    table = np.array([(el - mean) * factor + mean for el in range(256)])
    return table.clip(0, 255).astype(np.uint8)[img]


def posterize(img, bits):
    return np.bitwise_and(img, np.uint8((255 << (8 - bits)) & 0xFF))


def main():
    path, width, height, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    img = np.fromfile(path, dtype=np.uint8).reshape(height, width, 3)
    os.makedirs(out, exist_ok=True)
    for m in range(MAX_LEVEL + 1):
        enhance = (m / MAX_LEVEL) * 1.8 + 0.1
        for name, result in [
            ("solarize", solarize(img, int((m / MAX_LEVEL) * 256))),
            ("color", color(img, enhance)),
            ("contrast", contrast(img, enhance)),
            ("posterize", posterize(img, int((m / MAX_LEVEL) * 4))),
        ]:
            result.tofile(os.path.join(out, f"{name}{m}.rgb"))


if __name__ == "__main__":
    main()
