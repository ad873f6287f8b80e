#!/usr/bin/env python3
"""Export a CLIP text tower from open_clip weights to ONNX for `tagfix embed --model clip`.

    python scripts/export_clip_text_onnx.py --arch ViT-B-16 --pretrained openai --out models/clip

Needs a full PyTorch (`pip install torch open_clip_torch`) and the weights (open_clip downloads them from
the Hugging Face hub, or pass --pretrained /path/to/open_clip_pytorch_model.bin). The slim libtorch install
of scripts/setup.sh cannot import torch in Python, so this script does not run there; the test suite uses
the random-weight fixture from scripts/gen_clip_tiny.py instead, which has the same inputs and outputs.

RAM and RAM++ build their label embeddings with OpenAI's CLIP ViT-B/16 text tower (`--arch ViT-B-16
--pretrained openai`, 512-dimensional).

Writes OUT/model.onnx and OUT/descriptor.toml:
  input  `input_ids`   int64 [batch, sequence], sequence dynamic (<= 77)
  output `text_embeds` float32 [batch, 512], `encode_text` before normalisation
The exported forward slices the positional embedding and the causal mask to the input length, so tagfix
can cut each batch at its longest text (tokens after the end-of-text token never influence it: the mask
is causal and pooling takes the end-of-text position, the argmax of the ids). The script checks the ONNX
output against PyTorch at the full 77 tokens and cut to the longest text when onnxruntime is installed.
"""

import argparse
import os

DESCRIPTOR = """# CLIP text tower exported by scripts/export_clip_text_onnx.py ({arch}, {pretrained}).
name = "CLIP {arch} text tower ({pretrained})"
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
    ap.add_argument("--arch", default="ViT-B-16")
    ap.add_argument("--pretrained", default="openai")
    ap.add_argument("--out", default="models/clip")
    ap.add_argument("--bpe", default="../clip-bpe/bpe_simple_vocab_16e6.txt.gz", help="tokenizer path relative to --out")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()

    import open_clip  # noqa: needs full torch
    import torch

    model, _, _ = open_clip.create_model_and_transforms(args.arch, pretrained=args.pretrained)
    model.eval()
    tokenizer = open_clip.get_tokenizer(args.arch)

    class TextTower(torch.nn.Module):
        """open_clip `CLIP.encode_text` with position embedding and mask cut to the input length."""

        def __init__(self, clip):
            super().__init__()
            self.clip = clip

        def forward(self, input_ids):
            c = self.clip
            n = input_ids.shape[1]
            x = c.token_embedding(input_ids)
            x = x + c.positional_embedding[:n]
            x = c.transformer(x, attn_mask=c.attn_mask[:n, :n])
            x = c.ln_final(x)
            x = x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)]
            return x @ c.text_projection

    tower = TextTower(model).eval()
    example = tokenizer(["a photo of a dog.", "a photo of a cat on a mat."])
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "model.onnx")
    with torch.no_grad():
        reference = model.encode_text(example)
        assert torch.allclose(tower(example), reference, atol=1e-5), "TextTower differs from encode_text"
        torch.onnx.export(
            tower,
            (example,),
            path,
            input_names=["input_ids"],
            output_names=["text_embeds"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "text_embeds": {0: "batch"}},
            opset_version=args.opset,
        )
    with open(os.path.join(args.out, "descriptor.toml"), "w") as f:
        f.write(DESCRIPTOR.format(arch=args.arch, pretrained=args.pretrained, bpe=args.bpe))
    try:
        import onnxruntime as ort
    except ImportError:
        print(f"wrote {path}; onnxruntime not installed, ONNX output not checked")
        return
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    longest = int((example != 0).sum(1).max())
    for ids in (example, example[:, :longest]):
        got = sess.run(["text_embeds"], {"input_ids": ids.numpy()})[0]
        err = float(abs(got - reference.numpy()).max())
        assert err < 1e-4, f"ONNX differs from PyTorch by {err} at sequence length {ids.shape[1]}"
    print(f"wrote {path} and descriptor.toml; ONNX matches PyTorch at 77 tokens and cut to {longest}")


if __name__ == "__main__":
    main()
