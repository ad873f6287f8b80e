//! Multiply-accumulates of one RAM++ training image, derived from the model configuration
//! (`RamPlusConfig::preset`): the Swin stages block by block, `image_proj`, the description
//! reweighting, `wordvec_proj`, the tagging head's cross-attention layers for the 4585 label queries
//! and for the alignment branch's caption queries, and `fc`. Norms, softmax, GELU and the losses are
//! left out (well under 1 %). A training step counts 3 × the forward (the backward computes the
//! gradients of activations and of weights) and 2 FLOPs per MAC, as model FLOPs utilisation (MFU) is
//! usually defined; recomputation is not counted. docs/PERFORMANCE.md explains the model.
//!
//!   cargo run --release --example flop_model                     # the table for every preset
//!   cargo run --release --example flop_model -- swin_l_224 26 300 989
//!     # PRESET MICRO_BATCH IMAGES_PER_S PEAK_TFLOPS -> one line: GMAC/image and MFU

use tagfix::checkpoint::RamPlusConfig;

/// Forward MACs of one image, by part.
struct Macs {
    swin: f64,
    image_proj: f64,
    reweight: f64,
    wordvec_proj: f64,
    head_tagging: f64,
    head_alignment: f64,
}

impl Macs {
    fn head(&self) -> f64 {
        self.reweight + self.wordvec_proj + self.head_tagging + self.head_alignment
    }
    fn total(&self) -> f64 {
        self.swin + self.image_proj + self.head()
    }
}

/// `micro_batch` sets the alignment branch's queries: every image is queried with every caption of
/// its micro-batch, and the captions' `wordvec_proj` is shared by the micro-batch.
fn forward_macs(c: &RamPlusConfig, micro_batch: usize) -> Macs {
    let s = &c.swin;
    let f = |x: usize| x as f64;
    let p = s.patches_per_side();
    let mut swin = f(p * p) * f(s.in_chans * s.patch_size * s.patch_size * s.embed_dim);
    for b in s.blocks() {
        let (n, d) = (f(b.resolution * b.resolution), f(b.dim));
        let w2 = f(b.window * b.window);
        // qkv, proj, the MLP; then q·kᵀ and attention·v inside each window.
        swin += n * d * d * (3.0 + 1.0 + 2.0 * s.mlp_ratio) + 2.0 * n * w2 * d;
        let merges = b.stage + 1 < s.depths.len() && b.block + 1 == s.depths[b.stage];
        if merges {
            // PatchMerging: 4d → 2d on a quarter of the tokens.
            swin += n / 4.0 * 4.0 * d * 2.0 * d;
        }
    }
    // The pooled token is prepended to the last stage's tokens.
    let tokens = f(s.num_tokens() + 1);
    let (joint, h) = (f(c.joint_dim), f(c.tagging_head.hidden_size));
    let inter = f(c.tagging_head.intermediate_size);
    let rows = f(c.num_class * c.des_per_class);
    let layers = f(c.tagging_head.num_hidden_layers);
    // One cross-attention layer for q queries: query and output dense, the FFN, scores and context;
    // key and value of the image tokens; then `fc` on the last layer's output.
    let head = |q: f64| {
        layers * (q * h * (2.0 * h + 2.0 * inter) + 2.0 * q * tokens * h + 2.0 * tokens * joint * h)
            + q * h
    };
    let captions = f(micro_batch);
    Macs {
        swin,
        image_proj: tokens * f(s.vision_width()) * joint,
        // cls · Eᵀ over every description, then the weighted sum per class.
        reweight: 2.0 * rows * joint,
        // The label queries, and the micro-batch's captions shared by its images (one per image).
        wordvec_proj: f(c.num_class) * joint * h + joint * h,
        head_tagging: head(f(c.num_class)),
        head_alignment: head(captions),
    }
}

fn table() {
    println!(
        "| model | micro-batch | Swin | image_proj | reweight + wordvec_proj | head, 4585 label queries | \
         head, caption queries | total forward | training step (6 FLOP/MAC) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for c in RamPlusConfig::presets() {
        for micro in [26, 52] {
            let m = forward_macs(&c, micro);
            let g = |x: f64| format!("{:.2}", x / 1e9);
            println!(
                "| {} | {micro} | {} | {} | {} | {} | {} | {} GMAC | {:.1} GFLOP |",
                c.name,
                g(m.swin),
                g(m.image_proj),
                g(m.reweight + m.wordvec_proj),
                g(m.head_tagging),
                g(m.head_alignment),
                g(m.total()),
                6.0 * m.total() / 1e9
            );
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        table();
        return;
    }
    let usage = "usage: flop_model [PRESET MICRO_BATCH IMAGES_PER_S PEAK_TFLOPS]";
    let [preset, micro, ips, peak] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    // `tiny` (with RAM++'s 4585 × 51 label table, as the CPU dry runs use it) for scripts/gpu-check.sh.
    let config = match preset.as_str() {
        "tiny" => Ok(RamPlusConfig::tiny(4585, 51)),
        name => RamPlusConfig::preset(name),
    }
    .unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let (Ok(micro), Ok(ips), Ok(peak)) = (micro.parse(), ips.parse::<f64>(), peak.parse::<f64>())
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let m = forward_macs(&config, micro);
    let achieved = ips * 6.0 * m.total() / 1e12;
    println!(
        "{preset}: {:.1} GMAC forward per image (Swin {:.1}, head {:.1}); {ips:.1} images/s = \
         {achieved:.1} TFLOP/s = MFU {:.1} % of {peak} TFLOP/s",
        m.total() / 1e9,
        m.swin / 1e9,
        m.head() / 1e9,
        100.0 * achieved / peak
    );
}
