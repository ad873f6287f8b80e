//! Writes checkpoints for the checkpoint benchmarks:
//! - `gen_checkpoint safetensors|pth N OUT`: N one-element f32 tensors (`block{i}.w`, each its own
//!   top-level module), for scripts/bench-checkpoint-scale.sh;
//! - `gen_checkpoint preset NAME OUT.pth`: `{"model": state_dict}` with every key, shape and dtype of
//!   the RAM++ preset NAME (`swin_b_384` is 0.9 GB), filled with a cheap deterministic pattern, for
//!   scripts/bench-pth-rss.sh.

use tagfix::checkpoint::model_config::{EntryDtype, RamPlusConfig};
use tagfix::checkpoint::pth::{self, PthContent};
use tagfix::tensors::{safetensors_io, DType, Tensor, TensorSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [format, n, out] = args.as_slice() else {
        return Err(
            "usage: gen_checkpoint safetensors|pth N OUT | gen_checkpoint preset NAME OUT.pth"
                .into(),
        );
    };
    let out = std::path::Path::new(out);
    if format == "preset" {
        let tensors = preset_state_dict(&RamPlusConfig::preset(n)?)?;
        pth::write(out, PthContent::Wrapped("model", &tensors))?;
        return Ok(());
    }
    let n: usize = n.parse()?;
    let tensors = (0..n)
        .map(|i| {
            Ok((
                format!("block{i}.w"),
                Tensor::from_f32(vec![1], &[i as f32])?,
            ))
        })
        .collect::<Result<Vec<_>, tagfix::Error>>()?;
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

/// Every entry of `cfg`'s state-dict layout, its bytes a pattern that differs between tensors.
fn preset_state_dict(cfg: &RamPlusConfig) -> Result<Vec<(String, Tensor)>, tagfix::Error> {
    cfg.state_dict_layout()
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let dtype = match e.dtype {
                EntryDtype::Float32 => DType::F32,
                EntryDtype::Int64 => DType::I64,
            };
            let bytes = e.shape.iter().product::<usize>() * dtype.size();
            let data = (0..bytes).map(|b| (b % 251 + i) as u8).collect();
            Ok((e.name, Tensor::new(dtype, e.shape, data)?))
        })
        .collect()
}
