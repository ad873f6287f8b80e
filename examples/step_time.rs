//! Step time of one RAM++ forward + backward, for the side-by-side benchmark with the Python
//! implementation (`scripts/bench-step.sh`, which also runs `scripts/bench_step.py` on the same files).
//!
//! ```text
//! cargo run --release --features train --example step_time -- \
//!     --config tiny --classes 10 --des 3 --batch 2 --steps 50 --threads 2 --device cpu --export DIR
//! ```
//! `--accumulate N` times N forward + backward passes per step (gradient accumulation over N
//! micro-batches); with `--precision bf16`, `--cast-cache on` (default) keeps autocast's weight casts
//! for the whole step as the trainer does, `off` casts the weights again in every micro-batch.
//! Builds the configuration with the official init (seed 0), draws one batch (image, tags, CLIP
//! feature, caption embedding) and times `--steps` forward + backward passes after `--warmup` passes.
//! Mode is eval (no dropout / DropPath), as the Python functional implementation computes. With
//! `--export DIR` it writes the weights (`weights.safetensors`, official names), the batch
//! (`inputs.safetensors`) and `config.json` in the reference fixture's layout so the Python side
//! times the same computation. Prints one JSON line.
use std::time::Instant;
use tagfix::train::autocast::{with_autocast, CastCacheScope};
use tagfix::train::model::{ParamInit, RamPlus, RamPlusBatch, RamPlusConfig, Trace};
use tch::{nn, Device, Kind, Tensor};

struct Args {
    config: String,
    classes: usize,
    des: usize,
    batch: i64,
    steps: usize,
    warmup: usize,
    threads: i32,
    device: Device,
    bf16: bool,
    accumulate: usize,
    cast_cache: bool,
    export: Option<std::path::PathBuf>,
}

fn parse() -> Args {
    let mut a = Args {
        config: "tiny".into(),
        classes: 10,
        des: 3,
        batch: 2,
        steps: 50,
        warmup: 5,
        threads: 0,
        device: Device::Cpu,
        bf16: false,
        accumulate: 1,
        cast_cache: true,
        export: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
                .clone()
        };
        match flag.as_str() {
            "--config" => a.config = value(),
            "--classes" => a.classes = value().parse().expect("--classes"),
            "--des" => a.des = value().parse().expect("--des"),
            "--batch" => a.batch = value().parse().expect("--batch"),
            "--steps" => a.steps = value().parse().expect("--steps"),
            "--warmup" => a.warmup = value().parse().expect("--warmup"),
            "--threads" => a.threads = value().parse().expect("--threads"),
            "--device" => {
                a.device = match value().as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    other => panic!("--device cpu|cuda, not {other}"),
                }
            }
            "--precision" => a.bf16 = value() == "bf16",
            "--accumulate" => a.accumulate = value().parse().expect("--accumulate"),
            "--cast-cache" => a.cast_cache = value() == "on",
            "--export" => a.export = Some(value().into()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// `config.json` in the layout of `../shared/ram/reference/tiny/config.json` (the keys the
/// functional implementation reads).
fn reference_config(cfg: &RamPlusConfig) -> serde_json::Value {
    serde_json::json!({
        "variant": cfg.name,
        "num_class": cfg.num_class,
        "des_per_class": cfg.des_per_class,
        "image_size": cfg.swin.img_size,
        "swin": {
            "img_size": cfg.swin.img_size,
            "patch_size": cfg.swin.patch_size,
            "embed_dim": cfg.swin.embed_dim,
            "depths": cfg.swin.depths,
            "num_heads": cfg.swin.num_heads,
            "window_size": cfg.swin.window_size,
        },
        "q2l": {"config_json": {
            "hidden_size": cfg.tagging_head.hidden_size,
            "num_hidden_layers": cfg.tagging_head.num_hidden_layers,
            "num_attention_heads": cfg.tagging_head.num_attention_heads,
            "intermediate_size": cfg.tagging_head.intermediate_size,
            "layer_norm_eps": cfg.tagging_head.layer_norm_eps,
        }},
    })
}

fn main() {
    let a = parse();
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let cfg = if a.config == "tiny" {
        RamPlusConfig::tiny(a.classes, a.des)
    } else {
        RamPlusConfig::preset(&a.config).expect("preset")
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(a.device);
    let model = RamPlus::new(&vs, &cfg, ParamInit::Official).expect("model");
    let s = cfg.swin.img_size as i64;
    let opts = (Kind::Float, a.device);
    let image = Tensor::randn([a.batch, 3, s, s], opts);
    let image_tag = Tensor::rand([a.batch, cfg.num_class as i64], opts)
        .lt(0.05)
        .to_kind(Kind::Float);
    let clip_feature = Tensor::randn([a.batch, 512], opts) * 0.5;
    let text = Tensor::randn([a.batch, 512], opts);
    let batch_text_embed = &text / text.norm_scalaropt_dim(2, [-1], true);
    if let Some(dir) = &a.export {
        std::fs::create_dir_all(dir).expect("export dir");
        vs.save(dir.join("weights.safetensors"))
            .expect("save weights");
        Tensor::write_safetensors(
            &[
                ("image", &image),
                ("image_tag", &image_tag),
                ("clip_feature", &clip_feature),
                ("batch_text_embed", &batch_text_embed),
            ],
            dir.join("inputs.safetensors"),
        )
        .expect("save inputs");
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&reference_config(&cfg)).unwrap(),
        )
        .expect("config.json");
    }
    let b = RamPlusBatch {
        image: &image,
        image_tag: &image_tag,
        clip_feature: &clip_feature,
        batch_text_embed: &batch_text_embed,
    };
    let params = vs.trainable_variables();
    let mut times = Vec::new();
    let mut losses = (0.0, 0.0, 0.0);
    for i in 0..a.warmup + a.steps {
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let t0 = Instant::now();
        let forward = || {
            model
                .forward_t(&b, false, &mut Trace::off())
                .expect("forward")
        };
        let casts = (a.bf16 && a.cast_cache).then(CastCacheScope::open);
        let micro = || {
            let out = if a.bf16 {
                with_autocast(a.device, Kind::BFloat16, forward).expect("autocast")
            } else {
                forward()
            };
            let total = &out.loss_tag + &out.loss_dis + &out.loss_alignment;
            total.backward();
            (out, total)
        };
        for _ in 1..a.accumulate {
            let _ = micro();
        }
        let (out, total) = micro();
        drop(casts);
        let _ = total.double_value(&[]); // synchronises the device
        if let Device::Cuda(_) = a.device {
            tch::Cuda::synchronize(0);
        }
        let dt = t0.elapsed().as_secs_f64();
        if i >= a.warmup {
            times.push(dt);
        }
        losses = (
            out.loss_tag.double_value(&[]),
            out.loss_dis.double_value(&[]),
            out.loss_alignment.double_value(&[]),
        );
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "tagfix (Rust, libtorch via tch)",
            "config": cfg.name,
            "num_class": cfg.num_class,
            "des_per_class": cfg.des_per_class,
            "batch": a.batch,
            "accumulate": a.accumulate,
            "cast_cache": a.bf16 && a.cast_cache,
            "device": format!("{:?}", a.device),
            "threads": tch::get_num_threads(),
            "precision": if a.bf16 { "bf16" } else { "f32" },
            "steps": a.steps,
            "median_s": median,
            "min_s": times[0],
            "images_per_s": (a.batch as usize * a.accumulate) as f64 / median,
            "loss_tag": losses.0,
            "loss_dis": losses.1,
            "loss_alignment": losses.2,
        })
    );
}
