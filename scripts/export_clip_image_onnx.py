#!/usr/bin/env python3
"""Export a CLIP image tower from open_clip or Hugging Face weights to ONNX for `tagfix teacher` and
`tagfix train --teacher online`.

    python scripts/export_clip_image_onnx.py --arch ViT-B-16 --pretrained openai --out models/clip-vision
    python scripts/export_clip_image_onnx.py --hf openai/clip-vit-base-patch16 --out models/clip-vision

Needs a full PyTorch (`pip install torch open_clip_torch`, or `transformers` for --hf) and the weights
(downloaded from the Hugging Face hub, or a local path). The slim libtorch install of scripts/setup.sh
cannot import torch in Python, so this script does not run there (and was not run in the project's
CI); the test suite uses the random-weight fixture from scripts/gen_clip_tiny_vision.py instead, which
has the same input and output.

RAM and RAM++ distil OpenAI's CLIP ViT-B/16 image features (`--arch ViT-B-16 --pretrained openai`,
512-dimensional, `encode_image` before normalisation).

Writes OUT/model.onnx and OUT/descriptor.toml:
  input  `pixel_values` float32 [batch, 3, S, S] (S = the tower's image size, 224 for ViT-B/16)
  output `image_embeds` float32 [batch, 512], `encode_image` (open_clip) or `get_image_features`
         (transformers), not normalised
The descriptor records the tower's own preprocessing (size, mean, std from the model's config); tagfix
applies CLIP's evaluation transform (shortest side to S, bicubic, centre crop) for teacher files and
the training augmentation's crop and flip, rendered at S, for the online teacher. With onnxruntime
installed the script checks the ONNX output against PyTorch.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clip_tiny_common import image_descriptor  # noqa: E402 (the descriptor template the fixture uses too)

def open_clip_tower(args):
    import open_clip
    import torch

    model, _, preprocess = open_clip.create_model_and_transforms(args.arch, pretrained=args.pretrained)
    model.eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD

    class ImageTower(torch.nn.Module):
        """open_clip `CLIP.encode_image` (not normalised)."""

        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return self.clip.encode_image(pixel_values)

    return ImageTower(model).eval(), int(size), list(mean), list(std), f"{args.arch}, {args.pretrained}"


def hf_tower(args):
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(args.hf).eval()
    proc = CLIPImageProcessor.from_pretrained(args.hf)
    size = model.config.vision_config.image_size

    class ImageTower(torch.nn.Module):
        """transformers `CLIPModel.get_image_features` (not normalised)."""

        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, pixel_values):
            return self.clip.get_image_features(pixel_values=pixel_values)

    return ImageTower(model).eval(), int(size), list(proc.image_mean), list(proc.image_std), f"hf {args.hf}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-B-16", help="open_clip architecture")
    ap.add_argument("--pretrained", default="openai", help="open_clip pretrained tag or checkpoint path")
    ap.add_argument("--hf", help="Hugging Face CLIP model id or directory (instead of open_clip)")
    ap.add_argument("--out", default="models/clip-vision")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()

    import torch

    tower, size, mean, std, source = hf_tower(args) if args.hf else open_clip_tower(args)
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.onnx")
    with torch.no_grad():
        reference = tower(example)
        torch.onnx.export(
            tower,
            (example,),
            path,
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
            opset_version=args.opset,
        )
    with open(os.path.join(args.out, "descriptor.toml"), "w") as f:
        header = f"# CLIP image tower exported by scripts/export_clip_image_onnx.py ({source})."
        f.write(image_descriptor(header, f"CLIP image tower ({source})", size, mean, std))
    try:
        import onnxruntime as ort
    except ImportError:
        print(f"wrote {path}; onnxruntime not installed, ONNX output not checked")
        return
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(["image_embeds"], {"pixel_values": example.numpy()})[0]
    err = float(abs(got - reference.numpy()).max())
    assert err < 1e-3, f"ONNX differs from PyTorch by {err}"
    print(f"wrote {path} and descriptor.toml ({source}, {size}px, 512-d); ONNX matches PyTorch (max error {err:.2e})")


if __name__ == "__main__":
    main()
