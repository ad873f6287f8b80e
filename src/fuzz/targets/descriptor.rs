//! The `descriptor` target: `descriptor.toml` of a model directory (`embed --model DIR`,
//! `teacher --image-model DIR`), read as a text-encoder and as an image-encoder descriptor.

use super::seeds;
use crate::embed::ModelDescriptor;
use crate::teacher::ImageDescriptor;
use std::path::Path;

pub(super) fn target() -> super::Target {
    super::Target {
        name: "descriptor",
        file: crate::embed::descriptor::DESCRIPTOR_FILE,
        run: run_descriptor,
        dict: DESCRIPTOR_DICT,
        generate: None,
        seeds: descriptor_seeds,
        shared_seeds: &[],
    }
}

#[rustfmt::skip]
const DESCRIPTOR_DICT: &[&[u8]] = &[
    b"kind = \"clip-image\"\n", b"max_length = ", b"dynamic_sequence", b"[tokenizer]\n",
    b"[inputs]\n", b"[input]\n", b"[output]\n", b"pooling = ", b"\"mean\"", b"\"pooled\"", b"\"cls\"",
    b"\"huggingface\"", b"\"clip-bpe\"", b"size = ", b"\"squash\"", b"\"shortest-side\"",
    b"mean = [", b"std = [", b"normalize", b"65536", b"65537", b"4096", b"4097", b"../", b"/dev/zero",
    b" = ", b"\n", b"[", b"]", b"\"", b"'", b"inf", b"nan", b"true", b"false", b"-1", b"0",
    b"18446744073709551615", b"{", b"}", b"#",
];

fn run_descriptor(path: &Path, _: &[u8]) {
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(d) = ModelDescriptor::read_dir(dir) {
        let _ = (
            d.onnx_path(),
            d.tokenizer_path(),
            d.display_name(),
            d.pooling_description(),
        );
    }
    if let Ok(d) = ImageDescriptor::read_dir(dir) {
        let _ = (
            d.onnx_path(),
            d.display_name(),
            d.preprocessing_description(),
        );
    }
}

/// The descriptors setup writes (MiniLM, the CLIP text fixture, the CLIP image fixture).
fn descriptor_seeds() -> Vec<(String, Vec<u8>)> {
    seeds(&[
        ("minilm.toml", b"name = \"all-MiniLM-L6-v2 int8\"\nonnx = \"model.onnx\"\nmax_length = 128\ndynamic_sequence = true\n\n[tokenizer]\nkind = \"huggingface\"\nfile = \"tokenizer.json\"\n\n[inputs]\ninput_ids = \"input_ids\"\nattention_mask = \"attention_mask\"\ntoken_type_ids = \"token_type_ids\"\n\n[output]\nname = \"last_hidden_state\"\npooling = \"mean\"\nnormalize = true\n"),
        ("clip_text.toml", b"name = \"clip-tiny\"\nonnx = \"model.onnx\"\nmax_length = 77\ndynamic_sequence = true\n\n[tokenizer]\nkind = \"clip-bpe\"\nfile = \"../clip-bpe/bpe_simple_vocab_16e6.txt.gz\"\n\n[inputs]\ninput_ids = \"input_ids\"\n\n[output]\nname = \"text_embeds\"\npooling = \"pooled\"\nnormalize = true\n"),
        ("clip_image.toml", b"kind = \"clip-image\"\nname = \"clip-tiny-vision\"\nonnx = \"model.onnx\"\n\n[input]\nname = \"pixel_values\"\nsize = 224\nresize = \"shortest-side\"\nmean = [0.48145466, 0.4578275, 0.40821073]\nstd = [0.26862954, 0.26130258, 0.27577711]\n\n[output]\nname = \"image_embeds\"\nnormalize = false\n"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each seed is read by the reader it is for, so mutations start from a valid descriptor.
    #[test]
    fn seeds_are_valid_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(crate::embed::descriptor::DESCRIPTOR_FILE);
        for (name, bytes) in descriptor_seeds() {
            std::fs::write(&file, bytes).unwrap();
            let ok = if name == "clip_image.toml" {
                ImageDescriptor::read_dir(dir.path()).map(|_| ())
            } else {
                ModelDescriptor::read_dir(dir.path()).map(|_| ())
            };
            ok.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
