//! Writes a checkpoint of N one-element f32 tensors (`block{i}.w`, each its own top-level module)
//! for scripts/bench-checkpoint-scale.sh: `gen_checkpoint safetensors|pth N OUT`.

use tagfix::tensors::pth::{self, PthContent};
use tagfix::tensors::{safetensors_io, Tensor, TensorSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [format, n, out] = args.as_slice() else {
        return Err("usage: gen_checkpoint safetensors|pth N OUT".into());
    };
    let n: usize = n.parse()?;
    let tensors = (0..n)
        .map(|i| {
            Ok((
                format!("block{i}.w"),
                Tensor::from_f32(vec![1], &[i as f32])?,
            ))
        })
        .collect::<Result<Vec<_>, tagfix::Error>>()?;
    let out = std::path::Path::new(out);
    match format.as_str() {
        "safetensors" => safetensors_io::write(
            out,
            &TensorSet {
                tensors,
                metadata: Default::default(),
            },
        )?,
        "pth" => pth::write(out, PthContent::Dict(&tensors))?,
        other => return Err(format!("unknown format {other}").into()),
    }
    Ok(())
}
